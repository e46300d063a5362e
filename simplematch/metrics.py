"""The evaluation stack shared by the PyTorch and the runtime evaluation (torch-free module).

Both evaluators only *predict*: each produces one :class:`PairPrediction` per pair (keypoints, ground
truth, prediction, threshold and the confidence cues, all in the evaluation frame) and hands the list to
:func:`evaluation_tables`, which counts, aggregates, measures the confidence (AUROC, precision-coverage,
rejection) and builds the result JSON; :func:`prediction_record` is the ``--predictions`` JSONL line.

Counting reduces every pair to integers -- how many of its valid keypoints are correct at each alpha
(``d < alpha * threshold``, strict, as the paper's formula) and how many are valid -- and hand those to
:func:`aggregate_pck`. The same integers give the same percentages, so "the runtime reproduces the PyTorch
PCK" is a like-for-like comparison.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# The alpha at which "correct" is defined for the confidence measures (the benchmarks' headline alpha).
CONFIDENCE_ALPHA = 0.1
# Coverage levels of the precision-coverage curve in the JSON (fraction of valid points kept).
COVERAGES = tuple(round(1.0 - 0.05 * i, 2) for i in range(20))


# The PCK thresholds reported when none are given (eval, the demo, baselines, the export's PCK check).
DEFAULT_ALPHAS: tuple[float, ...] = (0.05, 0.1, 0.15)


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


# ------------------------------------------------------------------------------------------------------------
# Per-pair predictions: what both evaluators produce
# ------------------------------------------------------------------------------------------------------------
@dataclass
class PairPrediction:
    """One evaluated pair, everything in the evaluation frame (``resized`` S x S or ``original`` pixels).

    ``src_kps``, ``gt``, ``pred``: (N, 2) x, y; ``valid``: (N,) bool; ``threshold``: the PCK normaliser;
    ``raw``: the raw cues (peak_cos, peak_mass, second_cos, cycle_px), ``cues``: each confidence in [0, 1]
    (:func:`simplematch.runtime.matching.confidence_cues`), all (N,).
    """

    index: int
    pair_id: str
    category: str
    src_image: str | None
    trg_image: str | None
    src_kps: np.ndarray
    gt: np.ndarray
    pred: np.ndarray
    valid: np.ndarray
    threshold: float
    raw: dict[str, np.ndarray] = field(default_factory=dict)
    cues: dict[str, np.ndarray] = field(default_factory=dict)
    # The scoring rule this pair is judged by: ``d <= alpha * threshold`` under --released-compat (the
    # released code's torch.le), else strict ``<``. Carried here so every table and plot counts alike.
    inclusive: bool = False


def image_name(source: Any) -> str | None:
    """An image source as JSON: its path, or None for in-memory / generated images."""
    return str(source) if isinstance(source, (str, Path)) else None


def correct_mask(p: PairPrediction, alphas: Sequence[float]) -> np.ndarray:
    """(N, A) bool: valid and ``d < alpha * threshold`` (``<=`` if ``p.inclusive``): :func:`pck_correct`
    per point."""
    dist = np.linalg.norm(np.asarray(p.pred, np.float64) - np.asarray(p.gt, np.float64), axis=-1)
    thr = float(p.threshold) * np.asarray(alphas, dtype=np.float64)
    ok = (dist[:, None] <= thr[None, :]) if p.inclusive else (dist[:, None] < thr[None, :])
    return ok & np.asarray(p.valid, bool)[:, None]


def _floats(a: np.ndarray) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in np.asarray(a, np.float64).reshape(-1)]


def prediction_record(
    p: PairPrediction, alphas: Sequence[float], *, confidence: str, min_confidence: float | None = None
) -> dict[str, Any]:
    """The ``--predictions`` JSONL line of one pair (same fields for PyTorch and the runtime)."""
    ok = correct_mask(p, alphas)
    conf = np.asarray(p.cues[confidence], np.float64)
    rejected = conf < min_confidence if min_confidence is not None else np.zeros(len(conf), bool)
    pts = lambda a: [_floats(row) for row in np.asarray(a, np.float64).reshape(-1, 2)]  # noqa: E731
    pred = [None if r else xy for xy, r in zip(pts(p.pred), rejected, strict=True)]
    return {
        "id": p.pair_id,
        "index": p.index,
        "category": p.category,
        "src_image": p.src_image,
        "trg_image": p.trg_image,
        "src_kps": pts(p.src_kps),
        "gt": pts(p.gt),
        "pred": pred,
        "pred_unrejected": pts(p.pred),
        "valid": [bool(v) for v in p.valid],
        "threshold": float(p.threshold) if np.isfinite(p.threshold) else None,
        "confidence_kind": confidence,
        "confidence": _floats(conf),
        "rejected": [bool(r) for r in rejected],
        "raw_cues": {k: _floats(v) for k, v in p.raw.items()},
        "cues": {k: _floats(v) for k, v in p.cues.items()},
        "correct": {alpha_key(a): [bool(v) for v in ok[:, i]] for i, a in enumerate(alphas)},
    }


# ------------------------------------------------------------------------------------------------------------
# Confidence measures
# ------------------------------------------------------------------------------------------------------------
def auroc(scores: np.ndarray | Sequence[float], labels: np.ndarray | Sequence[bool]) -> float | None:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (ties count one half).

    The Mann-Whitney form: (sum of the positives' ranks - n1 (n1 + 1) / 2) / (n1 n0), with average ranks
    for ties. ``None`` when one class is empty. Hand-written in numpy rather than scikit-learn (not a
    dependency) or scipy.stats.rankdata (scipy.stats is slow to import and its array-API probe fails when
    torch is blocked, which the torch-free runtime must tolerate).
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=bool).reshape(-1)
    n1 = int(y.sum())
    n0 = len(y) - n1
    if n1 == 0 or n0 == 0:
        return None
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]  # 1-based average rank of each value
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def precision_coverage(
    conf: np.ndarray, correct: np.ndarray, coverages: Sequence[float] = COVERAGES
) -> list[dict[str, float]]:
    """Keep the most confident fraction ``c`` of the points: the confidence cut and the precision there.

    conf, correct: (P,) over valid points. Each row is ``{"coverage", "min_confidence", "precision"}`` with
    precision = % correct among the kept points (the points with ``conf >= min_confidence``; ties at the cut
    are all kept, so the realised coverage is reported, not the asked one).
    """
    conf = np.asarray(conf, np.float64)
    correct = np.asarray(correct, bool)
    if len(conf) == 0:
        return []
    order = np.sort(conf)[::-1]
    rows = []
    for c in coverages:
        k = max(1, int(round(c * len(conf))))
        cut = float(order[k - 1])
        kept = conf >= cut
        rows.append(
            {
                "coverage": float(kept.mean()),
                "min_confidence": cut,
                "precision": float(correct[kept].mean() * 100.0),
            }
        )
    return rows


def confidence_tables(
    preds: Sequence[PairPrediction],
    *,
    confidence: str,
    min_confidence: float | None,
    alphas: Sequence[float],
) -> dict[str, Any]:
    """AUROC of every cue for "correct at CONFIDENCE_ALPHA", the default cue's precision-coverage curve and,
    with ``min_confidence``, precision (pooled PCK over kept points) and the fraction kept at each alpha."""
    valid = [np.asarray(p.valid, bool) for p in preds]
    ok = (
        np.concatenate(
            [correct_mask(p, [CONFIDENCE_ALPHA])[:, 0][v] for p, v in zip(preds, valid, strict=True)]
        )
        if preds
        else np.zeros(0, bool)
    )
    names = list(preds[0].cues) if preds else []
    cue = {
        n: np.concatenate([np.asarray(p.cues[n], np.float64)[v] for p, v in zip(preds, valid, strict=True)])
        for n in names
    }
    out: dict[str, Any] = {
        "alpha": CONFIDENCE_ALPHA,
        "default": confidence,
        "auroc": {n: auroc(cue[n], ok) for n in names},
        "precision_coverage": precision_coverage(cue[confidence], ok) if confidence in cue else [],
    }
    if min_confidence is not None:
        ok_all = (
            np.concatenate([correct_mask(p, alphas)[v] for p, v in zip(preds, valid, strict=True)])
            if preds
            else np.zeros((0, len(alphas)), bool)
        )
        kept = cue[confidence] >= min_confidence if confidence in cue else np.zeros(0, bool)
        n_kept = int(kept.sum())
        out["rejection"] = {
            "min_confidence": float(min_confidence),
            "kept": n_kept,
            "kept_fraction": float(kept.mean()) if len(kept) else None,
            "precision": {
                alpha_key(a): (float(ok_all[kept, i].mean() * 100.0) if n_kept else None)
                for i, a in enumerate(alphas)
            },
        }
    return out


def evaluation_tables(
    preds: Sequence[PairPrediction],
    alphas: Sequence[float],
    *,
    confidence: str,
    min_confidence: float | None = None,
) -> dict[str, Any]:
    """Per-pair predictions -> the PCK tables (:func:`aggregate_pck`) plus ``"confidence"``."""
    alphas = list(alphas)
    counts = np.array([correct_mask(p, alphas).sum(axis=0) for p in preds], dtype=np.int64)
    valid = np.array([int(np.asarray(p.valid, bool).sum()) for p in preds], dtype=np.int64)
    agg = aggregate_pck(counts.reshape(len(preds), len(alphas)), valid, [p.category for p in preds], alphas)
    agg["confidence"] = confidence_tables(
        preds, confidence=confidence, min_confidence=min_confidence, alphas=alphas
    )
    return agg


def evaluation_json(
    preds: Sequence[PairPrediction],
    alphas: Sequence[float],
    *,
    dataset: str,
    split: str,
    threshold: str,
    frame: str,
    model: dict[str, Any],
    config: dict[str, Any],
    confidence: str,
    min_confidence: float | None = None,
    sample: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The evaluation JSON (exact top-level keys of the CLI contract), the same for both evaluators."""
    tables = evaluation_tables(preds, alphas, confidence=confidence, min_confidence=min_confidence)
    out = {
        "dataset": dataset,
        "split": split,
        "pairs": tables["pairs"],
        "points": tables["points"],
        "threshold": threshold,
        "frame": frame,
        "pck": tables["pck"],
        "pck_per_point": tables["pck_per_point"],
        "per_category": tables["per_category"],
        "confidence": tables["confidence"],
        "model": model,
        "config": config,
    }
    if sample is not None:
        out["sample"] = sample
    return out
