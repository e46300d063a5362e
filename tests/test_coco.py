"""COCO keypoints: the reader's validation (one line naming the id), pairs, splits, and the PF-WILLOW
cross-check that pins the reader to `--dataset pfwillow`."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from simplematch.data.coco import read_coco_keypoints
from simplematch.errors import SimpleMatchError


# --- a tiny COCO file built in tmp_path ---------------------------------------------------------------------
def tiny_coco(tmp_path: Path) -> dict[str, Any]:
    """Three 40x30 images, one category with 3 keypoint names, four annotations (two on image 2)."""
    (tmp_path / "img").mkdir(exist_ok=True)
    for i in (1, 2, 3):
        Image.new("RGB", (40, 30), (10 * i, 0, 0)).save(tmp_path / "img" / f"{i}.png")
    return {
        "images": [{"id": i, "file_name": f"img/{i}.png", "width": 40, "height": 30} for i in (1, 2, 3)],
        "categories": [{"id": 7, "name": "cup", "keypoints": ["handle", "rim", "base"]}],
        "annotations": [
            {
                "id": 10,
                "image_id": 1,
                "category_id": 7,
                "bbox": [1, 2, 30, 20],
                "keypoints": [5, 6, 2, 10, 12, 1, 0, 0, 0],
            },
            {
                "id": 11,
                "image_id": 2,
                "category_id": 7,
                "bbox": [0, 0, 39, 29],
                "keypoints": [39, 29, 2, 3.5, 4.25, 2, 7, 8, 2],
            },
            {
                "id": 12,
                "image_id": 2,
                "category_id": 7,
                "bbox": [0, 0, 10, 10],
                "keypoints": [0, 0, 0, 0, 0, 0, 1, 1, 2],
            },  # one visible point
            {
                "id": 13,
                "image_id": 3,
                "category_id": 7,
                "bbox": [2, 2, 5, 5],
                "keypoints": [1, 2, 2, 3, 4, 2, 5, 6, 2],
            },
        ],
    }


def write(tmp_path: Path, data: dict[str, Any], name: str = "ann.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_reads_objects_in_file_order_and_counts_skipped(tmp_path: Path) -> None:
    data = tiny_coco(tmp_path)
    coco = read_coco_keypoints(write(tmp_path, data), min_visible=2)
    assert [o.id for o in coco.objects] == [10, 11, 13]  # 12 has one visible point
    assert coco.skipped == 1
    assert coco.categories[7].keypoint_names == ("handle", "rim", "base")
    assert coco.images[2].path == tmp_path / "img" / "2.png" and coco.images[2].width == 40
    first = coco.objects[0]
    np.testing.assert_array_equal(first.keypoints, [[5, 6, 2], [10, 12, 1], [0, 0, 0]])
    assert first.keypoints.dtype == np.float64 and first.bbox == (1.0, 2.0, 30.0, 20.0)
    assert first.visible.tolist() == [True, True, False]
    assert len(read_coco_keypoints(write(tmp_path, data)).objects) == 4  # default min_visible=1
    assert read_coco_keypoints(write(tmp_path, data), min_visible=4).skipped == 4


def test_images_folder_option(tmp_path: Path) -> None:
    data = tiny_coco(tmp_path)
    for img in data["images"]:
        img["file_name"] = Path(img["file_name"]).name
    sub = tmp_path / "labels"
    sub.mkdir()
    path = write(sub, data)
    with pytest.raises(SimpleMatchError, match="image 1 file .* is missing.*--images"):
        read_coco_keypoints(path)
    coco = read_coco_keypoints(path, tmp_path / "img")
    assert coco.images[3].path == tmp_path / "img" / "3.png"
    assert len(read_coco_keypoints(path, check_images=False).objects) == 4


def _mutate(data: dict[str, Any], case: str) -> None:
    anns, imgs, cats = data["annotations"], data["images"], data["categories"]
    if case == "count":
        anns[1]["keypoints"] = anns[1]["keypoints"][:6]
    elif case == "visibility":
        anns[1]["keypoints"][5] = 3
    elif case == "nonfinite":
        anns[1]["keypoints"][3] = float("nan")
    elif case == "negative":
        anns[1]["keypoints"][4] = -0.5
    elif case == "outside_x":
        anns[1]["keypoints"][0] = 39.5  # width 40: the last pixel is x = 39
    elif case == "outside_y":
        anns[1]["keypoints"][1] = 30
    elif case == "dup_annotation":
        anns[2]["id"] = 11
    elif case == "dup_image":
        imgs[2]["id"] = 2
    elif case == "dup_category":
        cats.append(dict(cats[0], name="mug"))
    elif case == "no_names":
        cats[0]["keypoints"] = []
    elif case == "missing_image":
        imgs[1]["file_name"] = "img/nope.png"
    elif case == "size_mismatch":
        imgs[1]["width"] = 41
    elif case == "bbox":
        del anns[1]["bbox"]


BAD = {  # case -> what the one-line message must say (the id it names included)
    "count": r"annotation 11 \(image 2\): 2 keypoints, but category 7 names 3",
    "visibility": r"annotation 11 \(image 2\): keypoint 'rim' has v=3",
    "nonfinite": r"annotation 11 \(image 2\): a keypoint value is non-finite",
    "negative": r"annotation 11 \(image 2\): keypoint 'rim' has a negative coordinate",
    "outside_x": r"annotation 11 \(image 2\): keypoint 'handle' \(39.5, 29\) lies outside its 40x30 image",
    "outside_y": r"annotation 11 \(image 2\): keypoint 'handle' \(39, 30\) lies outside",
    "dup_annotation": r"duplicate annotation id 11",
    "dup_image": r"duplicate image id 2",
    "dup_category": r"duplicate category id 7",
    "no_names": r"category 7 \('cup'\) has no keypoint names",
    "missing_image": r"image 2 file .*nope.png is missing",
    "size_mismatch": r"image 2 \(img/2.png\) is 40x30 on disk but 41x30 in the JSON",
    "bbox": r"annotation 11 \(image 2\): 'bbox' must be 4 finite numbers",
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_file_one_line_naming_the_id(tmp_path: Path, case: str) -> None:
    data = tiny_coco(tmp_path)
    read_coco_keypoints(write(tmp_path, copy.deepcopy(data)))  # the unmutated file is fine
    _mutate(data, case)
    with pytest.raises(SimpleMatchError, match=BAD[case]) as err:
        read_coco_keypoints(write(tmp_path, data))
    msg = str(err.value)
    assert "\n" not in msg and "Fix: " in msg


def test_invisible_points_may_lie_anywhere_non_negative(tmp_path: Path) -> None:
    data = tiny_coco(tmp_path)
    data["annotations"][0]["keypoints"][6:9] = [500, 500, 0]  # not labelled: position meaningless
    assert len(read_coco_keypoints(write(tmp_path, data)).objects) == 4


def test_not_a_coco_file(tmp_path: Path) -> None:
    with pytest.raises(SimpleMatchError, match="missing list 'annotations'"):
        read_coco_keypoints(write(tmp_path, {"images": [], "categories": []}))
    with pytest.raises(SimpleMatchError, match="is a folder"):
        read_coco_keypoints(tmp_path)
