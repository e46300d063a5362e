"""SPair-71k reader (official layout).

``root`` holds ``Layout/<size>/{trn,val,test}.txt`` (one pair name per line),
``PairAnnotation/{trn,val,test}/<name>.json`` and ``JPEGImages/<category>/<imname>``. The split file and the
pair folder use the same split names; ``train`` is accepted as an alias of ``trn``.
"""

from __future__ import annotations

from pathlib import Path

from simplematch.data.records import (
    PairRecord,
    bbox_array,
    check_points_inside,
    image_size_field,
    mutual_valid,
    normalise_split,
    points_array,
    read_json_file,
    read_text_file,
)
from simplematch.errors import SimpleMatchError

FIX = "re-download SPair-71k; pass the folder holding Layout/, PairAnnotation/ and JPEGImages/ as --data-root"


def parse_spair_pair(data: object, path: Path, root: Path) -> PairRecord:
    """One decoded pair JSON -> :class:`PairRecord` (every problem names ``path``)."""
    where = str(path)
    if not isinstance(data, dict):
        raise SimpleMatchError(f"{where}: a pair annotation must be a JSON object", FIX)
    for key in ("src_imname", "trg_imname", "category", "src_kps", "trg_kps", "src_bndbox", "trg_bndbox"):
        if key not in data:
            raise SimpleMatchError(f"{where}: missing field '{key}'", FIX)
    category = data["category"]
    if not isinstance(category, str) or not category or "/" in category:
        raise SimpleMatchError(f"{where}: 'category' must be a non-empty name", FIX)
    for key in ("src_imname", "trg_imname"):
        if not isinstance(data[key], str) or not data[key] or "/" in data[key]:
            raise SimpleMatchError(f"{where}: '{key}' must be a file name", FIX)
    src = points_array(data["src_kps"], where, FIX)
    trg = points_array(data["trg_kps"], where, FIX)
    if len(src) != len(trg):
        raise SimpleMatchError(f"{where}: src_kps has {len(src)} points, trg_kps {len(trg)}", FIX)
    src, trg = mutual_valid(src, trg)
    sizes = {}
    for side, kps in (("src", src), ("trg", trg)):
        value = data.get(f"{side}_imsize")
        sizes[side] = None if value is None else image_size_field(value, where, FIX)
        if sizes[side] is not None:  # cheap: the annotation states the size, no image is opened
            check_points_inside(kps, *sizes[side], f"{where} ({side}_kps)", FIX)
    return PairRecord(
        src_image=root / "JPEGImages" / category / data["src_imname"],
        trg_image=root / "JPEGImages" / category / data["trg_imname"],
        src_kps=src,
        trg_kps=trg,
        category=category,
        pair_id=str(data.get("filename") or path.stem),
        src_bbox=bbox_array(data["src_bndbox"], where, FIX),
        trg_bbox=bbox_array(data["trg_bndbox"], where, FIX),
        src_size=sizes["src"],
        trg_size=sizes["trg"],
        dataset="spair",
    )


def read_spair(root: str | Path, split: str, *, layout: str = "large") -> list[PairRecord]:
    """All pairs of ``split`` listed in ``Layout/<layout>/<split>.txt``, in file order."""
    root = Path(root)
    split = normalise_split(split)
    listing = root / "Layout" / layout / f"{split}.txt"
    names = [line.strip() for line in read_text_file(listing, FIX).splitlines() if line.strip()]
    records = []
    for name in names:
        if "/" in name or "\\" in name or name in (".", ".."):
            raise SimpleMatchError(f"{listing}: bad pair name '{name}'", FIX)
        path = root / "PairAnnotation" / split / f"{name}.json"
        records.append(parse_spair_pair(read_json_file(path, FIX), path, root))
    return records
