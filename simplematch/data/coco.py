"""COCO keypoints reader (torch-free): the file CVAT, Label Studio and Roboflow export for keypoint labels.

A COCO keypoints JSON holds ``images`` (``id``, ``file_name``, ``width``, ``height``), ``annotations``
(``id``, ``image_id``, ``category_id``, ``keypoints`` = [x, y, v] * K, ``bbox`` = [x, y, w, h]) and
``categories`` (``id``, ``name``, ``keypoints`` = the K keypoint names). Each annotation is one object;
an image may hold many (crowds). Images are found by ``file_name`` relative to the JSON's folder, or under
``images`` when given.

Every problem is one :class:`SimpleMatchError` naming the file and the image / annotation / category id,
with the fix: a keypoint count different from the category's names, ``v`` outside {0, 1, 2}, a non-finite
or negative coordinate, a visible point outside its image (``0 <= x <= w``, ``0 <= y <= h``:
labelling tools export continuous coordinates, so a point in the last pixel column can lie anywhere up
to ``w``, as the benchmark readers allow too), duplicate ids, an annotation whose category has no
keypoint names (such categories are otherwise ignored: exports list box-only labels and
supercategories), a missing image file
(``check_images``) or one whose size differs from the JSON's. Annotations with fewer than ``min_visible``
visible (v > 0) keypoints are validated, then skipped and counted.

pycocotools is not used: its ``COCO`` index asserts on the first problem (or accepts it silently) and
names no id, while each check here must become one line naming the id; the format itself is plain JSON.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simplematch.data.records import finite_number, image_size, read_json_file
from simplematch.errors import SimpleMatchError

FIX = "correct the COCO keypoints file (re-export it from the labelling tool)"
VISIBILITY = (0, 1, 2)  # COCO: 0 not labelled, 1 labelled but occluded, 2 labelled and visible


@dataclass(frozen=True)
class CocoCategory:
    id: int
    name: str
    keypoint_names: tuple[str, ...]


@dataclass(frozen=True)
class CocoImage:
    id: int
    file_name: str
    path: Path
    width: int
    height: int


@dataclass(frozen=True, eq=False)  # eq=False: ndarray fields have no truth value to compare by
class CocoObject:
    id: int
    image_id: int
    category_id: int
    keypoints: np.ndarray  # (K, 3) float64 x, y, v (v in {0, 1, 2}); K = len(category keypoint names)
    bbox: tuple[float, float, float, float]  # x, y, w, h (COCO)

    @property
    def visible(self) -> np.ndarray:
        """(K,) bool: the keypoints labelled in this object (v > 0)."""
        return self.keypoints[:, 2] > 0


@dataclass(frozen=True)
class CocoKeypoints:
    source: Path
    categories: dict[int, CocoCategory]
    images: dict[int, CocoImage]
    objects: list[CocoObject]  # in file order
    skipped: int  # annotations skipped (fewer than min_visible visible keypoints)


def read_coco_keypoints(
    path: str | Path,
    images: Path | None = None,
    *,
    min_visible: int = 1,
    check_images: bool = True,
) -> CocoKeypoints:
    """Read and validate a COCO keypoints JSON (see the module docstring for every rule)."""
    source = Path(path)
    if source.is_dir():
        raise SimpleMatchError(
            f"{source} is a folder, not a COCO keypoints JSON", "pass the exported .json file as --data-root"
        )
    if images is not None and not Path(images).is_dir():
        raise SimpleMatchError(f"image folder {images} does not exist", "pass the folder holding the images")
    if min_visible < 0:
        raise SimpleMatchError(f"min_visible={min_visible}", "pass a count >= 0")
    data = read_json_file(source, "pass the COCO keypoints JSON exported by the labelling tool")
    if not isinstance(data, dict):
        raise SimpleMatchError(f"{source}: a COCO file is a JSON object", FIX)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise SimpleMatchError(f"{source}: missing list '{key}' (not a COCO keypoints file)", FIX)
    base = Path(images) if images is not None else source.parent
    every_category = _categories(data["categories"], source)
    categories = {cid: cat for cid, cat in every_category.items() if cat.keypoint_names}
    image_table = _images(data["images"], source, base)
    objects: list[CocoObject] = []
    skipped = 0
    seen: set[int] = set()
    for i, ann in enumerate(data["annotations"]):
        obj = _object(ann, i, source, every_category, image_table, seen)
        if int(obj.visible.sum()) < min_visible:
            skipped += 1
            continue
        objects.append(obj)
    if check_images:
        sizes: dict[Path, tuple[int, int]] = {}
        for image_id in dict.fromkeys(o.image_id for o in objects):  # images the kept objects use, once
            _check_image_file(image_table[image_id], source, sizes)
    return CocoKeypoints(source, categories, image_table, objects, skipped)


# ------------------------------------------------------------------------------------------------------------
def _int_id(value: Any, where: str, key: str = "id") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SimpleMatchError(f"{where}: '{key}' must be an integer, got {value!r}", FIX)
    return int(value)


def _check_unique(ids: list[int], what: str, source: Path) -> None:
    dup = [i for i, n in Counter(ids).items() if n > 1]
    if dup:
        raise SimpleMatchError(f"{source}: duplicate {what} id {dup[0]}", f"give every {what} its own id")


def _categories(raw: list[Any], source: Path) -> dict[int, CocoCategory]:
    out: dict[int, CocoCategory] = {}
    ids = []
    for i, cat in enumerate(raw):
        if not isinstance(cat, dict):
            raise SimpleMatchError(f"{source}: categories[{i}] is not an object", FIX)
        cid = _int_id(cat.get("id"), f"{source}: categories[{i}]")
        ids.append(cid)
        name = cat.get("name")
        if not isinstance(name, str) or not name.strip():
            raise SimpleMatchError(f"{source}: category {cid} has no name", FIX)
        names = cat.get("keypoints")
        if names is None or names == []:
            # Exports list box-only labels and supercategories too (Roboflow's category 0, CVAT's other
            # labels): harmless until an annotation uses one (refused there, naming the annotation).
            out[cid] = CocoCategory(cid, name, ())
            continue
        if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
            raise SimpleMatchError(
                f"{source}: category {cid} ('{name}') keypoint names must be a list of non-empty strings",
                "list the category's keypoint names in its 'keypoints' field (a COCO keypoints export)",
            )
        if len(set(names)) != len(names):
            raise SimpleMatchError(f"{source}: category {cid} ('{name}') repeats a keypoint name", FIX)
        out[cid] = CocoCategory(cid, name, tuple(names))
    _check_unique(ids, "category", source)
    return out


def _images(raw: list[Any], source: Path, base: Path) -> dict[int, CocoImage]:
    out: dict[int, CocoImage] = {}
    ids = []
    for i, img in enumerate(raw):
        if not isinstance(img, dict):
            raise SimpleMatchError(f"{source}: images[{i}] is not an object", FIX)
        iid = _int_id(img.get("id"), f"{source}: images[{i}]")
        ids.append(iid)
        name = img.get("file_name")
        if not isinstance(name, str) or not name.strip():
            raise SimpleMatchError(f"{source}: image {iid} has no file_name", FIX)
        size = []
        for key in ("width", "height"):
            v = img.get(key)
            if not finite_number(v) or v <= 0 or not float(v).is_integer():
                raise SimpleMatchError(
                    f"{source}: image {iid} ({name}) '{key}' must be a positive integer, got {v!r}", FIX
                )
            size.append(int(v))
        out[iid] = CocoImage(iid, name, base / name, size[0], size[1])
    _check_unique(ids, "image", source)
    return out


def _object(
    ann: Any,
    index: int,
    source: Path,
    categories: dict[int, CocoCategory],
    images: dict[int, CocoImage],
    seen: set[int],
) -> CocoObject:
    if not isinstance(ann, dict):
        raise SimpleMatchError(f"{source}: annotations[{index}] is not an object", FIX)
    aid = _int_id(ann.get("id"), f"{source}: annotations[{index}]")
    if aid in seen:
        raise SimpleMatchError(f"{source}: duplicate annotation id {aid}", "give every annotation its own id")
    seen.add(aid)
    where = f"{source}: annotation {aid}"
    iid = _int_id(ann.get("image_id"), where, "image_id")
    cid = _int_id(ann.get("category_id"), where, "category_id")
    if iid not in images:
        raise SimpleMatchError(f"{where}: image_id {iid} is not in 'images'", FIX)
    if cid not in categories:
        raise SimpleMatchError(f"{where}: category_id {cid} is not in 'categories'", FIX)
    names = categories[cid].keypoint_names
    if not names:
        raise SimpleMatchError(
            f"{where} (image {iid}): its category {cid} ('{categories[cid].name}') has no keypoint names",
            "list the category's keypoint names in its 'keypoints' field (a COCO keypoints export)",
        )
    raw = ann.get("keypoints")
    if not isinstance(raw, list) or len(raw) % 3 or len(raw) // 3 != len(names):
        count = f"{len(raw) / 3:g}" if isinstance(raw, list) else "no"
        raise SimpleMatchError(
            f"{where} (image {iid}): {count} keypoints, but category {cid} names {len(names)}",
            "give each annotation [x, y, v] for every keypoint name of its category, in the same order",
        )
    if not all(finite_number(v) for v in raw):
        raise SimpleMatchError(f"{where} (image {iid}): a keypoint value is non-finite or not a number", FIX)
    kps = np.asarray(raw, dtype=np.float64).reshape(-1, 3)
    bad_v = ~np.isin(kps[:, 2], VISIBILITY)
    if bad_v.any():
        k = int(np.argmax(bad_v))
        raise SimpleMatchError(
            f"{where} (image {iid}): keypoint '{names[k]}' has v={kps[k, 2]:g}, not 0, 1 or 2",
            "use v=0 (not labelled), 1 (occluded) or 2 (visible)",
        )
    neg = (kps[:, :2] < 0).any(axis=1)
    if neg.any():
        k = int(np.argmax(neg))
        raise SimpleMatchError(
            f"{where} (image {iid}): keypoint '{names[k]}' has a negative coordinate "
            f"({kps[k, 0]:g}, {kps[k, 1]:g})",
            FIX,
        )
    img = images[iid]
    vis = kps[:, 2] > 0
    out = vis & ((kps[:, 0] > img.width) | (kps[:, 1] > img.height))
    if out.any():
        k = int(np.argmax(out))
        raise SimpleMatchError(
            f"{where} (image {iid}): keypoint '{names[k]}' ({kps[k, 0]:g}, {kps[k, 1]:g}) lies outside "
            f"its {img.width}x{img.height} image",
            "check the image's width/height and the keypoint (coordinates run from 0 to width, 0 to height)",
        )
    kps.setflags(write=False)
    return CocoObject(aid, iid, cid, kps, _bbox(ann.get("bbox"), where, iid))


def _bbox(value: Any, where: str, iid: int) -> tuple[float, float, float, float]:
    if not isinstance(value, list) or len(value) != 4 or not all(finite_number(v) for v in value):
        raise SimpleMatchError(
            f"{where} (image {iid}): 'bbox' must be 4 finite numbers [x, y, width, height]",
            "export the object's bounding box with its keypoints",
        )
    x, y, w, h = (float(v) for v in value)
    if w < 0 or h < 0 or not all(math.isfinite(v) for v in (x, y, w, h)):
        raise SimpleMatchError(f"{where} (image {iid}): bbox {value} has a negative width or height", FIX)
    return x, y, w, h


def _check_image_file(img: CocoImage, source: Path, sizes: dict[Path, tuple[int, int]]) -> None:
    if not img.path.is_file():
        raise SimpleMatchError(
            f"{source}: image {img.id} file {img.path} is missing",
            "put the images beside the JSON as its file_name says, or pass their folder with --images",
        )
    if img.path not in sizes:
        sizes[img.path] = image_size(img.path)  # the header only
    if sizes[img.path] != (img.width, img.height):
        w, h = sizes[img.path]
        raise SimpleMatchError(
            f"{source}: image {img.id} ({img.file_name}) is {w}x{h} on disk but {img.width}x{img.height} "
            "in the JSON",
            "export the JSON for these exact image files",
        )
