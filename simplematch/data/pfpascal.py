"""PF-PASCAL reader: the CATs / NC-Net layout and the released-code / HPF layout.

* CATs / NC-Net: ``root`` holds ``{trn,val,test}_pairs.csv`` (NC-Net names the training list
  ``train_pairs.csv``; both names are read) and ``PF-dataset-PASCAL/{JPEGImages,Annotations}``; the CSV image
  paths are relative to ``root``.
* Released code / HPF: ``root/PF-PASCAL/`` (or ``root`` itself) holds ``{trn,val,test}_pairs.csv``,
  ``JPEGImages/`` and ``Annotations/``; only the basenames of the CSV image paths are used.

CSV columns:
``source_image, target_image, class`` (1..20) and, in the val/test lists, ``XA, YA, XB, YB`` with the keypoint
coordinates of each image separated by ``;``. Per-image annotations live in
``PF-dataset-PASCAL/Annotations/<class>/<name>.mat`` (``kps``: N x 2 with NaN rows for absent keypoints,
``bbox``: 1 x 4 ``[x1, y1, x2, y2]``).

Keypoint source (``kps_source``): ``"auto"`` (default, used by :func:`load_records`) takes the CSV keypoints
when the CSV has XA/YA/XB/YB columns (val/test) and the .mat keypoints otherwise (trn); ``"csv"`` or ``"mat"``
force one. The bbox comes from the .mat when the file exists (it is optional with CSV keypoints: PF-PASCAL is
scored with the image threshold). Coordinates are used as stored (as the released code and published numbers).
A keypoint is dropped when it is NaN/missing in EITHER image of the pair (the released code filtered each
image on its own, which misaligns the two lists whenever the NaN rows differ).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from simplematch.data.matfile import read_mat
from simplematch.data.records import (
    PairRecord,
    check_points_inside_image,
    csv_rows,
    mutual_valid,
    normalise_split,
    read_text_file,
)
from simplematch.errors import SimpleMatchError

FIX = "re-download PF-PASCAL; pass the folder holding <split>_pairs.csv and PF-dataset-PASCAL/ as --data-root"
CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip
KPS_SOURCES = ("auto", "csv", "mat")


def _floats(text: str, where: str) -> np.ndarray:
    """``"1.5;2;nan"`` -> float64 array; empty fields and 'nan' become NaN (absent keypoints)."""
    vals = []
    for tok in str(text).split(";"):
        tok = tok.strip()
        if tok == "" or tok.lower() == "nan":
            vals.append(np.nan)
            continue
        try:
            v = float(tok)
        except ValueError as err:
            raise SimpleMatchError(f"{where}: '{tok[:20]}' is not a number", FIX) from err
        if np.isinf(v):
            raise SimpleMatchError(f"{where}: infinite coordinate", FIX)
        vals.append(v)
    return np.asarray(vals, dtype=np.float64)


def read_pascal_mat(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(kps (N, 2) with NaN rows, bbox (4,) or None) from one PF-PASCAL annotation .mat."""
    mat = read_mat(path, FIX)
    if "kps" not in mat:
        raise SimpleMatchError(f"{path}: no 'kps' variable", FIX)
    try:
        kps = np.asarray(mat["kps"], dtype=np.float64)
        box = np.asarray(mat["bbox"], dtype=np.float64).reshape(-1) if "bbox" in mat else None
    except (TypeError, ValueError) as err:
        raise SimpleMatchError(f"{path}: 'kps'/'bbox' are not numeric", FIX) from err
    if kps.size == 0:
        kps = kps.reshape(0, 2)
    if kps.ndim != 2 or kps.shape[1] != 2:
        raise SimpleMatchError(f"{path}: 'kps' has shape {kps.shape}, expected N x 2", FIX)
    if np.isinf(kps).any():
        raise SimpleMatchError(f"{path}: 'kps' holds infinite values", FIX)
    if box is not None:
        if box.shape != (4,) or not np.isfinite(box).all() or box[2] < box[0] or box[3] < box[1]:
            raise SimpleMatchError(f"{path}: 'bbox' must be 4 finite numbers [x1, y1, x2, y2]", FIX)
    return kps, box


def _read_header(text: str, path: Path, kps_source: str) -> tuple[list[list[str]], dict[str, int], bool]:
    """(rows, column index by name, whether the keypoints come from the CSV) of a pair list."""
    if kps_source not in KPS_SOURCES:
        raise SimpleMatchError(
            f"unknown PF-PASCAL keypoint source '{kps_source}'", f"use {', '.join(KPS_SOURCES)}"
        )
    rows = csv_rows(text, path, FIX)
    if not rows:
        raise SimpleMatchError(f"{path} is empty", FIX)
    header = [h.strip() for h in rows[0]]
    for col in ("source_image", "target_image", "class"):
        if col not in header:
            raise SimpleMatchError(f"{path}: missing column '{col}'", FIX)
    has_csv_kps = all(c in header for c in ("XA", "YA", "XB", "YB"))
    use_csv = kps_source == "csv" or (kps_source == "auto" and has_csv_kps)
    if use_csv and not has_csv_kps:
        raise SimpleMatchError(f"{path}: no XA/YA/XB/YB keypoint columns", "use kps_source='mat'")
    return rows, {name: header.index(name) for name in header}, use_csv


def _row_names(row: list[str], col: dict[str, int], where: str) -> tuple[str, str, str]:
    """(source image, target image, class name) of one CSV row."""
    if len(row) != len(col):
        raise SimpleMatchError(f"{where}: {len(row)} fields, header has {len(col)}", FIX)
    src_name, trg_name = row[col["source_image"]].strip(), row[col["target_image"]].strip()
    if not src_name or not trg_name or ".." in Path(src_name).parts or ".." in Path(trg_name).parts:
        raise SimpleMatchError(f"{where}: bad image path", FIX)
    try:
        cls_id = int(row[col["class"]])
    except ValueError as err:
        raise SimpleMatchError(f"{where}: class must be an integer 1..20", FIX) from err
    if not 1 <= cls_id <= len(CLASSES):
        raise SimpleMatchError(f"{where}: class {cls_id} outside 1..20", FIX)
    return src_name, trg_name, CLASSES[cls_id - 1]


def _row_keypoints(
    row: list[str], col: dict[str, int], where: str, mats: list[Path], use_csv: bool
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray | None]]:
    """(source kps, target kps, [source bbox, target bbox]) from the CSV columns or the two .mat files."""
    if not use_csv:
        (src, src_box), (trg, trg_box) = read_pascal_mat(mats[0]), read_pascal_mat(mats[1])
        if len(src) != len(trg):
            raise SimpleMatchError(f"{mats[0]} and {mats[1]} hold different numbers of keypoints", FIX)
        return src, trg, [src_box, trg_box]
    xa, ya = _floats(row[col["XA"]], where), _floats(row[col["YA"]], where)
    xb, yb = _floats(row[col["XB"]], where), _floats(row[col["YB"]], where)
    if not len(xa) == len(ya) == len(xb) == len(yb):
        raise SimpleMatchError(f"{where}: XA, YA, XB, YB hold different numbers of values", FIX)
    boxes = [read_pascal_mat(m)[1] if m.is_file() else None for m in mats]  # optional with CSV kps
    return np.stack([xa, ya], axis=1), np.stack([xb, yb], axis=1), boxes


def _check_inside_when_present(kps: np.ndarray, image: Path, where: str, sizes: dict) -> None:
    """Refuse keypoints outside their image when the image is there; the annotation lists ship without
    images (a missing image is reported when it is loaded)."""
    if image.is_file():
        check_points_inside_image(kps, image, f"{where} ({image.name})", FIX, sizes)


def parse_pfpascal_csv(
    text: str,
    path: Path,
    root: Path,
    kps_source: str = "auto",
    *,
    image_dir: Path | None = None,
    ann_dir: Path | None = None,
    released: bool = False,
) -> list[PairRecord]:
    """Decoded CSV text -> records (the .mat files are read only when needed or present).

    ``image_dir``: None = CSV image paths relative to ``root`` (CATs / NC-Net); a folder = basenames inside
    it (released code / HPF). ``ann_dir``: the Annotations folder (default
    ``root/PF-dataset-PASCAL/Annotations``). ``released``: the released code's pairing (see
    :func:`released_pairing`), keypoints from the .mat files. Keypoints outside an image that is present
    are refused (a corrupt or mismatched annotation).
    """
    rows, col, use_csv = _read_header(text, path, "mat" if released else kps_source)
    ann_dir = ann_dir if ann_dir is not None else root / "PF-dataset-PASCAL" / "Annotations"

    def image(name: str) -> Path:
        return root / name if image_dir is None else image_dir / Path(name).name

    records = []
    sizes: dict[Path, tuple[int, int]] = {}  # each image's header is read once
    for line, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        where = f"{path} line {line}"
        src_name, trg_name, cls = _row_names(row, col, where)
        mats = [ann_dir / cls / (Path(n).stem + ".mat") for n in (src_name, trg_name)]
        src, trg, boxes = _row_keypoints(row, col, where, mats, use_csv)
        _check_inside_when_present(src, image(src_name), where, sizes)
        _check_inside_when_present(trg, image(trg_name), where, sizes)
        src, trg = released_pairing(src, trg) if released else mutual_valid(src, trg)
        records.append(
            PairRecord(
                src_image=image(src_name),
                trg_image=image(trg_name),
                src_kps=src,
                trg_kps=trg,
                category=cls,
                pair_id=f"{line - 1:06d}-{Path(src_name).stem}-{Path(trg_name).stem}",
                src_bbox=boxes[0],
                trg_bbox=boxes[1],
                dataset="pfpascal",
                meta={
                    "kps_source": "csv" if use_csv else "mat",
                    "pairing": "released" if released else "mutual",
                },
            )
        )
    return records


def released_pairing(src: np.ndarray, trg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The released code's PF-PASCAL pairing (``--released-compat`` only): NaN rows are dropped from each
    image on its own, then the first ``n_src`` target points are scored, the target padded with (-1, -1)
    when it has fewer. Whenever the NaN rows differ this pairs keypoint i with another one, which is why
    the default (:func:`mutual_valid`) keeps the rows valid in both images instead."""
    s = src[np.isfinite(src).all(axis=1)]
    t = trg[np.isfinite(trg).all(axis=1)][: len(s)]
    pad = np.full((len(s) - len(t), 2), -1.0)
    return s, np.concatenate([t, pad])


def pfpascal_layout(root: str | Path, split: str) -> tuple[Path, Path, Path | None, Path]:
    """(csv, root for relative paths, image_dir or None, ann_dir) of whichever known layout ``root`` holds."""
    root = Path(root)
    split = normalise_split(split)
    names = [f"{split}_pairs.csv"] + (["train_pairs.csv"] if split == "trn" else [])  # NC-Net's name
    for base in (root / "PF-PASCAL", root):  # released code / HPF: basenames in JPEGImages/
        if (base / "JPEGImages").is_dir() and (base / "Annotations").is_dir():
            for name in names:
                if (base / name).is_file():
                    return base / name, base, base / "JPEGImages", base / "Annotations"
    for name in names:  # CATs / NC-Net: paths relative to root, PF-dataset-PASCAL/
        if (root / name).is_file():
            return root / name, root, None, root / "PF-dataset-PASCAL" / "Annotations"
    return root / names[0], root, None, root / "PF-dataset-PASCAL" / "Annotations"  # reported as missing


def read_pfpascal(
    root: str | Path, split: str, *, kps_source: str = "auto", released: bool = False
) -> list[PairRecord]:
    path, base, image_dir, ann_dir = pfpascal_layout(root, split)
    return parse_pfpascal_csv(
        read_text_file(path, FIX), path, base, kps_source, image_dir=image_dir, ann_dir=ann_dir,
        released=released,
    )  # fmt: skip
