"""PCK counting and aggregation shared by the PyTorch and the runtime evaluation (torch-free module).

Both evaluations reduce every pair to integers -- how many of its valid keypoints are correct at each alpha
(``d < alpha * threshold``, strict, as the paper's formula) and how many are valid -- and hand those to
:func:`aggregate_pck`. The same integers give the same percentages, so "the runtime reproduces the PyTorch
PCK" is a like-for-like comparison.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def alpha_key(alpha: float) -> str:
    """The JSON key of an alpha: ``0.1 -> "0.1"`` (``%g``, as the torch :func:`simplematch.matching.pck`)."""
    return f"{alpha:g}"


def pck_correct(
    pred: np.ndarray,
    gt: np.ndarray,
    valid: np.ndarray,
    threshold: np.ndarray | float,
    alphas: Sequence[float],
    inclusive: bool = False,
) -> np.ndarray:
    """Counts of correct keypoints: ``d < alpha * threshold`` (strict), valid keypoints only.

    ``inclusive``: ``d <= alpha * threshold``, the released code's ``torch.le`` (``--released-compat``).

    pred, gt: (B, N, 2) or (N, 2); valid: (B, N) / (N,) bool; threshold: (B,) / scalar
    -> (B, len(alphas)) / (len(alphas),) int64. Distances in float64 like the torch twin.
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    valid = np.asarray(valid, dtype=bool)
    single = pred.ndim == 2
    if single:
        pred, gt, valid = pred[None], gt[None], valid[None]
    dist = np.linalg.norm(pred - gt, axis=-1)  # (B, N)
    thr = np.asarray(threshold, dtype=np.float64).reshape(-1, 1, 1) * np.asarray(alphas, dtype=np.float64)
    # NaN distances (missing keypoints) compare False, but ``valid`` is what decides: invalid never counts.
    ok = ((dist[..., None] <= thr) if inclusive else (dist[..., None] < thr)) & valid[..., None]
    counts = ok.sum(axis=1).astype(np.int64)
    return counts[0] if single else counts


def _percent(correct: np.ndarray, valid: np.ndarray) -> list[float | None]:
    """Per-image mean in percent for each alpha column; ``None`` (JSON null) when no pair has a valid kp."""
    keep = valid > 0
    if not keep.any():
        return [None] * correct.shape[1]
    per_pair = correct[keep] / valid[keep, None]
    return [float(v) for v in per_pair.mean(axis=0) * 100.0]


def aggregate_pck(
    per_pair_counts: np.ndarray | Sequence[Sequence[int]],
    per_pair_valid: np.ndarray | Sequence[int],
    categories: Sequence[str],
    alphas: Sequence[float],
) -> dict[str, Any]:
    """Per-pair integers -> the PCK tables of the evaluation JSON.

    per_pair_counts: (P, A) correct keypoints per pair and alpha; per_pair_valid: (P,) valid keypoints per
    pair; categories: (P,) category names. Returns::

        {"pairs": P, "points": total valid keypoints,
         "pck": {alpha: per-image mean %},        # mean over pairs of correct / valid (the paper's number)
         "pck_per_point": {alpha: pooled %},      # sum(correct) / sum(valid)
         "per_category": {cat: {"pairs": n, "pck": {alpha: per-image mean %}}}}

    Pairs with no valid keypoint are counted in ``pairs`` but skipped by every mean; a table with nothing
    to average holds ``None`` (JSON null) rather than NaN, which is not valid JSON.
    """
    alphas = list(alphas)
    valid = np.asarray(per_pair_valid, dtype=np.int64).reshape(-1)
    counts = np.asarray(per_pair_counts, dtype=np.int64).reshape(len(valid), len(alphas))
    cats = [str(c) for c in categories]
    if len(cats) != len(valid):
        raise ValueError(f"{len(cats)} categories for {len(valid)} pairs")
    if (counts < 0).any() or (counts > valid[:, None]).any():
        raise ValueError("correct counts must lie in [0, valid] for every pair")
    keys = [alpha_key(a) for a in alphas]
    total = int(valid.sum())
    pooled = [float(v) for v in counts.sum(axis=0) / total * 100.0] if total else [None] * len(alphas)
    per_category: dict[str, Any] = {}
    cat_arr = np.asarray(cats, dtype=object)
    for cat in sorted(set(cats)):
        sel = cat_arr == cat
        per_category[cat] = {
            "pairs": int(sel.sum()),
            "pck": dict(zip(keys, _percent(counts[sel], valid[sel]), strict=True)),
        }
    return {
        "pairs": len(valid),
        "points": total,
        "pck": dict(zip(keys, _percent(counts, valid), strict=True)),
        "pck_per_point": dict(zip(keys, pooled, strict=True)),
        "per_category": per_category,
    }
