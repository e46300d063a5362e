"""``smatch transfer``: combination of references, COCO results (pycocotools round trip), unreadable targets,
interrupt + resume, the review page and the output rules.

The ONNX models are the tiny graphs of ``tests/test_runtime.py``; the "position" model's features are one-hot
cell codes, so every reference keypoint lands on its own cell in the target: an exact expectation that
does not go through the code under test.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simplematch.cli.app import main
from simplematch.errors import SimpleMatchError
from simplematch.image import to_image_frame, to_model_frame
from simplematch.runtime.transfer import combine_matches, list_targets, run_transfer
from tests.helpers import S, make_onnx, subprocess_env, write_image

KEYPOINTS = ("a", "b", "c", "d", "e")


def write_refs(folder: Path, refs: list[tuple[str, np.ndarray, list[int]]]) -> Path:
    """A COCO keypoints file: one object per (image file, (K, 2) keypoints, K visibilities)."""
    images, anns = [], []
    for i, (name, kps, vis) in enumerate(refs, 1):
        with Image.open(folder / name) as im:
            w, h = im.size
        flat = [v for (x, y), f in zip(kps, vis, strict=True) for v in (float(x), float(y), f)]
        images.append({"id": i, "file_name": name, "width": w, "height": h})
        anns.append({"id": 10 + i, "image_id": i, "category_id": 3, "keypoints": flat, "bbox": [0, 0, w, h]})
    cats = [
        {"id": 3, "name": "thing", "supercategory": "x", "keypoints": list(KEYPOINTS), "skeleton": [[1, 2]]}
    ]
    path = folder / "refs.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


@pytest.fixture
def scene(tmp_path: Path) -> dict[str, Path]:
    """refs/ with two annotated images, targets/ with four images (one in a sub-folder, one hidden)."""
    (tmp_path / "refs").mkdir()
    r1 = write_image(tmp_path / "refs" / "r1.png", 48, 40, seed=1)
    r2 = write_image(tmp_path / "refs" / "r2.png", 64, 64, seed=2)
    kps1 = np.array([[3.0, 4.0], [20.5, 10.0], [40.0, 30.0], [47.0, 39.0], [10.0, 35.0]])
    kps2 = np.array([[5.0, 60.0], [33.0, 2.0], [63.0, 63.0], [0.0, 0.0], [31.5, 31.5]])
    # Only visible (v = 2) points are matched: a, b, e come from r1, c from r2 (occluded in r1), and d from
    # nobody (occluded in r1, unlabelled in r2).
    refs = write_refs(tmp_path / "refs", [(r1.name, kps1, [2, 2, 1, 1, 2]), (r2.name, kps2, [0, 0, 2, 0, 1])])
    t = tmp_path / "targets"
    (t / "sub").mkdir(parents=True)
    (t / ".hidden").mkdir()
    write_image(t / "b.png", 50, 70, seed=3)
    write_image(t / "a.jpg", 80, 60, seed=4)
    write_image(t / "sub" / "c.png", 33, 45, seed=5)
    write_image(t / ".hidden" / "x.png", 20, 20, seed=6)
    (t / "notes.txt").write_text("not an image")
    return {"refs": refs, "targets": t, "root": tmp_path, "kps1": kps1, "kps2": kps2}


# ----------------------------------------------------------------------------------------------------------
# Combination
# ----------------------------------------------------------------------------------------------------------
def _combine_by_loops(pred, conf, valid, radius, method):
    """Independent reference: the docstring's rules, one keypoint and one candidate at a time."""
    r, k = valid.shape
    pos, out = np.full((k, 2), np.nan), np.zeros(k)
    for j in range(k):
        ids = [i for i in range(r) if valid[i, j]]
        if not ids:
            continue
        if method == "best":
            i = max(ids, key=lambda i: (conf[i, j], -i))
            pos[j], out[j] = pred[i, j], conf[i, j]
            continue
        if method == "mean":
            members = ids
            out[j] = sum(conf[i, j] for i in ids) / len(ids)
        else:
            best_support = -1.0
            for i in ids:
                sup = [m for m in ids if np.hypot(*(pred[i, j] - pred[m, j])) <= radius]
                s = sum(conf[m, j] for m in sup)
                if s > best_support:
                    best_support, members = s, sup
            out[j] = best_support / len(ids)
        w = np.array([conf[m, j] for m in members])
        w = w if w.sum() > 0 else np.ones(len(members))
        pos[j] = (w[:, None] * np.array([pred[m, j] for m in members])).sum(0) / w.sum()
    return pos, out


def test_combine_by_hand() -> None:
    pred = np.array([[[10.0, 10.0]], [[12.0, 10.0]], [[100.0, 100.0]]])
    valid = np.ones((3, 1), bool)
    conf = np.array([[0.5], [0.5], [0.9]])
    pos, c = combine_matches(pred, conf, valid, 5.0, "vote")  # support 1.0 (the pair) beats 0.9 (alone)
    np.testing.assert_allclose(pos, [[11.0, 10.0]])
    np.testing.assert_allclose(c, [1.0 / 3])
    pos, c = combine_matches(pred, np.array([[0.5], [0.3], [0.9]]), valid, 5.0, "vote")  # 0.8 < 0.9
    np.testing.assert_allclose(pos, [[100.0, 100.0]])
    np.testing.assert_allclose(c, [0.3])
    pos, c = combine_matches(pred, conf, valid, 5.0, "best")
    np.testing.assert_allclose(pos, [[100.0, 100.0]]) and np.testing.assert_allclose(c, [0.9])
    pos, c = combine_matches(pred, conf, valid, 5.0, "mean")
    np.testing.assert_allclose(pos, [[(5 + 6 + 90) / 1.9, (5 + 5 + 90) / 1.9]])
    np.testing.assert_allclose(c, [1.9 / 3])
    # a keypoint no reference has: NaN position, confidence 0; one reference: its own match
    pred2 = np.array([[[1.0, 2.0], [np.nan, np.nan]]])
    pos, c = combine_matches(pred2, np.array([[0.4, 0.0]]), np.array([[True, False]]), 5.0, "vote")
    np.testing.assert_allclose(pos[0], [1.0, 2.0]) and np.testing.assert_allclose(c, [0.4, 0.0])
    assert np.isnan(pos[1]).all()
    with pytest.raises(SimpleMatchError, match="unknown combination"):
        combine_matches(pred, conf, valid, 5.0, "median")


@pytest.mark.parametrize("method", ["vote", "best", "mean"])
def test_combine_equals_the_loop_reference(method: str) -> None:
    rng = np.random.default_rng(7)
    for _ in range(30):
        r, k = rng.integers(1, 7), rng.integers(1, 9)
        pred = rng.uniform(0, 40, (r, k, 2))
        conf = rng.uniform(0, 1, (r, k)).round(1)  # ties happen
        conf[rng.uniform(size=(r, k)) < 0.1] = 0.0
        valid = rng.uniform(size=(r, k)) < 0.8
        pred[~valid] = np.nan
        got = combine_matches(pred, conf, valid, 12.0, method)
        want = _combine_by_loops(pred, conf, valid, 12.0, method)
        np.testing.assert_allclose(got[0], want[0], atol=1e-9)
        np.testing.assert_allclose(got[1], want[1], atol=1e-12)


# ----------------------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------------------
def test_list_targets_recursive_sorted_hidden_skipped(scene: dict[str, Path]) -> None:
    names = [p.relative_to(scene["targets"]).as_posix() for p in list_targets(scene["targets"])]
    assert names == ["a.jpg", "b.png", "sub/c.png"]


def test_round_trip_through_pycocotools(models: dict[str, Path], scene: dict[str, Path]) -> None:
    coco_api = pytest.importorskip("pycocotools.coco")
    out = scene["root"] / "out" / "res.json"
    summary = run_transfer(scene["refs"], scene["targets"], out, models["position"], combine="best")
    assert (summary["targets"], summary["done"], summary["failed"], summary["interrupted"]) == (
        3,
        3,
        0,
        False,
    )
    data = json.loads(out.read_text())
    assert [im["file_name"] for im in data["images"]] == ["a.jpg", "b.png", "sub/c.png"]
    assert [(im["width"], im["height"]) for im in data["images"]] == [(80, 60), (50, 70), (33, 45)]
    assert data["categories"] == [
        {"id": 3, "name": "thing", "supercategory": "x", "keypoints": list(KEYPOINTS), "skeleton": [[1, 2]]}
    ]
    gt = coco_api.COCO(str(out))
    res = gt.loadRes(gt.dataset["annotations"])
    assert sorted(res.getImgIds()) == [1, 2, 3] and len(res.getAnnIds()) == 3
    for ann in res.loadAnns(res.getAnnIds()):
        assert (
            ann["category_id"] == 3 and len(ann["keypoints"]) == 3 * len(KEYPOINTS) and 0 <= ann["score"] <= 1
        )
    # The position model puts every keypoint on its own cell: the expectation, computed without the code.
    from_r1 = np.array([True, True, False, True, True])[:, None]  # d: no reference, checked below
    kps = np.where(from_r1, scene["kps1"], scene["kps2"])
    src_hw = np.where(from_r1, [[40, 48]], [[64, 64]])
    for im in data["images"]:
        ann = next(a for a in data["annotations"] if a["image_id"] == im["id"])
        got = np.array(ann["keypoints"], float).reshape(-1, 3)
        for j in (0, 1, 2, 4):
            cell = np.floor(to_model_frame(kps[j : j + 1], tuple(src_hw[j]), S) / 4.0)
            want = to_image_frame(cell * 4.0, (im["height"], im["width"]), S)[0]
            np.testing.assert_allclose(got[j, :2], want, atol=0.006)  # the file keeps 2 decimals
        assert got[:, 2].tolist() == [2, 2, 2, 0, 2] and ann["num_keypoints"] == 4
        assert got[3].tolist() == [0, 0, 0] and ann["keypoint_scores"][3] == 0.0  # d: COCO's "not labelled"
        assert ann["score"] == pytest.approx(np.mean(np.delete(ann["keypoint_scores"], 3)), abs=1e-4)
    # The file reads back as references for the next transfer (chaining).
    from simplematch.data.coco import read_coco_keypoints

    again = read_coco_keypoints(out, scene["targets"])
    assert len(again.objects) == 3 and again.images[3].path == scene["targets"] / "sub" / "c.png"


def test_min_confidence_sets_v0_and_keeps_confidence(models: dict[str, Path], scene: dict[str, Path]) -> None:
    out = scene["root"] / "conf.json"
    run_transfer(scene["refs"], scene["targets"], out, models["conv"], min_confidence=0.5)
    for ann in json.loads(out.read_text())["annotations"]:
        kps = np.array(ann["keypoints"], float).reshape(-1, 3)
        conf = np.array(ann["keypoint_scores"])
        np.testing.assert_array_equal(kps[:, 2] == 2, conf >= 0.5)
        assert ann["num_keypoints"] == int((conf >= 0.5).sum())
        assert ann["score"] == pytest.approx(np.delete(conf, 3).mean(), abs=1e-4)  # d has no reference


def test_unreadable_target_in_the_middle(
    models: dict[str, Path], scene: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    (scene["targets"] / "b2.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # sorts between b.png and sub/
    out = scene["root"] / "bad.json"
    rc = main(["transfer", "--refs", str(scene["refs"]), "--targets", str(scene["targets"]),
               "--out", str(out), "--model", str(models["conv"]), "--batch-size", "2"])  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 1
    assert re.search(r"skipped b2\.png: cannot read image", text), text
    assert "3 of 4 targets" in text and "1 unreadable" in text, text
    data = json.loads(out.read_text())
    assert [im["file_name"] for im in data["images"]] == ["a.jpg", "b.png", "sub/c.png"]
    assert [im["id"] for im in data["images"]] == [1, 2, 4]  # ids are ranks in the folder, the gap stays
    # each written target equals a run without the bad image
    (scene["targets"] / "b2.png").unlink()
    ok = scene["root"] / "ok.json"
    run_transfer(scene["refs"], scene["targets"], ok, models["conv"])
    keyed = {a["image_id"]: a["keypoints"] for a in json.loads(ok.read_text())["annotations"]}
    assert [a["keypoints"] for a in data["annotations"]] == [keyed[1], keyed[2], keyed[3]]
    assert not any(p.name.endswith(".tmp") for p in scene["root"].rglob("*"))


def test_review_page_lists_every_target_worst_first(models: dict[str, Path], scene: dict[str, Path]) -> None:
    out, rev = scene["root"] / "r.json", scene["root"] / "review"
    summary = run_transfer(
        scene["refs"], scene["targets"], out, models["conv"], review_dir=rev, min_confidence=0.3
    )
    page = (rev / "index.html").read_text()
    assert summary["review"] == str(rev / "index.html")
    cards = re.findall(
        r'<img src="([^"]+)".*?<figcaption>(.*?) &middot; thing &middot; score ([0-9.]+)', page
    )
    assert sorted(c[1] for c in cards) == ["a.jpg", "b.png", "sub/c.png"]
    scores = [float(c[2]) for c in cards]
    assert scores == sorted(scores)  # worst first
    heights = {"a.jpg": 60, "b.png": 70, "sub/c.png": 45}
    for src, name, _ in cards:  # reference (40 or 64 px high) | target, at the taller one's height
        with Image.open(rev / src) as im:
            assert im.height in (max(40, heights[name]), max(64, heights[name])) and im.width > im.height
    data = json.loads(out.read_text())
    want = {a["score"] for a in data["annotations"]}
    assert {round(s, 3) for s in scores} == {round(s, 3) for s in want}


def test_output_rules(models: dict[str, Path], scene: dict[str, Path]) -> None:
    refs, targets, model = scene["refs"], scene["targets"], models["conv"]
    out = scene["root"] / "o.json"
    out.write_text("precious")
    with pytest.raises(SimpleMatchError, match="already exists.*--force"):
        run_transfer(refs, targets, out, model)
    assert out.read_text() == "precious"
    with pytest.raises(SimpleMatchError, match="one of this command's inputs"):
        run_transfer(refs, targets, refs, model, force=True)
    with pytest.raises(SimpleMatchError, match="reads recursively"):
        run_transfer(refs, targets, scene["root"] / "n.json", model, review_dir=targets / "rev")
    with pytest.raises(SimpleMatchError, match="contradict"):
        run_transfer(refs, targets, out, model, resume=True, force=True)
    with pytest.raises(SimpleMatchError, match="does not exist"):
        run_transfer(refs, targets, scene["root"] / "none.json", model, resume=True)
    with pytest.raises(SimpleMatchError, match="not valid JSON.*without --resume"):
        run_transfer(refs, targets, out, model, resume=True)
    out.write_text('{"images": [], "annotations": [], "categories": []}')  # COCO, but not ours
    with pytest.raises(SimpleMatchError, match="not written by smatch transfer"):
        run_transfer(refs, targets, out, model, resume=True)
    with pytest.raises(SimpleMatchError, match="--combine"):
        run_transfer(refs, targets, scene["root"] / "n.json", model, combine="median")
    run_transfer(refs, targets, out, model, force=True)
    with pytest.raises(SimpleMatchError, match="combine='vote', this run has 'best'"):
        run_transfer(refs, targets, out, model, resume=True, combine="best")
    assert list(scene["root"].glob("n.json")) == [] and not (targets / "rev").exists()


def test_reference_images_inside_the_target_folder_are_left_out(
    models: dict[str, Path], tmp_path: Path
) -> None:
    r = write_image(tmp_path / "r.png", 40, 40, seed=1)
    write_image(tmp_path / "t.png", 40, 40, seed=2)
    refs = write_refs(tmp_path, [(r.name, np.full((5, 2), 10.0), [2] * 5)])
    s = run_transfer(refs, tmp_path, tmp_path.parent / f"{tmp_path.name}.json", models["conv"])
    assert (s["targets"], s["excluded"]) == (1, 1)


# ----------------------------------------------------------------------------------------------------------
# Interrupt and resume
# ----------------------------------------------------------------------------------------------------------
def _command(scene: dict[str, Path], model: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "simplematch.cli", "transfer", "--refs", str(scene["refs"]),
            "--targets", str(scene["targets"]), "--model", str(model), "--out", str(out),
            "--batch-size", "4", *extra]  # fmt: skip


def test_sigint_mid_run_then_resume_equals_an_uninterrupted_run(
    models: dict[str, Path], scene: dict[str, Path]
) -> None:
    many = scene["targets"] / "many"
    many.mkdir()
    ramp = np.linspace(0, 255, 320 * 240 * 3).reshape(240, 320, 3)
    for i in range(200):  # enough targets that the run is still going when the signal comes
        Image.fromarray(((ramp + 7 * i) % 256).astype(np.uint8)).save(many / f"{i:03d}.png")
    total = len(list_targets(scene["targets"]))
    full = scene["root"] / "full.json"
    run_transfer(scene["refs"], scene["targets"], full, models["conv"], batch_size=4)
    out, rev = scene["root"] / "part" / "res.json", scene["root"] / "review"
    out.parent.mkdir()
    proc = subprocess.Popen(_command(scene, models["conv"], out, "--review", str(rev)), env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:  # wait until results stream in, then Ctrl-C
        tmp = [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]
        if tmp and tmp[0].read_text().count('"image_id"') >= 3:
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.005)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout + stderr
    assert "--resume" in stdout
    part = json.loads(out.read_text())  # a valid file
    assert 3 <= len(part["images"]) < total and len(part["annotations"]) == len(part["images"])
    assert [p.name for p in out.parent.iterdir()] == ["res.json"]  # no temporary file left
    assert (rev / "index.html").read_text().count("<figure>") == len(part["images"])  # the page so far
    done = subprocess.run(_command(scene, models["conv"], out, "--resume", "--review", str(rev)),
                          env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert (
        f"{total} of {total} targets" in done.stdout
        and f"({total - len(part['images'])} this run" in done.stdout
    )
    assert out.read_bytes() == full.read_bytes()
    page = (rev / "index.html").read_text()  # the resumed page lists every target, each with its picture
    assert page.count("<figure>") == total and "no picture" not in page
    assert len(list((rev / "img").glob("*.jpg"))) == total


def test_a_failed_run_leaves_nothing_behind(
    models: dict[str, Path], scene: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import simplematch.runtime.transfer as tr

    real, calls = tr.transfer_keypoints, []

    def fails_on_the_second_target(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("the backend died")
        return real(*args, **kwargs)

    monkeypatch.setattr(tr, "transfer_keypoints", fails_on_the_second_target)
    out, rev = scene["root"] / "f.json", scene["root"] / "rev"
    with pytest.raises(RuntimeError, match="backend died"):
        run_transfer(scene["refs"], scene["targets"], out, models["conv"], review_dir=rev)
    assert not out.exists() and not rev.exists()
    assert sorted(p.name for p in scene["root"].iterdir()) == ["refs", "targets"]


def test_points_stay_inside_small_targets(tmp_path: Path) -> None:
    """With cell-centre coordinates the last cell maps to 15/16 of the side: past the last pixel of a tiny
    image. The file clamps to 0 .. w - 1 (COCO pixels), so it reads back as references."""
    from simplematch.data.coco import read_coco_keypoints
    from tests.helpers import make_meta

    model = make_onnx(tmp_path / "center.onnx", kind="position", meta=make_meta(coord="center"))
    r = write_image(tmp_path / "r.png", 40, 40, seed=1)
    (tmp_path / "t").mkdir()
    write_image(tmp_path / "t" / "small.png", 6, 5, seed=2)
    refs = write_refs(
        tmp_path, [(r.name, np.array([[39.0, 39.0], [0, 0], [20, 20], [1, 38], [38, 1]]), [2] * 5)]
    )
    run_transfer(refs, tmp_path / "t", tmp_path / "o.json", model)
    kps = np.array(json.loads((tmp_path / "o.json").read_text())["annotations"][0]["keypoints"]).reshape(
        -1, 3
    )
    np.testing.assert_allclose(kps[0], [5, 4, 2])  # unclamped: 5.625, 4.6875
    assert (kps[:, 0] <= 5).all() and (kps[:, 1] <= 4).all()
    assert len(read_coco_keypoints(tmp_path / "o.json", tmp_path / "t").objects) == 1


def test_two_categories_give_two_results_per_target(models: dict[str, Path], tmp_path: Path) -> None:
    r1 = write_image(tmp_path / "r1.png", 40, 40, seed=1)
    r2 = write_image(tmp_path / "r2.png", 40, 40, seed=2)
    (tmp_path / "t").mkdir()
    for name in ("x.png", "y.png"):
        write_image(tmp_path / "t" / name, 30, 20, seed=3)
    refs = {
        "images": [{"id": 1, "file_name": r1.name, "width": 40, "height": 40},
                   {"id": 2, "file_name": r2.name, "width": 40, "height": 40}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 9, "keypoints": [5, 5, 2, 9, 9, 2], "bbox": [0, 0, 9, 9]},
            {"id": 2, "image_id": 2, "category_id": 4, "keypoints": [1, 2, 2, 3, 4, 2, 30, 30, 2],
             "bbox": [0, 0, 30, 30]},
            {"id": 3, "image_id": 1, "category_id": 4, "keypoints": [7, 7, 2, 0, 0, 0, 20, 20, 1],
             "bbox": [0, 0, 7, 7]},
        ],
        "categories": [{"id": 4, "name": "cup", "keypoints": ["a", "b", "c"]},
                       {"id": 9, "name": "pen", "keypoints": ["tip", "cap"]}],
    }  # fmt: skip
    (tmp_path / "refs.json").write_text(json.dumps(refs))
    run_transfer(tmp_path / "refs.json", tmp_path / "t", tmp_path / "o.json", models["position"])
    data = json.loads((tmp_path / "o.json").read_text())
    assert [c["name"] for c in data["categories"]] == ["pen", "cup"]  # the references' order
    got = [(a["id"], a["image_id"], a["category_id"], len(a["keypoints"]) // 3) for a in data["annotations"]]
    assert got == [(1, 1, 9, 2), (2, 1, 4, 3), (3, 2, 9, 2), (4, 2, 4, 3)]
    cup = data["annotations"][1]  # two cup references; "c" is visible in r2 only, "b" in r2 only
    assert cup["num_keypoints"] == 3 and all(s > 0 for s in cup["keypoint_scores"])
