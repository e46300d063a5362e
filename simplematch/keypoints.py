"""Torch-free rules for user keypoints (CLI `--kps` and the Python API): JSON in, (N, 2) array out.

One border rule for every entry point (:func:`check_inside`): a keypoint is a 0-based pixel of its image,
``0 <= x <= w - 1`` and ``0 <= y <= h - 1``.
"""

from __future__ import annotations

import json
import math
import warnings
from typing import Any

import numpy as np

from simplematch.errors import SimpleMatchError

FIX = 'pass a JSON list of [x, y] pixel pairs, e.g. [[10, 20], [30.5, 40]] or {"keypoints": [[10, 20]]}'
MAX_KEYPOINTS = 100_000  # far above any real query; stops absurd inputs before allocating


def parse_keypoints_json(text_or_obj: Any, image_size: tuple[int, int] | None = None) -> np.ndarray:
    """JSON text (str/bytes) or an already decoded object -> (N, 2) float64 ``x, y`` pixels.

    Accepts ``[[x, y], ...]`` or ``{"keypoints": [[x, y], ...]}``. Rejects with :class:`SimpleMatchError`:
    invalid JSON, other shapes, booleans/strings/nulls, non-finite values, an empty list, and, when
    ``image_size=(w, h)`` is given, points outside ``0 <= x <= w - 1``, ``0 <= y <= h - 1``.
    """
    obj = text_or_obj
    if isinstance(obj, (bytes, bytearray)):
        try:
            obj = obj.decode("utf-8")
        except UnicodeDecodeError as err:
            raise SimpleMatchError("keypoints are not UTF-8 text", FIX) from err
    if isinstance(obj, str):
        try:
            obj = json.loads(obj)
        except (ValueError, RecursionError) as err:
            raise SimpleMatchError(f"keypoints are not valid JSON ({type(err).__name__})", FIX) from err
    if isinstance(obj, dict):
        if set(obj) != {"keypoints"}:
            raise SimpleMatchError("a keypoints object must have exactly one field, 'keypoints'", FIX)
        obj = obj["keypoints"]
    if isinstance(obj, np.ndarray):
        obj = obj.tolist()
    if not isinstance(obj, (list, tuple)):
        raise SimpleMatchError("keypoints must be a list of [x, y] pairs", FIX)
    if not obj:
        raise SimpleMatchError("no keypoints given", FIX)
    if len(obj) > MAX_KEYPOINTS:
        raise SimpleMatchError(f"{len(obj)} keypoints given (limit {MAX_KEYPOINTS})", "pass fewer keypoints")
    out = np.empty((len(obj), 2), dtype=np.float64)
    for i, pt in enumerate(obj):
        if not isinstance(pt, (list, tuple)) or len(pt) != 2:
            raise SimpleMatchError(f"keypoint {i} is not an [x, y] pair", FIX)
        for j, v in enumerate(pt):
            # bool is an int subclass in Python: reject it explicitly, true/false are not coordinates
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise SimpleMatchError(f"keypoint {i} has a non-numeric coordinate", FIX)
            try:
                fv = float(v)
            except OverflowError as err:  # Python ints beyond float range
                raise SimpleMatchError(f"keypoint {i} has a coordinate out of range", FIX) from err
            if not math.isfinite(fv):
                raise SimpleMatchError(f"keypoint {i} has a non-finite coordinate", FIX)
            out[i, j] = fv
    if image_size is not None:
        check_inside(out, image_size)
    return out


def check_inside(kps: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Refuse (N, 2) ``x, y`` pixels outside the ``image_size=(w, h)`` image: 0 <= x <= w-1, 0 <= y <= h-1."""
    w, h = image_size
    kps = np.asarray(kps, dtype=np.float64)
    inside = (kps[:, 0] >= 0) & (kps[:, 0] <= w - 1) & (kps[:, 1] >= 0) & (kps[:, 1] <= h - 1)
    if not inside.all():
        i = int(np.flatnonzero(~inside)[0])
        raise SimpleMatchError(
            f"keypoint {i} ({kps[i, 0]:g}, {kps[i, 1]:g}) lies outside the {w}x{h} image",
            "use 0-based pixel coordinates inside the image",
        )
    return kps


def warn_if_normalised(kps: np.ndarray, image_size: tuple[int, int]) -> bool:
    """One warning (not an error: a point in a corner is legal) when every keypoint lies in [0, 1] on an
    image larger than 2x2 -- they look like normalised coordinates, not the pixels the matcher expects.
    Returns whether it warned."""
    w, h = image_size
    kps = np.asarray(kps, dtype=np.float64)
    if len(kps) == 0 or max(w, h) <= 2 or not ((kps >= 0) & (kps <= 1)).all():
        return False
    warnings.warn(
        f"all {len(kps)} keypoints lie in [0, 1] on a {w}x{h} image: they look normalised, but keypoints "
        "are pixels (multiply by the image width and height)",
        UserWarning,
        stacklevel=3,
    )
    return True
