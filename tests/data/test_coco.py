"""COCO keypoints: the reader's validation (one line naming the id), pairs, splits, and the PF-WILLOW
cross-check that pins the reader to `--dataset pfwillow`."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from simplematch.cli.app import main
from simplematch.data import coco_pairs
from simplematch.data.coco import read_coco_keypoints
from simplematch.data.coco_pairs import CocoOptions, read_coco_pairs
from simplematch.errors import SimpleMatchError
from tests.helpers import CSV_THE_CSV_MODULE_REFUSES


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
        anns[1]["keypoints"][0] = 40.5  # width 40: coordinates run 0 .. 40 (a tool's edge click is 39.9)
    elif case == "outside_y":
        anns[1]["keypoints"][1] = 30.25
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
    "outside_x": r"annotation 11 \(image 2\): keypoint 'handle' \(40.5, 29\) lies outside its 40x30 image",
    "outside_y": r"annotation 11 \(image 2\): keypoint 'handle' \(39, 30.25\) lies outside",
    "dup_annotation": r"duplicate annotation id 11",
    "dup_image": r"duplicate image id 2",
    "dup_category": r"duplicate category id 7",
    "no_names": r"annotation 10 \(image 1\): its category 7 \('cup'\) has no keypoint names",
    "missing_image": r"image 2 file .*nope.png is missing",
    "size_mismatch": r"image 2 \(img/2.png\) is 40x30 on disk but 41x30 in the JSON",
    "bbox": r"annotation 11 \(image 2\): 'bbox' must be 4 finite numbers",
}
CLI_ONLY = {"empty_split": r"split 'val' holds no pairs"}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_file_one_line_naming_the_id(tmp_path: Path, case: str) -> None:
    data = tiny_coco(tmp_path)
    read_coco_keypoints(write(tmp_path, copy.deepcopy(data)))  # the unmutated file is fine
    _mutate(data, case)
    with pytest.raises(SimpleMatchError, match=BAD[case]) as err:
        read_coco_keypoints(write(tmp_path, data))
    msg = str(err.value)
    assert "\n" not in msg and "Fix: " in msg


def test_points_on_the_last_pixel_read_as_exported(tmp_path: Path) -> None:
    """Labelling tools export continuous coordinates: a click in the last pixel column of a 40x30 image can
    be x = 39.9 or exactly 40 (the edge), and must read as given, as the benchmark readers allow."""
    data = tiny_coco(tmp_path)
    data["annotations"][1]["keypoints"][0:2] = [39.9, 30]
    data["annotations"][1]["keypoints"][3:5] = [40, 29.5]
    coco = read_coco_keypoints(write(tmp_path, data))
    edge = next(o for o in coco.objects if o.id == 11)
    np.testing.assert_array_equal(edge.keypoints[:2, :2], [[39.9, 30], [40, 29.5]])


def test_invisible_points_may_lie_anywhere_non_negative(tmp_path: Path) -> None:
    data = tiny_coco(tmp_path)
    data["annotations"][0]["keypoints"][6:9] = [500, 500, 0]  # not labelled: position meaningless
    assert len(read_coco_keypoints(write(tmp_path, data)).objects) == 4


def test_categories_without_keypoints_are_ignored_until_used(tmp_path: Path) -> None:
    data = tiny_coco(tmp_path)
    data["categories"] += [{"id": 0, "name": "animals", "supercategory": "none"},  # Roboflow's
                           {"id": 3, "name": "box", "keypoints": []}]  # fmt: skip
    coco = read_coco_keypoints(write(tmp_path, data))
    assert sorted(coco.categories) == [7] and len(coco.objects) == 4
    data["annotations"][1]["category_id"] = 0
    with pytest.raises(SimpleMatchError, match=r"annotation 11 \(image 2\): its category 0 \('animals'\)"):
        read_coco_keypoints(write(tmp_path, data))


def test_not_a_coco_file(tmp_path: Path) -> None:
    with pytest.raises(SimpleMatchError, match="missing list 'annotations'"):
        read_coco_keypoints(write(tmp_path, {"images": [], "categories": []}))
    with pytest.raises(SimpleMatchError, match="is a folder"):
        read_coco_keypoints(tmp_path)


# --- pairs -------------------------------------------------------------------------------------------------
def crowd_coco(tmp_path: Path, n_images: int = 6, seed: int = 0) -> dict[str, Any]:
    """``n_images`` 32x24 images; two categories; up to three objects per image with random visibility."""
    rng = np.random.default_rng(seed)
    (tmp_path / "img").mkdir(exist_ok=True)
    data: dict[str, Any] = {
        "images": [],
        "annotations": [],
        "categories": [
            {"id": 1, "name": "cat", "keypoints": ["a", "b", "c", "d"]},
            {"id": 2, "name": "dog", "keypoints": ["x", "y", "z"]},
        ],
    }
    aid = 100
    for i in range(1, n_images + 1):
        Image.new("RGB", (32, 24)).save(tmp_path / "img" / f"{i}.png")
        data["images"].append({"id": i, "file_name": f"img/{i}.png", "width": 32, "height": 24})
        for _ in range(int(rng.integers(1, 4))):
            cid = int(rng.integers(1, 3))
            k = 4 if cid == 1 else 3
            kps = []
            for _ in range(k):
                v = int(rng.choice([0, 1, 2], p=[0.25, 0.25, 0.5]))
                kps += [float(rng.integers(0, 32)), float(rng.integers(0, 24)), v] if v else [0, 0, 0]
            data["annotations"].append(
                {"id": aid, "image_id": i, "category_id": cid, "keypoints": kps, "bbox": [1, 2, 20, 10]}
            )
            aid += 1
    return data


def brute_force_pairs(data: dict[str, Any], min_common: int, images: set[int]) -> list[tuple]:
    """Every (source id, target id, common keypoint indices), by source image, source then target order."""
    anns = [a for a in data["annotations"] if a["image_id"] in images]
    vis = {a["id"]: [a["keypoints"][3 * k + 2] > 0 for k in range(len(a["keypoints"]) // 3)] for a in anns}
    anns = [a for a in anns if sum(vis[a["id"]]) >= min_common]
    out = []
    for img in sorted(images):
        for a in (a for a in anns if a["image_id"] == img):
            for b in anns:
                if b["category_id"] != a["category_id"] or b["image_id"] == img:
                    continue
                common = [
                    k for k, (x, y) in enumerate(zip(vis[a["id"]], vis[b["id"]], strict=True)) if x and y
                ]
                if len(common) >= min_common:
                    out.append((a["id"], b["id"], common))
    return out


@pytest.mark.parametrize("min_common", [1, 2, 3])
def test_pairs_match_a_brute_force_enumeration(tmp_path: Path, min_common: int) -> None:
    data = crowd_coco(tmp_path, n_images=8)
    path = write(tmp_path, data)
    opts = CocoOptions(min_common=min_common, split_fractions=(1.0, 0.0, 0.0))
    records, info = read_coco_pairs(path, "trn", opts)
    expected = brute_force_pairs(data, min_common, set(range(1, 9)))
    assert [(r.meta["src_annotation"], r.meta["trg_annotation"]) for r in records] == [
        e[:2] for e in expected
    ]
    anns = {a["id"]: a for a in data["annotations"]}
    for rec, (a, b, common) in zip(records, expected, strict=True):
        ka = np.asarray(anns[a]["keypoints"], float).reshape(-1, 3)
        kb = np.asarray(anns[b]["keypoints"], float).reshape(-1, 3)
        np.testing.assert_array_equal(rec.src_kps, ka[common, :2])
        np.testing.assert_array_equal(rec.trg_kps, kb[common, :2])
        names = data["categories"][anns[a]["category_id"] - 1]["keypoints"]
        assert rec.meta["keypoint_names"] == [names[k] for k in common]
        np.testing.assert_array_equal(rec.trg_bbox, [1, 2, 21, 12])  # x, y, w, h -> corners
        assert rec.dataset == "coco" and rec.trg_size == (32, 24)
    few = sum(1 for a in data["annotations"] if sum(v > 0 for v in a["keypoints"][2::3]) < min_common)
    assert info["skipped_annotations"] == few and info["pairs"] == len(records)


def test_max_pairs_per_image_is_a_seeded_bounded_subset(tmp_path: Path) -> None:
    data = crowd_coco(tmp_path, n_images=12, seed=1)
    path = write(tmp_path, data)
    every = CocoOptions(min_common=1, split_fractions=(1.0, 0.0, 0.0))
    full = [r.pair_id for r in read_coco_pairs(path, "trn", every)[0]]
    bounded = dataclasses.replace(every, max_pairs_per_image=3)
    recs, info = read_coco_pairs(path, "trn", bounded)
    ids = [r.pair_id for r in recs]
    assert info["max_pairs_per_image"] == 3 and len(ids) < len(full)
    assert set(ids) <= set(full) and ids == [p for p in full if p in set(ids)]  # enumeration order kept
    per_image = Counter(r.meta["src_image_id"] for r in recs)
    assert max(per_image.values()) == 3
    assert ids == [r.pair_id for r in read_coco_pairs(path, "trn", bounded)[0]]  # deterministic
    other = dataclasses.replace(bounded, split_seed=5)
    assert ids != [r.pair_id for r in read_coco_pairs(path, "trn", other)[0]]


def test_unbounded_enumeration_is_refused_beyond_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(coco_pairs, "MAX_ALL_PAIRS", 5)
    path = write(tmp_path, crowd_coco(tmp_path, n_images=8))
    with pytest.raises(SimpleMatchError, match="--max-pairs-per-image"):
        read_coco_pairs(path, "trn", CocoOptions(min_common=1, split_fractions=(1.0, 0.0, 0.0)))


def test_splits_disjoint_by_image_and_reproducible(tmp_path: Path) -> None:
    data = crowd_coco(tmp_path, n_images=40, seed=2)
    path = write(tmp_path, data)
    opts = CocoOptions(min_common=1, split_seed=7, split_fractions=(0.6, 0.2, 0.2))
    images = {}
    for split in ("trn", "val", "test"):
        recs, info = read_coco_pairs(path, split, opts)
        images[split] = set(info["image_ids"])
        used = {r.meta[k] for r in recs for k in ("src_image_id", "trg_image_id")}
        assert used <= images[split]  # no pair reaches outside its split
        assert info["split_seed"] == 7 and info["split_fractions"] == [0.6, 0.2, 0.2]
        assert info["split_images"] == {"trn": 24, "val": 8, "test": 8}
    assert not images["trn"] & images["val"] and not images["trn"] & images["test"]
    assert not images["val"] & images["test"]
    assert images["trn"] | images["val"] | images["test"] == set(range(1, 41))
    # The recorded seed reproduces the split; another seed gives another one.
    assert set(read_coco_pairs(path, "test", opts)[1]["image_ids"]) == images["test"]
    moved = read_coco_pairs(path, "test", dataclasses.replace(opts, split_seed=8))[1]
    assert set(moved["image_ids"]) != images["test"]
    # Independent of the pair code: the partition is a seeded permutation of the sorted ids.
    perm = np.array(sorted(range(1, 41)))[np.random.default_rng(7).permutation(40)]
    assert images["trn"] == set(perm[:24].tolist()) and images["test"] == set(perm[32:].tolist())


def test_empty_split_and_bad_fractions_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, tiny_coco(tmp_path))
    with pytest.raises(SimpleMatchError, match="split 'val' holds no pairs"):
        read_coco_pairs(path, "val", CocoOptions(split_fractions=(1.0, 0.0, 0.0)))
    with pytest.raises(SimpleMatchError, match="summing to 1"):
        read_coco_pairs(path, "trn", CocoOptions(split_fractions=(0.5, 0.2, 0.2)))


def test_pairs_file_gives_the_split_and_counts_skipped(tmp_path: Path) -> None:
    data = tiny_coco(tmp_path)
    path = write(tmp_path, data)
    listed = tmp_path / "pairs.csv"
    data["annotations"][2]["keypoints"] = [0, 0, 0, 3, 3, 2, 1, 1, 2]  # 12: rim and base visible
    path = write(tmp_path, data)
    rows = ["test,10,11", "trn,11,13", "test,10,12", "test,12,13", "test,13,11"]
    listed.write_text("split,source,target\n" + "\n".join(rows) + "\n")
    recs, info = read_coco_pairs(path, "test", CocoOptions(min_common=2, pairs=str(listed)))
    assert [r.pair_id for r in recs] == ["10-11", "12-13", "13-11"]  # 10-12 share only the rim
    assert info["skipped_pairs"] == 1 and info["mode"] == "pairs file"
    data["annotations"][2]["keypoints"] = [0, 0, 0, 0, 0, 0, 1, 1, 2]  # 12: one visible point
    path = write(tmp_path, data)
    recs, info = read_coco_pairs(path, "test", CocoOptions(min_common=2, pairs=str(listed)))
    assert [r.pair_id for r in recs] == ["10-11", "13-11"] and info["skipped_pairs"] == 2
    np.testing.assert_array_equal(recs[0].src_kps, [[5, 6], [10, 12]])  # handle, rim (base not labelled)
    assert recs[0].meta["keypoint_names"] == ["handle", "rim"]
    listed.write_text("split,source,target\ntest,10,99\n")
    with pytest.raises(SimpleMatchError, match="line 2: annotation 99 is not in"):
        read_coco_pairs(path, "test", CocoOptions(pairs=str(listed)))
    listed.write_text("src,trg\n10,11\n")
    with pytest.raises(SimpleMatchError, match="header split,source,target"):
        read_coco_pairs(path, "test", CocoOptions(pairs=str(listed)))
    for bad in CSV_THE_CSV_MODULE_REFUSES:
        listed.write_bytes(bad)
        with pytest.raises(SimpleMatchError, match=f"{listed} is not a valid CSV"):
            read_coco_pairs(path, "test", CocoOptions(pairs=str(listed)))


def test_one_file_per_split(tmp_path: Path) -> None:
    data = tiny_coco(tmp_path)
    folder = tmp_path / "export"
    folder.mkdir()
    for img in data["images"]:
        img["file_name"] = "../" + img["file_name"]
    write(folder, data, "train.json")
    recs, info = read_coco_pairs(folder, "trn", CocoOptions(min_common=2))
    assert len(recs) == 6 and info["mode"] == "file per split"  # 10, 11, 13: every ordered pair
    with pytest.raises(SimpleMatchError, match="no COCO file for split 'test'"):
        read_coco_pairs(folder, "test")


@pytest.mark.parametrize("case", [*sorted(BAD), "empty_split"])
def test_cli_bad_file_exit_2_one_line(tmp_path: Path, case: str, capsys: pytest.CaptureFixture) -> None:
    data = tiny_coco(tmp_path)
    _mutate(data, case)
    path = write(tmp_path, data)
    split = ["--split", "val", "--split-fractions", "1,0,0"] if case == "empty_split" else []
    assert main(["stats", "--dataset", "coco", "--data-root", str(path), *split]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and re.search({**BAD, **CLI_ONLY}[case], err)
    assert "Traceback" not in err


def test_per_keypoint_table_pools_each_named_point() -> None:
    from simplematch.metrics import PairPrediction, keypoint_table

    def pred(cat: str, names: list[str], err: list[float], valid: list[bool]) -> PairPrediction:
        gt = np.zeros((len(err), 2))
        return PairPrediction(
            index=0, pair_id="p", category=cat, src_image=None, trg_image=None, src_kps=gt, gt=gt,
            pred=gt + np.array(err)[:, None] * [1.0, 0.0], valid=np.array(valid), threshold=10.0,
            keypoint_names=names,
        )  # fmt: skip

    preds = [
        pred("cup", ["handle", "rim"], [0.4, 2.0], [True, True]),  # threshold 10: 0.4 < 0.5, 2.0 >= 1.5
        pred("cup", ["rim", "base"], [1.2, 0.0], [True, False]),  # base invalid: not counted
        pred("mug", ["rim"], [0.0], [True]),  # same name, another category: its own row
    ]
    table = keypoint_table(preds, [0.05, 0.15])
    assert table == {
        "cup": {
            "handle": {"points": 1, "pck": {"0.05": 100.0, "0.15": 100.0}},
            "rim": {"points": 2, "pck": {"0.05": 0.0, "0.15": 50.0}},
        },
        "mug": {"rim": {"points": 1, "pck": {"0.05": 100.0, "0.15": 100.0}}},
    }
    assert keypoint_table([dataclasses.replace(preds[0], keypoint_names=None)], [0.1]) == {}


def test_coco_flags_with_another_dataset_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for cmd in (["stats"], ["eval", str(tmp_path / "m.onnx")], ["train", "--out", str(tmp_path / "r")]):
        assert main([*cmd, "--dataset", "pfwillow", "--min-common", "2", "--split-seed", "1"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--min-common, --split-seed only apply to --dataset coco" in err


def test_eval_json_is_never_the_coco_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = write(tmp_path, tiny_coco(tmp_path))
    args = ["eval", str(tmp_path / "m.onnx"), "--dataset", "coco", "--data-root", str(path), "--force"]
    assert main([*args, "--json", str(path)]) == 2
    assert "input" in capsys.readouterr().err and json.loads(path.read_text())["annotations"]
