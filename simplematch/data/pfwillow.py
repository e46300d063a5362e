"""PF-WILLOW reader (official PF-dataset layout).

``root`` is the folder holding ``PF-dataset/<class>/<image>.png`` + ``<image>.mat`` (``pts_coord``: 2 x 10,
row 0 = x, row 1 = y). When ``test_pairs.csv`` exists in ``root`` (or in ``root/PF-dataset``), its pairs are
used (columns ``imageA, imageB`` then XA(10), YA(10), XB(10), YB(10)); otherwise the standard test set is
built: every ordered pair of distinct images within each class (10 x 90 = 900 pairs over the 10 classes).

Like for like with the released code, HPF and CATs: coordinates are used as stored (no -1 shift, although
they are MATLAB 1-based) and the categories are the 10 sub-class folders (``car(G)``, ``car(M)``, ...).
An incomplete root (an image without its .mat or the reverse, a class with fewer than two images, a listed
image that is missing) or a keypoint outside its image is refused instead of silently dropping pairs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from simplematch.data.matfile import read_mat
from simplematch.data.records import (
    PairRecord,
    check_points_inside_image,
    csv_rows,
    mutual_valid,
    read_text_file,
)
from simplematch.errors import SimpleMatchError

FIX = "re-download PF-WILLOW (PF-dataset.zip) and pass the folder holding PF-dataset/ as --data-root"
IMAGE_EXTS = (".png", ".jpg", ".jpeg")


def read_willow_mat(path: Path) -> np.ndarray:
    """``pts_coord`` of one .mat -> (N, 2) float64 0-based x, y (NaN rows kept for pair-wise filtering)."""
    mat = read_mat(path, FIX)
    if "pts_coord" not in mat:
        raise SimpleMatchError(f"{path}: no 'pts_coord' variable", FIX)
    try:
        pts = np.asarray(mat["pts_coord"], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise SimpleMatchError(f"{path}: 'pts_coord' is not numeric", FIX) from err
    if pts.ndim != 2 or pts.shape[0] != 2 or pts.shape[1] == 0:
        raise SimpleMatchError(f"{path}: 'pts_coord' has shape {pts.shape}, expected 2 x N", FIX)
    if np.isinf(pts).any():
        raise SimpleMatchError(f"{path}: 'pts_coord' holds infinite values", FIX)
    return pts.T  # as stored, as the released code, HPF and CATs use them (no 1-based -> 0-based shift)


def _image_for(mat_path: Path) -> Path:
    for ext in IMAGE_EXTS:
        candidate = mat_path.with_suffix(ext)
        if candidate.is_file():
            return candidate
    return mat_path.with_suffix(".png")  # reported as missing only when the image is actually loaded


def _category(folder: str) -> str:
    return folder  # the sub-class folder ("car(G)"), as the released code and HPF report PF-WILLOW


def _check_inside(kps: np.ndarray, image: Path, where: str, sizes: dict[Path, tuple[int, int]]) -> None:
    """Refuse keypoints outside [0, w] x [0, h] of their image (1-based values may reach w and h)."""
    check_points_inside_image(kps, image, f"{where} ({image})", FIX, sizes)


def read_pfwillow(root: str | Path, split: str = "test", *, released: bool = False) -> list[PairRecord]:
    """PF-WILLOW is a test-only benchmark: every split name returns the test pairs.

    ``released``: the released code's direction (it reads imageB as the source and imageA as the target).
    """
    records = _read_pfwillow(Path(root))
    if released:
        records = [
            dataclasses.replace(
                r, src_image=r.trg_image, trg_image=r.src_image, src_kps=r.trg_kps, trg_kps=r.src_kps
            )
            for r in records
        ]
    return records


def _read_pfwillow(root: Path) -> list[PairRecord]:
    base = root / "PF-dataset"
    for csv_path in (root / "test_pairs.csv", base / "test_pairs.csv"):
        if csv_path.is_file():
            return _read_csv(csv_path, root)
    if not base.is_dir():
        raise SimpleMatchError(f"missing PF-WILLOW folder {base}", FIX)
    records = []
    sizes: dict[Path, tuple[int, int]] = {}
    classes = sorted(p for p in base.iterdir() if p.is_dir())
    for cls_dir in classes:
        mats = sorted(cls_dir.glob("*.mat"))
        images = sorted(p for p in cls_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        for img in images:
            if not img.with_suffix(".mat").is_file():
                raise SimpleMatchError(f"{img} has no annotation {img.with_suffix('.mat').name}", FIX)
        for m in mats:
            if not any(m.with_suffix(ext).is_file() for ext in IMAGE_EXTS):
                raise SimpleMatchError(f"{m} has no image ({m.stem}.png)", FIX)
        if len(mats) < 2:
            raise SimpleMatchError(
                f"class folder {cls_dir} holds {len(mats)} annotated image(s); a class needs at least 2 to "
                "form pairs",
                FIX,
            )
        kps = {m: read_willow_mat(m) for m in mats}
        for m, pts in kps.items():
            _check_inside(pts, _image_for(m), str(m), sizes)
        for a in mats:
            for b in mats:
                if a == b:
                    continue
                if kps[a].shape != kps[b].shape:
                    raise SimpleMatchError(f"{a} and {b} hold different numbers of keypoints", FIX)
                src, trg = mutual_valid(kps[a], kps[b])
                records.append(
                    PairRecord(
                        src_image=_image_for(a),
                        trg_image=_image_for(b),
                        src_kps=src,
                        trg_kps=trg,
                        category=_category(cls_dir.name),
                        pair_id=f"{cls_dir.name}/{a.stem}-{b.stem}",
                        dataset="pfwillow",
                    )
                )
    if not records:
        raise SimpleMatchError(f"no .mat annotations found under {base}", FIX)
    return records


def _read_csv(path: Path, root: Path) -> list[PairRecord]:
    rows = csv_rows(read_text_file(path, FIX), path, FIX)
    if not rows:
        raise SimpleMatchError(f"{path} is empty", FIX)
    records = []
    sizes: dict[Path, tuple[int, int]] = {}  # each image's header is read once
    for line, row in enumerate(rows[1:], start=2):  # row 1 is the header
        if not row:
            continue
        if len(row) < 6 or (len(row) - 2) % 4:
            raise SimpleMatchError(f"{path} line {line}: expected imageA, imageB and 4 x N coordinates", FIX)
        try:
            vals = np.array([float(v) for v in row[2:]], dtype=np.float64)
        except ValueError as err:
            raise SimpleMatchError(f"{path} line {line}: non-numeric coordinate", FIX) from err
        if np.isinf(vals).any():
            raise SimpleMatchError(f"{path} line {line}: infinite coordinate", FIX)
        n = len(vals) // 4
        src = np.stack([vals[:n], vals[n : 2 * n]], axis=1)  # as stored (no -1): see the module docstring
        trg = np.stack([vals[2 * n : 3 * n], vals[3 * n :]], axis=1)
        img_a, img_b = Path(row[0]), Path(row[1])
        _check_inside(src, root / img_a, f"{path} line {line}", sizes)
        _check_inside(trg, root / img_b, f"{path} line {line}", sizes)
        src, trg = mutual_valid(src, trg)
        records.append(
            PairRecord(
                src_image=root / img_a,
                trg_image=root / img_b,
                src_kps=src,
                trg_kps=trg,
                category=_category(img_a.parent.name) if img_a.parent.name else "unknown",
                pair_id=f"{line - 1:06d}-{img_a.stem}-{img_b.stem}",
                dataset="pfwillow",
            )
        )
    if not records:
        raise SimpleMatchError(f"{path} lists no pairs", FIX)
    return records
