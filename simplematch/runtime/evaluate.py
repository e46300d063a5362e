"""PCK of an exported model on annotated pairs with the torch-free runtime (``smatch eval MODEL.onnx``).

Mirrors :func:`simplematch.evaluate.evaluate_model`: per pair, count the valid keypoints and the correct
ones at each alpha (``d < alpha * threshold``), then :func:`simplematch.metrics.aggregate_pck`. Same
records, same preprocessing, same matching and same thresholds give the same JSON, plus ``runtime`` and
``provider``.

* ``frame="resized"``: predictions and ground truth in the model's S x S frame, threshold of that frame.
* ``frame="original"``: predictions scaled to target-image pixels, original ground truth and threshold.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from simplematch.config import THRESHOLDS
from simplematch.data.records import FRAMES, PairRecord, pck_threshold, released_threshold, resolve_threshold
from simplematch.errors import SimpleMatchError
from simplematch.image import to_model_frame
from simplematch.io import sha256_file
from simplematch.metrics import aggregate_pck, pck_correct
from simplematch.runtime.matcher import Features, Matcher

DEFAULT_ALPHAS = (0.05, 0.1, 0.15)


def _image_key(source: Any, pair: int, side: str) -> str:
    """Images given as paths are encoded once per chunk even if several pairs share them."""
    return f"path:{Path(source)}" if isinstance(source, (str, Path)) else f"mem:{pair}:{side}"


def pair_counts(
    matcher: Matcher,
    records: Sequence[PairRecord],
    alphas: Sequence[float],
    frame: str,
    threshold_kind: str,
    *,
    batch_size: int = 8,
    window: int | None = None,
    progress: Callable[[int], Any] | None = None,
    inclusive: bool = False,
) -> list[dict[str, Any]]:
    """Per pair ``{"index", "category", "valid", "correct": [per alpha]}`` (the torch evaluation's rows)."""
    size = matcher.meta.img_size
    rows: list[dict[str, Any]] = []
    # Chunks of ``batch_size`` pairs bound the memory: only their feature maps are alive at once.
    for start in range(0, len(records), batch_size):
        chunk = list(enumerate(records[start : start + batch_size], start))
        keys: dict[str, Any] = {}
        for idx, rec in chunk:
            keys.setdefault(_image_key(rec.src_image, idx, "src"), (rec, "src"))
            keys.setdefault(_image_key(rec.trg_image, idx, "trg"), (rec, "trg"))
        prepared = [matcher.prepare(rec.load(side)) for rec, side in keys.values()]
        feats: dict[str, Features] = dict(zip(keys, matcher.encode(prepared), strict=True))
        for idx, rec in chunk:
            src = feats[_image_key(rec.src_image, idx, "src")]
            trg = feats[_image_key(rec.trg_image, idx, "trg")]
            valid = np.isfinite(rec.src_kps).all(axis=1) & np.isfinite(rec.trg_kps).all(axis=1)
            res = matcher.match(src, trg, np.where(valid[:, None], rec.src_kps, 0.0), window=window)
            if frame == "original":
                pred, gt = res.target_kps, rec.trg_kps
            else:
                pred, gt = res.target_kps_model, to_model_frame(rec.trg_kps, trg.hw, size)
            if valid.any():
                thr = pck_threshold(rec, threshold_kind, frame, img_size=size, valid=valid)
                correct = pck_correct(pred, gt, valid, thr, alphas, inclusive=inclusive)
            else:
                correct = np.zeros(len(alphas), dtype=np.int64)
            rows.append(
                {
                    "index": idx,
                    "category": rec.category,
                    "valid": int(valid.sum()),
                    "correct": [int(c) for c in correct],
                }
            )
        if progress is not None:
            progress(len(chunk))
    return rows


def evaluate_runtime(
    model_path: str | Path,
    records: Sequence[PairRecord],
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    frame: str = "resized",
    batch_size: int = 8,
    device: str = "cpu",
    *,
    dataset: str | None = None,
    split: str = "test",
    threshold: str | None = None,
    window: int | None = None,
    allow_fallback: bool = False,
    matcher: Matcher | None = None,
    progress: Callable[[int], Any] | None = None,
    released_compat: bool = False,
) -> dict[str, Any]:
    """The evaluation JSON of :func:`simplematch.evaluate.summarize`, plus ``runtime`` and ``provider``.

    ``dataset`` defaults to the one in the model's training config; ``threshold`` (bbox | img | kps |
    released) to that dataset's convention (:data:`simplematch.config.THRESHOLDS`); ``window`` overrides the
    fine window.
    """
    if frame not in FRAMES:
        raise SimpleMatchError(f"unknown frame '{frame}'", f"use one of {', '.join(FRAMES)}")
    if batch_size < 1:
        raise SimpleMatchError(f"batch size {batch_size} must be >= 1", "pass a positive --batch-size")
    model_path = Path(model_path)
    matcher = matcher or Matcher(
        model_path, device=device, allow_fallback=allow_fallback, batch_size=2 * batch_size
    )
    meta = matcher.meta
    dataset = dataset or str(meta.config.get("dataset", ""))
    kind = resolve_threshold(
        dataset, released_threshold(dataset, threshold, released_compat), frame, THRESHOLDS
    )
    alphas = list(alphas)
    rows = pair_counts(
        matcher, records, alphas, frame, kind, batch_size=batch_size, window=window, progress=progress,
        inclusive=released_compat,
    )  # fmt: skip
    counts = np.array([r["correct"] for r in rows], dtype=np.int64).reshape(len(rows), len(alphas))
    valid = np.array([r["valid"] for r in rows], dtype=np.int64)
    agg = aggregate_pck(counts, valid, [r["category"] for r in rows], alphas)
    config = dict(meta.config)
    if window is not None:
        config["eval_window"] = window
    if released_compat:
        config["eval_released_compat"] = True
    return {
        "dataset": dataset,
        "split": split,
        "pairs": agg["pairs"],
        "points": agg["points"],
        "threshold": kind,
        "frame": frame,
        "pck": agg["pck"],
        "pck_per_point": agg["pck_per_point"],
        "per_category": agg["per_category"],
        "model": {
            "path": str(model_path),
            "sha256": sha256_file(model_path) if model_path.is_file() else None,
        },
        "config": config,
        "runtime": matcher.runtime,
        "provider": matcher.provider,
    }
