"""Two training-free reference matchers, to tell whether a model has learned anything (torch-free).

* ``relative``: each target keypoint is put at the source keypoint's relative position in the image.
* ``sift``: dense SIFT nearest neighbour (OpenCV): a descriptor at each source keypoint, matched against
  descriptors on a regular grid over the target image.

Both are scored with the same PCK code as the models (:func:`evaluate_baseline`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from simplematch.data.records import PairRecord, pck_threshold
from simplematch.metrics import DEFAULT_ALPHAS, PairPrediction, pck_tables

SIFT_SIZE = 16.0  # descriptor support in pixels (images are ~300 px)
GRID_STEP = 4


def predict_relative(rec: PairRecord) -> np.ndarray:
    sw, sh = rec.image_size("src")
    tw, th = rec.image_size("trg")
    return rec.src_kps / [sw, sh] * [tw, th]


def _gray(rec: PairRecord, side: str) -> np.ndarray:
    import cv2  # opencv-python-headless comes with albumentations (train extra)

    return cv2.cvtColor(rec.load(side), cv2.COLOR_RGB2GRAY)


def _sift(gray: np.ndarray, points: np.ndarray) -> np.ndarray:
    import cv2

    kps = [cv2.KeyPoint(float(x), float(y), SIFT_SIZE) for x, y in points]
    kept, desc = cv2.SIFT_create().compute(gray, kps)
    # With an explicit size no keypoint is dropped; if OpenCV ever drops one, the rows would misalign.
    if desc is None or len(kept) != len(kps):
        raise RuntimeError("OpenCV dropped SIFT keypoints")
    return desc.astype(np.float32)


@functools.lru_cache(maxsize=64)
def _dense_sift(key: str, gray_bytes: bytes, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Grid descriptors of one target image, cached: each benchmark image is the target of many pairs."""
    gray = np.frombuffer(gray_bytes, dtype=np.uint8).reshape(shape)
    ys, xs = np.mgrid[0 : shape[0] : GRID_STEP, 0 : shape[1] : GRID_STEP]
    grid = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)
    return grid, _sift(gray, grid)


def predict_sift(rec: PairRecord) -> np.ndarray:
    d_src = _sift(_gray(rec, "src"), rec.src_kps)
    trg = _gray(rec, "trg")
    grid, d_trg = _dense_sift(str(rec.trg_image), trg.tobytes(), trg.shape)
    dist = (d_src**2).sum(1)[:, None] - 2 * d_src @ d_trg.T + (d_trg**2).sum(1)[None, :]
    return grid[dist.argmin(axis=1)]


PREDICTORS = {"relative": predict_relative, "sift": predict_sift}


def evaluate_baseline(
    name: str, records: Sequence[PairRecord], kind: str, alphas: Sequence[float] = DEFAULT_ALPHAS
) -> dict[str, Any]:
    """PCK of a baseline in original image pixels (its natural frame) with the dataset's threshold kind."""
    predict = PREDICTORS[name]
    preds = [
        PairPrediction.of_record(
            i,
            rec,
            src_kps=rec.src_kps,
            gt=rec.trg_kps,
            pred=predict(rec),
            valid=np.isfinite(rec.trg_kps).all(axis=1),
            threshold=pck_threshold(rec, kind, "original"),
        )  # fmt: skip
        for i, rec in enumerate(records)
    ]
    return pck_tables(preds, alphas)
