"""Convert a PF-WILLOW folder into COCO keypoints + the pair list of PF-WILLOW's own test pairs.

The cross-check that pins the COCO reader: ``smatch eval MODEL --dataset coco --data-root OUT.json
--pairs OUT.pairs.csv --threshold kps`` gives exactly the PCK of ``smatch eval MODEL --dataset pfwillow
--data-root WILLOW`` (same pairs, same keypoints, same threshold).

* one COCO category per PF-WILLOW class folder (``car(G)``, ...), keypoint names ``1`` .. ``10``;
* one image and one annotation per image (annotation id = image id), coordinates as PF-WILLOW stores them
  (the reader uses them as stored); a NaN keypoint becomes ``[0, 0, 0]`` (not labelled);
* ``bbox`` = the box of the labelled keypoints, so ``--threshold bbox`` equals ``kps`` on this conversion;
* ``file_name`` relative to OUT's folder, so the images stay where they are (nothing is copied);
* the pairs file (CSV ``split,source,target``) lists PF-WILLOW's pairs in its order, all in split ``test``.

Usage: ``python scripts/willow_to_coco.py WILLOW_ROOT OUT.json`` (writes OUT.json and OUT.pairs.csv).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from simplematch.data.pfwillow import read_pfwillow, read_willow_mat
from simplematch.data.records import image_size
from simplematch.files import atomic_write_text
from simplematch.validate import output_file


def convert(willow_root: str | Path, out_json: str | Path, *, force: bool = False) -> Path:
    """Write ``out_json`` (COCO keypoints) and ``<out_json stem>.pairs.csv``; returns the pairs file."""
    root, out = Path(willow_root), Path(out_json)
    pairs_path = out.with_name(out.stem + ".pairs.csv")
    for path, flag in ((out, "out_json"), (pairs_path, "pairs file")):
        output_file(path, flag, suffixes=(".json",) if path == out else (".csv",), inputs=[root], force=force)
    records = read_pfwillow(root)
    images: dict[Path, int] = {}
    for rec in records:
        for side in (rec.src_image, rec.trg_image):
            images.setdefault(Path(side), len(images) + 1)
    categories = {name: i + 1 for i, name in enumerate(sorted({r.category for r in records}))}
    coco: dict = {"images": [], "annotations": [], "categories": []}
    n_kps = 0
    for path, iid in images.items():
        kps = read_willow_mat(path.with_suffix(".mat"))
        n_kps = max(n_kps, len(kps))
        w, h = image_size(path)
        rel = os.path.relpath(path, out.resolve().parent)
        coco["images"].append({"id": iid, "file_name": rel, "width": w, "height": h})
        coco["annotations"].append(_annotation(iid, categories[path.parent.name], kps))
    for name, cid in categories.items():
        coco["categories"].append({"id": cid, "name": name, "keypoints": [str(k + 1) for k in range(n_kps)]})
    lines = ["split,source,target"]
    lines += [f"test,{images[Path(r.src_image)]},{images[Path(r.trg_image)]}" for r in records]
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(coco) + "\n")  # floats written with repr: they read back bit-identical
    atomic_write_text(pairs_path, "\n".join(lines) + "\n")
    return pairs_path


def _annotation(iid: int, cid: int, kps: np.ndarray) -> dict:
    valid = np.isfinite(kps).all(axis=1)
    flat: list[float] = []
    for (x, y), ok in zip(kps, valid, strict=True):
        flat += [float(x), float(y), 2] if ok else [0, 0, 0]
    lo, hi = kps[valid].min(axis=0), kps[valid].max(axis=0)
    bbox = [float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1])]
    return {"id": iid, "image_id": iid, "category_id": cid, "keypoints": flat, "bbox": bbox,
            "num_keypoints": int(valid.sum()), "iscrowd": 0, "area": bbox[2] * bbox[3]}  # fmt: skip


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python scripts/willow_to_coco.py WILLOW_ROOT OUT.json")
    print(f"wrote {sys.argv[2]} and {convert(sys.argv[1], sys.argv[2])}")
