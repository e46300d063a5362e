"""The evaluation stack (torch-free): the one PCK rule, its counting and aggregation, and the result JSON.

Everything that turns predictions into numbers lives here and is shared by every caller: the PyTorch
evaluation (:mod:`~simplematch.evaluation.torch_predictor`, also training's validation), the runtime
evaluation (:mod:`~simplematch.evaluation.runtime_predictor`), the training-free baselines, the export's
one-graph PCK check and the plots. Callers only *predict*: each makes one :class:`PairPrediction` per pair
(keypoints, ground truth, prediction, threshold and the confidence cues, all in the evaluation frame).

The rule, written once in :func:`correct_points`: a keypoint is correct at ``alpha`` when it is valid and
``d < alpha * threshold`` (strict, the paper's formula; ``<=`` under ``inclusive``, the released code's
``torch.le``). Counting reduces every pair to integers (correct keypoints per alpha, valid keypoints) and
:func:`aggregate_pck` turns them into percentages: the per-image mean (mean over pairs of correct / valid,
the paper's number), pooled per point, and per category; pairs without a valid keypoint are counted but
skipped by every mean. :func:`evaluation_json` adds the confidence measures (AUROC, precision-coverage,
rejection) and builds the result JSON, :func:`score_predictions` is the evaluators' shared last step and
:func:`prediction_record` the ``--predictions`` JSONL line. The same integers give the same percentages,
so "the runtime reproduces the PyTorch PCK" is a like-for-like comparison.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simplematch import calibration as calib
from simplematch import config

# The alpha at which "correct" is defined for the confidence measures (the benchmarks' headline alpha).
CONFIDENCE_ALPHA = 0.1
# Coverage levels of the precision-coverage curve in the JSON (fraction of valid points kept).
COVERAGES = tuple(round(1.0 - 0.05 * i, 2) for i in range(20))


# The PCK thresholds reported when none are given (eval, the demo, baselines, the export's PCK check);
# kept in the config module so `smatch eval --help` shows them without importing numpy.
DEFAULT_ALPHAS: tuple[float, ...] = config.DEFAULT_ALPHAS


def alpha_key(alpha: float) -> str:
    """The JSON key of an alpha: ``0.1 -> "0.1"`` (``%g``)."""
    return f"{alpha:g}"


def correct_points(
    pred: np.ndarray,
    gt: np.ndarray,
    valid: np.ndarray,
    threshold: np.ndarray | float,
    alphas: Sequence[float],
    inclusive: bool = False,
) -> np.ndarray:
    """THE PCK rule: each keypoint is correct at each alpha when valid and ``d < alpha * threshold``.

    ``inclusive``: ``d <= alpha * threshold``, the released code's ``torch.le`` (``--released-compat``).

    pred, gt: (..., N, 2); valid: (..., N) bool; threshold: (...) one per pair -> (..., N, len(alphas))
    bool. Distances in float64.
    """
    diff = np.asarray(pred, dtype=np.float64) - np.asarray(gt, dtype=np.float64)
    dist = np.linalg.norm(diff, axis=-1)[..., None]  # (..., N, 1)
    radius = np.asarray(threshold, dtype=np.float64)[..., None, None] * np.asarray(alphas, dtype=np.float64)
    # NaN distances (missing keypoints) compare False, but ``valid`` is what decides: invalid never counts.
    ok = (dist <= radius) if inclusive else (dist < radius)
    return ok & np.asarray(valid, dtype=bool)[..., None]


def pck_correct(
    pred: np.ndarray,
    gt: np.ndarray,
    valid: np.ndarray,
    threshold: np.ndarray | float,
    alphas: Sequence[float],
    inclusive: bool = False,
) -> np.ndarray:
    """Counts of correct keypoints (:func:`correct_points` summed over the keypoints).

    pred, gt: (B, N, 2) or (N, 2); valid: (B, N) / (N,); threshold: (B,) / scalar
    -> (B, len(alphas)) / (len(alphas),) int64.
    """
    return correct_points(pred, gt, valid, threshold, alphas, inclusive).sum(axis=-2).astype(np.int64)


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
    (:func:`simplematch.confidence.confidence_cues`), all (N,).
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
    keypoint_names: list[str] | None = None  # (N,) names of the keypoints (COCO records carry them)

    @classmethod
    def of_record(cls, index: int, record: Any, **arrays: Any) -> PairPrediction:
        """The prediction of a :class:`simplematch.data.records.PairRecord`: its id, category and image
        names from the record, ``arrays`` (src_kps, gt, pred, valid, threshold, raw, cues) as given."""
        return cls(
            index=index,
            pair_id=str(record.pair_id),
            category=record.category,
            src_image=image_name(record.src_image),
            trg_image=image_name(record.trg_image),
            keypoint_names=(getattr(record, "meta", None) or {}).get("keypoint_names"),
            **arrays,
        )


def image_name(source: Any) -> str | None:
    """An image source as JSON: its path, or None for in-memory / generated images."""
    return str(source) if isinstance(source, (str, Path)) else None


def correct_mask(p: PairPrediction, alphas: Sequence[float]) -> np.ndarray:
    """(N, A) bool: :func:`correct_points` of one pair, by the pair's own rule (``p.inclusive``)."""
    return correct_points(p.pred, p.gt, p.valid, p.threshold, alphas, p.inclusive)


def pair_counts(preds: Sequence[PairPrediction], alphas: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Per-pair integers: (P, A) correct keypoints per alpha and (P,) valid keypoints."""
    counts = np.array([correct_mask(p, alphas).sum(axis=0) for p in preds], dtype=np.int64)
    valid = np.array([int(np.asarray(p.valid, bool).sum()) for p in preds], dtype=np.int64)
    return counts.reshape(len(preds), len(alphas)), valid


def pck_tables(preds: Sequence[PairPrediction], alphas: Sequence[float]) -> dict[str, Any]:
    """Per-pair predictions -> the PCK tables of :func:`aggregate_pck` (no confidence measures)."""
    counts, valid = pair_counts(preds, list(alphas))
    return aggregate_pck(counts, valid, [p.category for p in preds], list(alphas))


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
    names = {"keypoint_names": list(p.keypoint_names)} if p.keypoint_names is not None else {}
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
        **names,
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


def confidence_points(
    preds: Sequence[PairPrediction], alpha: float = CONFIDENCE_ALPHA
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """The valid points of per-pair predictions, what a calibration is fitted on: their raw cues (each
    (P,)), "correct at alpha" (P,) and the index of each point's pair (P,), which keeps a pair's points
    together in cross-validation."""
    valid = [np.asarray(p.valid, bool) for p in preds]
    ok = [correct_mask(p, [alpha])[:, 0][v] for p, v in zip(preds, valid, strict=True)]
    keys = ("peak_cos", "peak_mass", "second_cos", "cycle_px")
    raw = {k: np.concatenate([np.asarray(p.raw[k], np.float64)[v] for p, v in zip(preds, valid, strict=True)])
           for k in keys}  # fmt: skip
    pair = np.concatenate([np.full(int(v.sum()), i) for i, v in enumerate(valid)])
    return raw, np.concatenate(ok), pair


def confidence_tables(
    preds: Sequence[PairPrediction],
    *,
    confidence: str,
    min_confidence: float | None,
    alphas: Sequence[float],
    calibration: calib.Calibration | None = None,
) -> dict[str, Any]:
    """AUROC, ECE (15 bins) and Brier score of every cue for "correct at CONFIDENCE_ALPHA", the default
    cue's reliability bins and precision-coverage curve and, with ``min_confidence``, precision (pooled PCK
    over kept points) and the fraction kept at each alpha. ``calibration``: the model's, recorded."""
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
        "calibration": (
            calibration.describe()
            if calibration is not None
            else {"calibrated": False, "note": f"the model has no calibration; confidence is {confidence}"}
        ),
        "auroc": {n: auroc(cue[n], ok) for n in names},
        # ECE and Brier of the raw cues too: they show how far a cue's scale is from a probability.
        "ece": {n: calib.expected_calibration_error(cue[n], ok) for n in names},
        "brier": {n: calib.brier_score(cue[n], ok) for n in names},
        "reliability": calib.reliability(cue[confidence], ok) if confidence in cue else [],
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
    calibration: calib.Calibration | None = None,
) -> dict[str, Any]:
    """Per-pair predictions -> the PCK tables (:func:`pck_tables`) plus ``"confidence"``."""
    agg = pck_tables(preds, alphas)
    agg["confidence"] = confidence_tables(
        preds, confidence=confidence, min_confidence=min_confidence, alphas=list(alphas),
        calibration=calibration,
    )  # fmt: skip
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
    """The evaluation JSON (exact top-level keys of the CLI contract), the same for both evaluators.

    ``confidence`` ``calibrated`` means the model's calibration (``config["calibration"]``) and, for a
    model without one, the uncalibrated default (:func:`simplematch.calibration.resolve`)."""
    cal = calib.from_config(config)
    confidence = calib.resolve(confidence, cal)
    tables = evaluation_tables(
        preds, alphas, confidence=confidence, min_confidence=min_confidence, calibration=cal
    )
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
    per_keypoint = keypoint_table(preds, alphas)
    if per_keypoint:
        out["per_keypoint"] = per_keypoint
    return out


def keypoint_table(preds: Sequence[PairPrediction], alphas: Sequence[float]) -> dict[str, Any]:
    """``{category: {keypoint name: {"points": n, "pck": {alpha: pooled %}}}}`` over the pairs whose
    records name their keypoints (COCO); empty when none do. Pooled per point: a keypoint has no per-image
    mean of its own."""
    correct: dict[tuple[str, str], np.ndarray] = {}
    counts: dict[tuple[str, str], int] = {}
    for p in preds:
        if p.keypoint_names is None:
            continue
        ok = correct_mask(p, alphas)
        for i, name in enumerate(p.keypoint_names):
            if not bool(np.asarray(p.valid)[i]):
                continue
            key = (str(p.category), str(name))
            correct[key] = correct.get(key, 0) + ok[i].astype(np.int64)
            counts[key] = counts.get(key, 0) + 1
    table: dict[str, Any] = {}
    for (cat, name), n in counts.items():
        pck = correct[(cat, name)] / n * 100.0
        table.setdefault(cat, {})[name] = {
            "points": n,
            "pck": {alpha_key(a): float(v) for a, v in zip(alphas, pck, strict=True)},
        }
    return table


def score_predictions(
    preds: Sequence[PairPrediction],
    alphas: Sequence[float],
    *,
    config: dict[str, Any],
    window: int | None,
    released_compat: bool,
    predictions: list[PairPrediction] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """The last step of both evaluators, once their predictions are made: judge every pair by the rule of
    ``released_compat``, hand the predictions to ``predictions`` (a list, for ``--predictions`` and
    ``--plots``), record the evaluation overrides in the config and build :func:`evaluation_json`
    (``fields``: its remaining keyword arguments)."""
    judged = [dataclasses.replace(p, inclusive=released_compat) for p in preds]
    if predictions is not None:
        predictions.extend(judged)
    config = dict(config)
    if window is not None:
        config["eval_window"] = window
    if released_compat:
        config["eval_released_compat"] = True
    return evaluation_json(judged, list(alphas), config=config, **fields)
