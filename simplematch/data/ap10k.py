"""AP-10K reader in the GeoAware-SC layout (the benchmark the paper evaluates on).

``root`` (the ``ap-10k`` folder) holds ``ImageAnnotation/<family>/<species>/<id>.json`` (COCO-style fields
``bbox`` = [left, top, width, height], ``keypoints`` = 17 x (x, y, v), optional ``width``/``height``),
``JPEGImages/<family>/<species>/<id>.jpg`` and ``PairAnnotation/<split>[_cross_species|_cross_family]/*.json``
whose ``src_json_path`` / ``trg_json_path`` point at the two image annotations (GeoAware-SC writes them as
``.../ap-10k/ImageAnnotation/...`` paths relative to its repository; they are resolved from the
``ImageAnnotation/`` part on, or used as is when absolute and present). A keypoint is kept when it is labelled
(v > 0) in both images; AP-10K marks every labelled keypoint v = 2.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np

from simplematch.data.records import (
    PairRecord,
    check_points_inside,
    finite_number,
    normalise_split,
    read_json_file,
)
from simplematch.errors import SimpleMatchError

FIX = "prepare AP-10K with GeoAware-SC's script and pass the ap-10k folder (ImageAnnotation/, PairAnnotation/) as --data-root"  # noqa: E501
SPLIT_SUFFIX = {"intra": "", "cross-species": "_cross_species", "cross-family": "_cross_family"}
N_KPS = 17


def resolve_annotation_path(value: object, root: Path, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise SimpleMatchError(f"{where}: image annotation path must be a non-empty string", FIX)
    parts = PurePosixPath(value.replace("\\", "/")).parts
    if "ImageAnnotation" in parts:
        tail = parts[len(parts) - 1 - parts[::-1].index("ImageAnnotation") :]
        if ".." in tail:
            raise SimpleMatchError(f"{where}: bad image annotation path '{value[:80]}'", FIX)
        return root.joinpath(*tail)
    path = Path(value)
    if path.is_absolute():
        return path
    raise SimpleMatchError(f"{where}: image annotation path '{value[:80]}' has no ImageAnnotation/ part", FIX)


def parse_ap10k_image(
    data: object, path: Path
) -> tuple[np.ndarray, np.ndarray, tuple[int, int] | None, np.ndarray]:
    """(keypoints (17, 2), visibility (17,), (w, h) or None, bbox [x1, y1, x2, y2]); errors name ``path``."""
    where = str(path)
    if not isinstance(data, dict):
        raise SimpleMatchError(f"{where}: an image annotation must be a JSON object", FIX)
    kps, box = data.get("keypoints"), data.get("bbox")
    ok = finite_number
    if not isinstance(kps, list) or len(kps) != 3 * N_KPS or not all(ok(v) for v in kps):
        raise SimpleMatchError(f"{where}: 'keypoints' must be {N_KPS} x (x, y, v) finite numbers", FIX)
    if not isinstance(box, list) or len(box) != 4 or not all(ok(v) for v in box) or box[2] < 0 or box[3] < 0:
        raise SimpleMatchError(f"{where}: 'bbox' must be [left, top, width, height] finite numbers", FIX)
    arr = np.asarray(kps, dtype=np.float64).reshape(N_KPS, 3)
    size = None
    if "width" in data or "height" in data:
        w, h = data.get("width"), data.get("height")
        if not (ok(w) and ok(h) and w > 0 and h > 0 and float(w).is_integer() and float(h).is_integer()):
            raise SimpleMatchError(f"{where}: 'width'/'height' must be positive integers", FIX)
        size = (int(w), int(h))
        # labelled keypoints outside the stated image size: a corrupt or mismatched annotation
        check_points_inside(arr[arr[:, 2] > 0, :2], *size, where, FIX)
    bbox = np.array([box[0], box[1], box[0] + box[2], box[1] + box[3]], dtype=np.float64)
    return arr[:, :2], arr[:, 2], size, bbox


def parse_ap10k_pair(data: object, path: Path, root: Path) -> PairRecord:
    where = str(path)
    if not isinstance(data, dict):
        raise SimpleMatchError(f"{where}: a pair annotation must be a JSON object", FIX)
    for key in ("src_json_path", "trg_json_path"):
        if key not in data:
            raise SimpleMatchError(f"{where}: missing field '{key}'", FIX)
    sides = {}
    for side in ("src", "trg"):
        ann = resolve_annotation_path(data[f"{side}_json_path"], root, where)
        sides[side] = (ann, *parse_ap10k_image(read_json_file(ann, FIX), ann))
    keep = (sides["src"][2] > 0) & (sides["trg"][2] > 0)
    src_ann = sides["src"][0]
    rel = (
        src_ann.relative_to(root / "ImageAnnotation")
        if src_ann.is_relative_to(root / "ImageAnnotation")
        else None
    )
    category = rel.parts[-2] if rel is not None and len(rel.parts) >= 2 else src_ann.parent.name
    images = {}
    for side in ("src", "trg"):
        ann = sides[side][0]
        parts = list(ann.parts)
        if "ImageAnnotation" in parts:
            parts[len(parts) - 1 - parts[::-1].index("ImageAnnotation")] = "JPEGImages"
        images[side] = Path(*parts).with_suffix(".jpg")
    return PairRecord(
        src_image=images["src"],
        trg_image=images["trg"],
        src_kps=sides["src"][1][keep],
        trg_kps=sides["trg"][1][keep],
        category=category,
        pair_id=path.stem,
        src_bbox=sides["src"][4],
        trg_bbox=sides["trg"][4],
        src_size=sides["src"][3],
        trg_size=sides["trg"][3],
        dataset="ap10k",
    )


def read_ap10k(root: str | Path, split: str, *, ap10k_split: str = "intra") -> list[PairRecord]:
    root = Path(root)
    if ap10k_split not in SPLIT_SUFFIX:
        raise SimpleMatchError(
            f"unknown AP-10K split '{ap10k_split}'", f"use one of {', '.join(SPLIT_SUFFIX)}"
        )
    folder = root / "PairAnnotation" / f"{normalise_split(split)}{SPLIT_SUFFIX[ap10k_split]}"
    if not folder.is_dir():
        raise SimpleMatchError(f"missing AP-10K pair folder {folder}", FIX)
    files = sorted(folder.glob("*.json"))
    if not files:
        raise SimpleMatchError(f"no pair annotations (*.json) in {folder}", FIX)
    return [parse_ap10k_pair(read_json_file(p, FIX), p, root) for p in files]
