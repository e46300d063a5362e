"""PCK of an exported model on annotated pairs with the torch-free runtime (``smatch eval MODEL.onnx``).

Mirrors :func:`simplematch.evaluation.torch_predictor.evaluate_model`: this module only *predicts* (one
:class:`simplematch.metrics.PairPrediction` per pair); :func:`simplematch.metrics.score_predictions` counts,
aggregates and builds the JSON. Same records, same preprocessing, same matching and same thresholds give
the same JSON, plus ``runtime`` and ``provider``.

* ``frame="resized"``: predictions and ground truth in the model's S x S frame, threshold of that frame.
* ``frame="original"``: predictions scaled to target-image pixels, original ground truth and threshold.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from simplematch.confidence import DEFAULT_CONFIDENCE
from simplematch.data.records import FRAMES, PairRecord, pck_threshold, threshold_kind
from simplematch.errors import SimpleMatchError
from simplematch.files import sha256_file
from simplematch.image import to_model_frame
from simplematch.metrics import DEFAULT_ALPHAS, PairPrediction, score_predictions
from simplematch.runtime.matcher import Features, Matcher, check_confidence
from simplematch.validate import window as validate_window


def _image_key(source: Any, pair: int, side: str) -> str:
    """Images given as paths are encoded once per chunk even if several pairs share them."""
    return f"path:{Path(source)}" if isinstance(source, (str, Path)) else f"mem:{pair}:{side}"


def predict_pairs_runtime(
    matcher: Matcher,
    records: Sequence[PairRecord],
    frame: str,
    threshold_kind: str,
    *,
    batch_size: int = 8,
    window: int | None = None,
    progress: Callable[[int], Any] | None = None,
) -> list[PairPrediction]:
    """One :class:`PairPrediction` per record, in the evaluation ``frame``, with every confidence cue."""
    size = matcher.meta.img_size
    out: list[PairPrediction] = []
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
            src_kps = np.where(valid[:, None], rec.src_kps, 0.0)
            # The readers have checked the annotations (their 1-based values may reach w and h).
            res = matcher.match(src, trg, src_kps, window=window, check_keypoints=False)
            if frame == "original":
                # No min_confidence here: rejection is scored by metrics, so target_kps has no NaN.
                pred, gt, kps_frame = res.target_kps, rec.trg_kps, src_kps
            else:
                pred, gt = res.target_kps_model, to_model_frame(rec.trg_kps, trg.hw, size)
                kps_frame = to_model_frame(src_kps, src.hw, size)
            thr = (
                pck_threshold(rec, threshold_kind, frame, img_size=size, valid=valid)
                if valid.any()
                else float("nan")
            )
            out.append(
                PairPrediction.of_record(
                    idx, rec, src_kps=kps_frame, gt=gt, pred=pred, valid=valid, threshold=thr, raw=res.raw,
                    cues=res.cues,
                )
            )  # fmt: skip
        if progress is not None:
            progress(len(chunk))
    return out


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
    confidence: str = DEFAULT_CONFIDENCE,
    min_confidence: float | None = None,
    sample: dict[str, Any] | None = None,
    predictions: list[PairPrediction] | None = None,
    released_compat: bool = False,
) -> dict[str, Any]:
    """The evaluation JSON of :func:`simplematch.metrics.evaluation_json`, plus ``runtime`` and ``provider``.

    ``dataset`` defaults to the one in the model's training config; ``threshold`` (bbox | img | kps) to that
    dataset's convention (:data:`simplematch.config.THRESHOLDS`); ``window`` overrides the fine window.
    ``predictions``, when a list, receives the per-pair predictions (for ``--predictions`` / ``--plots``).
    """
    if frame not in FRAMES:
        raise SimpleMatchError(f"unknown frame '{frame}'", f"use one of {', '.join(FRAMES)}")
    if batch_size < 1:
        raise SimpleMatchError(f"batch size {batch_size} must be >= 1", "pass a positive --batch-size")
    check_confidence(confidence, min_confidence)
    model_path = Path(model_path)
    matcher = matcher or Matcher(
        model_path, device=device, allow_fallback=allow_fallback, batch_size=2 * batch_size
    )
    meta = matcher.meta
    dataset = dataset or str(meta.config.get("dataset", ""))
    validate_window(window, round(meta.img_size / meta.stride))
    kind = threshold_kind(dataset, threshold, frame, released_compat)
    preds = predict_pairs_runtime(
        matcher, records, frame, kind, batch_size=batch_size, window=window, progress=progress
    )
    model_info = {
        "path": str(model_path),
        "sha256": sha256_file(model_path) if model_path.is_file() else None,
    }
    res = score_predictions(
        preds, alphas, config=meta.config, threshold=kind, model=model_info, window=window,
        released_compat=released_compat, predictions=predictions, dataset=dataset, split=split, frame=frame,
        confidence=confidence, min_confidence=min_confidence, sample=sample,
    )  # fmt: skip
    return {**res, "runtime": matcher.runtime, "provider": matcher.provider}
