"""Torch-free pair records and PCK thresholds shared by every dataset reader, the trainer and the evaluator.

A :class:`PairRecord` holds one source/target pair in ORIGINAL image pixels (x, y, 0-based): only the
keypoints that are annotated in *both* images, so ``src_kps[i]`` corresponds to ``trg_kps[i]``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from simplematch.config import FRAMES, THRESHOLD_KINDS, THRESHOLDS
from simplematch.errors import SimpleMatchError
from simplematch.image import load_image

# A file path, an in-memory (H, W, 3) uint8 array, or a zero-argument callable producing one (synthetic
# pairs are generated lazily so thousands of records do not hold thousands of images in memory).
ImageSource = Union[str, Path, np.ndarray, Callable[[], np.ndarray]]  # noqa: UP007 - runtime alias, py3.10

# ``released``: the released code's PF-WILLOW threshold. Its pipeline resizes to S x S, pads the keypoints
# with (-1, -1) up to 40 (PadKeyPoints) and only then takes max(max - min) over all 40 (WILLOWThreshold), so
# the padding stretches the extent down to -1 on both axes (about 1.8x the clean keypoint extent). It exists
# in the resized frame only.
RELEASED_PAD = -1.0


@dataclass
class PairRecord:
    """One annotated pair: keypoints (N, 2) float64 x, y in original pixels; boxes [x1, y1, x2, y2]."""

    src_image: ImageSource
    trg_image: ImageSource
    src_kps: np.ndarray
    trg_kps: np.ndarray
    category: str
    pair_id: str
    src_bbox: np.ndarray | None = None
    trg_bbox: np.ndarray | None = None
    src_size: tuple[int, int] | None = None  # (w, h) when the annotation states it; else read from the file
    trg_size: tuple[int, int] | None = None
    dataset: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.src_kps = np.asarray(self.src_kps, dtype=np.float64).reshape(-1, 2)
        self.trg_kps = np.asarray(self.trg_kps, dtype=np.float64).reshape(-1, 2)
        if len(self.src_kps) != len(self.trg_kps):
            raise SimpleMatchError(
                f"pair {self.pair_id}: {len(self.src_kps)} source vs {len(self.trg_kps)} target keypoints",
                "keep only keypoints annotated in both images",
            )
        for name in ("src_bbox", "trg_bbox"):
            box = getattr(self, name)
            if box is not None:
                setattr(self, name, np.asarray(box, dtype=np.float64).reshape(4))

    @property
    def n_kps(self) -> int:
        return len(self.src_kps)

    def image_size(self, side: str) -> tuple[int, int]:
        """(w, h) of the source (``side="src"``) or target image; reads only the file header when needed."""
        known = self.src_size if side == "src" else self.trg_size
        if known is not None:
            return int(known[0]), int(known[1])
        return image_size(self.src_image if side == "src" else self.trg_image)

    def load(self, side: str) -> np.ndarray:
        """(H, W, 3) uint8 RGB of the source or target image."""
        return load_pair_image(self.src_image if side == "src" else self.trg_image)


def load_pair_image(source: ImageSource) -> np.ndarray:
    """Any :data:`ImageSource` -> (H, W, 3) uint8 RGB (files via :func:`simplematch.image.load_image`)."""
    if isinstance(source, (str, Path)):
        return load_image(source, exif_orientation=False)  # annotations are in the stored frame
    arr = source() if callable(source) else source
    arr = np.asarray(arr)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise SimpleMatchError(
            f"in-memory image has shape {arr.shape} dtype {arr.dtype}", "pass an (H, W, 3) uint8 RGB array"
        )
    return arr


def image_size(source: ImageSource) -> tuple[int, int]:
    """(w, h) of an image source without decoding file pixels."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise SimpleMatchError(f"image not found: {path}", "check the dataset root (--data-root)")
        try:
            with Image.open(path) as img:
                return int(img.size[0]), int(img.size[1])
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise SimpleMatchError(
                f"cannot read image {path} ({err})", "re-download the dataset images"
            ) from err
    arr = load_pair_image(source)
    return int(arr.shape[1]), int(arr.shape[0])


# ------------------------------------------------------------------------------------------------------------
# PCK thresholds
# ------------------------------------------------------------------------------------------------------------
def _get(obj: PairRecord | Mapping[str, Any], key: str) -> Any:
    return getattr(obj, key) if isinstance(obj, PairRecord) else obj.get(key)


def pck_threshold(
    record_or_arrays: PairRecord | Mapping[str, Any],
    kind: str,
    frame: str = "original",
    img_size: int | None = None,
    *,
    valid: np.ndarray | None = None,
) -> float:
    """PCK normaliser ``max(w, h)`` of the target bbox / target image / valid target keypoints.

    ``kind="released"`` is the ``kps`` extent computed as the released code does (see ``RELEASED_PAD``).

    ``record_or_arrays`` is a :class:`PairRecord` or a mapping with ``trg_kps`` (N, 2), ``trg_bbox``
    ([x1, y1, x2, y2] or None) and ``trg_size`` ((w, h)) in ORIGINAL pixels. ``valid`` masks padded keypoints:
    the ``kps`` threshold uses the valid keypoints only (the released code also counted the zero padding,
    which inflates the extent to the image origin). ``frame="resized"`` scales x and y separately into the
    ``img_size`` x ``img_size`` model frame first (so the image threshold there is simply ``img_size``).
    """
    if kind not in THRESHOLD_KINDS:
        raise SimpleMatchError(
            f"unknown PCK threshold kind '{kind}'", f"use one of {', '.join(THRESHOLD_KINDS)}"
        )
    if frame not in FRAMES:
        raise SimpleMatchError(f"unknown frame '{frame}'", f"use one of {', '.join(FRAMES)}")
    check_threshold_frame(kind, frame)
    if frame == "resized" and (img_size is None or img_size <= 0):
        raise SimpleMatchError(
            "resized-frame PCK threshold needs img_size", "pass img_size=<model input side>"
        )
    if kind == "img" and frame == "resized":
        return float(img_size)  # type: ignore[arg-type]

    if isinstance(record_or_arrays, PairRecord):
        w, h = record_or_arrays.image_size("trg")
    else:
        size = _get(record_or_arrays, "trg_size")
        if size is None:
            raise SimpleMatchError("PCK threshold needs the target image size", "pass trg_size=(w, h)")
        w, h = float(np.asarray(size).reshape(-1)[0]), float(np.asarray(size).reshape(-1)[1])
    sx, sy = (img_size / w, img_size / h) if frame == "resized" else (1.0, 1.0)  # type: ignore[operator]

    if kind == "img":
        return float(max(w, h))
    if kind == "bbox":
        box = _get(record_or_arrays, "trg_bbox")
        if box is None:
            raise SimpleMatchError(
                "bbox PCK threshold asked for a pair without a target bounding box",
                "use the img or kps threshold for this dataset",
            )
        x1, y1, x2, y2 = np.asarray(box, dtype=np.float64).reshape(4)
        return float(max((x2 - x1) * sx, (y2 - y1) * sy))
    kps = np.asarray(_get(record_or_arrays, "trg_kps"), dtype=np.float64).reshape(-1, 2)
    if valid is not None:
        kps = kps[np.asarray(valid, dtype=bool).reshape(-1)]
    kps = kps[np.isfinite(kps).all(axis=1)]
    if len(kps) == 0:
        raise SimpleMatchError(
            "kps PCK threshold for a pair without valid keypoints", "drop pairs with no keypoints"
        )
    kps = kps * np.array([sx, sy])
    if kind == "released":
        kps = np.concatenate([kps, [[RELEASED_PAD, RELEASED_PAD]]])  # the padding the released code counts
    ext = kps.max(axis=0) - kps.min(axis=0)
    return float(max(ext[0], ext[1]))


def released_threshold(dataset: str, kind: str | None, released_compat: bool) -> str | None:
    """``--released-compat`` scores PF-WILLOW with the released threshold; it refuses any other choice."""
    if not released_compat or dataset != "pfwillow":
        return kind
    if kind not in (None, "released"):
        raise SimpleMatchError(
            f"--released-compat scores PF-WILLOW with the released threshold, not --threshold {kind}",
            "drop --threshold, or drop --released-compat",
        )
    return "released"


def threshold_kind(dataset: str, threshold: str | None, frame: str, released_compat: bool) -> str:
    """The PCK threshold kind both evaluators score with (``threshold`` None: the dataset's convention)."""
    return resolve_threshold(
        dataset, released_threshold(dataset, threshold, released_compat), frame, THRESHOLDS
    )


def resolve_threshold(dataset: str, kind: str | None, frame: str, conventions: Mapping[str, str]) -> str:
    """The PCK threshold kind for ``dataset`` (``None``: its convention), refused where it means nothing."""
    kind = kind or conventions.get(dataset)
    if kind is None:
        raise SimpleMatchError(f"no PCK threshold convention for dataset '{dataset}'", "pass --threshold")
    if kind not in THRESHOLD_KINDS:
        raise SimpleMatchError(
            f"unknown PCK threshold kind '{kind}'", f"use one of {', '.join(THRESHOLD_KINDS)}"
        )
    if kind == "released" and dataset != "pfwillow":
        raise SimpleMatchError(
            f"--threshold released is the released code's PF-WILLOW threshold, not one for {dataset}",
            "drop --threshold (each benchmark's own convention is the default)",
        )
    check_threshold_frame(kind, frame)
    return kind


def check_threshold_frame(kind: str, frame: str) -> None:
    """Refuse combinations whose number would mean nothing (the released threshold is a resized-frame one)."""
    if kind == "released" and frame != "resized":
        raise SimpleMatchError(
            "the released PF-WILLOW threshold is defined in the resized model frame only",
            "use --frame resized with --threshold released (or --threshold kps for original pixels)",
        )


# ------------------------------------------------------------------------------------------------------------
# Strict parsing helpers for the readers: every problem becomes one SimpleMatchError naming the file.
# ------------------------------------------------------------------------------------------------------------
def read_json_file(path: Path, fix: str) -> Any:
    if not path.is_file():
        raise SimpleMatchError(f"missing annotation file {path}", fix)
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise SimpleMatchError(
            f"annotation file {path} is not valid JSON ({type(err).__name__})", fix
        ) from err


def read_text_file(path: Path, fix: str) -> str:
    if not path.is_file():
        raise SimpleMatchError(f"missing annotation file {path}", fix)
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise SimpleMatchError(f"annotation file {path} is not UTF-8 text", fix) from err


def csv_rows(text: str, path: Path, fix: str) -> list[list[str]]:
    """The rows of a CSV file's text; what the csv module cannot parse (a bare carriage return inside a
    field, a field over its size limit) is one line naming the file."""
    try:
        return list(csv.reader(io.StringIO(text)))
    except csv.Error as err:
        raise SimpleMatchError(f"{path} is not a valid CSV ({err})", fix) from err


def finite_number(value: Any) -> bool:
    """A JSON number that is finite as a float (bools are ints in Python but not coordinates)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # integers beyond the float range
        return False


def points_array(value: Any, where: str, fix: str, *, allow_nan: bool = False) -> np.ndarray:
    """A JSON-like list of [x, y] -> (N, 2) float64; rejects ragged, non-numeric and non-finite values."""
    if not isinstance(value, (list, tuple)):
        raise SimpleMatchError(f"{where}: keypoints must be a list of [x, y] pairs", fix)
    out = np.zeros((len(value), 2), dtype=np.float64)
    for i, pt in enumerate(value):
        if not isinstance(pt, (list, tuple)) or len(pt) != 2:
            raise SimpleMatchError(f"{where}: keypoint {i} is not an [x, y] pair", fix)
        for j, v in enumerate(pt):
            if allow_nan and v is None:
                out[i, j] = np.nan
                continue
            if not finite_number(v):
                raise SimpleMatchError(
                    f"{where}: keypoint {i} has a non-finite or non-numeric coordinate", fix
                )
            out[i, j] = float(v)
    return out


def bbox_array(value: Any, where: str, fix: str) -> np.ndarray:
    """[x1, y1, x2, y2] -> float64 (4,), finite with x2 >= x1 and y2 >= y1."""
    if not isinstance(value, (list, tuple)) or len(value) != 4 or not all(finite_number(v) for v in value):
        raise SimpleMatchError(f"{where}: bounding box must be 4 finite numbers [x1, y1, x2, y2]", fix)
    box = np.asarray(value, dtype=np.float64)
    if box[2] < box[0] or box[3] < box[1]:
        raise SimpleMatchError(f"{where}: bounding box {value} has x2 < x1 or y2 < y1", fix)
    return box


def image_size_field(value: Any, where: str, fix: str) -> tuple[int, int]:
    """SPair ``[w, h, depth]`` (or ``[w, h]``) -> (w, h) positive ints."""
    if (
        not isinstance(value, (list, tuple))
        or len(value) < 2
        or not all(finite_number(v) and v > 0 and float(v).is_integer() for v in value[:2])
    ):
        raise SimpleMatchError(f"{where}: image size must be [width, height, ...] positive integers", fix)
    return int(value[0]), int(value[1])


def check_points_inside(kps: np.ndarray, w: float, h: float, where: str, fix: str) -> None:
    """Refuse finite keypoints outside [0, w] x [0, h] of their image (a corrupt or mismatched annotation)."""
    pts = np.asarray(kps, dtype=np.float64).reshape(-1, 2)
    pts = pts[np.isfinite(pts).all(axis=1)]
    bad = (pts[:, 0] < 0) | (pts[:, 0] > w) | (pts[:, 1] < 0) | (pts[:, 1] > h)
    if bad.any():
        x, y = pts[np.argmax(bad)]
        raise SimpleMatchError(f"{where}: keypoint ({x:g}, {y:g}) lies outside its {w:g}x{h:g} image", fix)


def check_points_inside_image(
    kps: np.ndarray, image: Path, where: str, fix: str, sizes: dict[Path, tuple[int, int]]
) -> None:
    """:func:`check_points_inside` against ``image``'s own size, its header read once (``sizes`` caches)."""
    if image not in sizes:
        sizes[image] = image_size(image)
    check_points_inside(kps, *sizes[image], where, fix)


def mutual_valid(src: np.ndarray, trg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep rows finite in BOTH arrays (the released code filtered each image alone, misaligning pairs)."""
    keep = np.isfinite(src).all(axis=1) & np.isfinite(trg).all(axis=1)
    return src[keep], trg[keep]


def normalise_split(split: str) -> str:
    """``train``/``trn`` -> ``trn`` (the on-disk name), ``val``/``validation`` -> ``val``, ``test``."""
    aliases = {"train": "trn", "trn": "trn", "val": "val", "validation": "val", "test": "test"}
    key = str(split).lower()
    if key not in aliases:
        raise SimpleMatchError(f"unknown split '{split}'", "use trn (train), val or test")
    return aliases[key]
