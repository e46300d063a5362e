"""Dataset readers, records, thresholds, synthetic pairs, augmentation and collation."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from simplematch.data import THRESHOLD_KIND, PairRecord, keypoint_fusion_stats, load_records, pck_threshold
from simplematch.data.synthetic import HELDOUT_PHOTOS, TRAIN_PHOTOS, make_synthetic_pair
from simplematch.errors import SimpleMatchError
from tests.helpers import CSV_THE_CSV_MODULE_REFUSES, PASCAL_ANNOTATIONS, SPAIR, WILLOW, need

PASCAL_CSV = PASCAL_ANNOTATIONS / "test_pairs.csv"


# --- PF-WILLOW (real files) ---------------------------------------------------------------------------------
def test_pfwillow_real_360_pairs_as_stored() -> None:
    need(WILLOW / "PF-dataset")
    recs = load_records("pfwillow", WILLOW, "test")
    assert len(recs) == 360
    # the sub-class folders, as the released code and HPF report PF-WILLOW (not the 4 objects)
    assert sorted({r.category for r in recs}) == ["car(G)", "duck(S)", "motorbike(M)", "winebottle(wC)"]
    raw = scipy.io.loadmat(str(next((WILLOW / "PF-dataset").glob("car*/Cars_006a.mat"))))["pts_coord"]
    first = next(r for r in recs if Path(r.src_image).stem == "Cars_006a")
    np.testing.assert_allclose(first.src_kps, raw.T)  # as stored: no -1 (released code, HPF, CATs)
    for rec in recs[::37]:
        assert rec.n_kps == 10
        for side, kps in (("src", rec.src_kps), ("trg", rec.trg_kps)):
            w, h = rec.image_size(side)
            assert (kps >= 0).all() and (kps[:, 0] <= w).all() and (kps[:, 1] <= h).all()
    assert THRESHOLD_KIND["pfwillow"] == "kps"


def test_kps_threshold_uses_valid_keypoints_only() -> None:
    kps = np.array([[100.0, 50.0], [140.0, 90.0], [0.0, 0.0]])  # last row is padding
    arrays = {"trg_kps": kps, "trg_bbox": None, "trg_size": (300, 200)}
    assert pck_threshold(arrays, "kps", valid=np.array([True, True, False])) == pytest.approx(40.0)
    assert pck_threshold(arrays, "kps") == pytest.approx(140.0)  # what counting the padding would give
    # resized frame: scaled per axis (x by 100/300, y by 100/200)
    assert pck_threshold(arrays, "kps", "resized", 100, valid=[True, True, False]) == pytest.approx(20.0)
    assert pck_threshold(arrays, "img") == 300 and pck_threshold(arrays, "img", "resized", 64) == 64
    arrays["trg_bbox"] = [10, 20, 70, 180]
    assert pck_threshold(arrays, "bbox") == 160
    assert pck_threshold(arrays, "bbox", "resized", 100) == pytest.approx(80.0)
    with pytest.raises(SimpleMatchError):
        pck_threshold({"trg_kps": kps, "trg_bbox": None, "trg_size": (3, 2)}, "bbox")


def test_pfwillow_real_kps_threshold() -> None:
    need(WILLOW / "PF-dataset")
    rec = load_records("pfwillow", WILLOW, "test", n_pairs=1)[0]
    ext = rec.trg_kps.max(0) - rec.trg_kps.min(0)
    assert pck_threshold(rec, "kps") == pytest.approx(ext.max())


# --- PF-PASCAL ----------------------------------------------------------------------------------------------
def test_pfpascal_real_csv_299_pairs(tmp_path: Path) -> None:
    need(PASCAL_CSV)
    shutil.copy(PASCAL_CSV, tmp_path / "test_pairs.csv")  # a tmp root built at test time, nothing in the repo
    recs = load_records("pfpascal", tmp_path, "test")
    assert len(recs) == 299
    assert all(r.n_kps > 0 and r.meta["kps_source"] == "csv" for r in recs)
    assert recs[0].category == "aeroplane" and recs[0].n_kps == 11
    assert float(recs[0].src_kps[0, 0]) == pytest.approx(253.631662222222)
    assert max(float(r.src_kps.max()) for r in recs) <= 300.5
    # img threshold needs the target image: a fake image of the stated size
    img = tmp_path / recs[0].trg_image.relative_to(tmp_path)
    img.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (300, 225)).save(img)
    assert pck_threshold(recs[0], THRESHOLD_KIND["pfpascal"]) == 300


def _pascal_root(tmp: Path, src_kps: np.ndarray, trg_kps: np.ndarray, *, csv_kps: bool) -> Path:
    ann = tmp / "PF-dataset-PASCAL" / "Annotations" / "cat"
    ann.mkdir(parents=True)
    scipy.io.savemat(ann / "a.mat", {"kps": src_kps, "bbox": np.array([[1, 2, 50, 60]])})
    scipy.io.savemat(ann / "b.mat", {"kps": trg_kps, "bbox": np.array([[3, 4, 70, 80]])})
    header = ["source_image", "target_image", "class"] + (["XA", "YA", "XB", "YB"] if csv_kps else ["flip"])
    row = ["PF-dataset-PASCAL/JPEGImages/a.jpg", "PF-dataset-PASCAL/JPEGImages/b.jpg", "8"]
    if csv_kps:
        fmt = lambda v: ";".join("nan" if np.isnan(x) else str(x) for x in v)  # noqa: E731
        row += [fmt(src_kps[:, 0]), fmt(src_kps[:, 1]), fmt(trg_kps[:, 0]), fmt(trg_kps[:, 1])]
    else:
        row += ["0"]
    with open(tmp / ("test_pairs.csv" if csv_kps else "trn_pairs.csv"), "w", newline="") as f:
        csv.writer(f).writerows([header, row])
    return tmp


@pytest.mark.parametrize("csv_kps", [True, False])
def test_pfpascal_drops_nan_in_either_image(tmp_path: Path, csv_kps: bool) -> None:
    nan = np.nan
    src = np.array([[1.0, 2.0], [nan, nan], [5.0, 6.0], [7.0, 8.0]])
    trg = np.array([[11.0, 12.0], [13.0, 14.0], [nan, nan], [17.0, 18.0]])
    root = _pascal_root(tmp_path, src, trg, csv_kps=csv_kps)
    (rec,) = load_records("pfpascal", root, "test" if csv_kps else "train")
    np.testing.assert_allclose(rec.src_kps, [[1, 2], [7, 8]])
    np.testing.assert_allclose(rec.trg_kps, [[11, 12], [17, 18]])
    np.testing.assert_allclose(rec.trg_bbox, [3, 4, 70, 80])
    assert rec.category == "cat" and rec.meta["kps_source"] == ("csv" if csv_kps else "mat")


def test_pfpascal_missing_and_malformed_mat(tmp_path: Path) -> None:
    root = _pascal_root(tmp_path, np.ones((3, 2)), np.ones((3, 2)), csv_kps=False)
    mat = root / "PF-dataset-PASCAL" / "Annotations" / "cat" / "b.mat"
    mat.write_bytes(b"not a mat file at all")
    with pytest.raises(SimpleMatchError, match="b.mat"):
        load_records("pfpascal", root, "trn")
    mat.unlink()
    with pytest.raises(SimpleMatchError, match="b.mat"):
        load_records("pfpascal", root, "trn")
    with pytest.raises(SimpleMatchError, match="val_pairs.csv"):
        load_records("pfpascal", root, "val")


@pytest.mark.parametrize("bad", CSV_THE_CSV_MODULE_REFUSES, ids=["carriage return", "huge field"])
def test_pair_lists_the_csv_module_refuses_are_one_line(tmp_path: Path, bad: bytes) -> None:
    root = _pascal_root(tmp_path, np.ones((3, 2)), np.ones((3, 2)), csv_kps=True)
    (root / "test_pairs.csv").write_bytes(bad)
    with pytest.raises(SimpleMatchError, match="test_pairs.csv is not a valid CSV"):
        load_records("pfpascal", root, "test")
    (root / "PF-dataset").mkdir()  # PF-WILLOW reads the same file name
    with pytest.raises(SimpleMatchError, match="test_pairs.csv is not a valid CSV"):
        load_records("pfwillow", root, "test")


def test_pfpascal_refuses_keypoints_outside_a_present_image(tmp_path: Path) -> None:
    src = np.array([[1.0, 2.0], [40.0, 30.0]])
    trg = np.array([[11.0, 12.0], [17.0, 18.0]])
    root = _pascal_root(tmp_path, src, trg, csv_kps=True)
    assert len(load_records("pfpascal", root, "test")) == 1  # no images: read as annotations only
    images = root / "PF-dataset-PASCAL" / "JPEGImages"
    images.mkdir(parents=True)
    Image.new("RGB", (40, 30)).save(images / "a.jpg")  # x = 40, y = 30 on the border: accepted
    Image.new("RGB", (16, 20)).save(images / "b.jpg")  # x = 17 > 16: outside
    with pytest.raises(
        SimpleMatchError, match=r"line 2 \(b.jpg\): keypoint \(17, 18\) lies outside its 16x20"
    ):
        load_records("pfpascal", root, "test")
    Image.new("RGB", (17, 20)).save(images / "b.jpg")
    assert len(load_records("pfpascal", root, "test")) == 1


# --- SPair-71k (real sample files) --------------------------------------------------------------------------
def _spair_root(tmp: Path) -> Path:
    need(SPAIR / "Layout")
    for sub in ("Layout", "PairAnnotation", "ImageAnnotation"):
        shutil.copytree(SPAIR / sub, tmp / sub)
    return tmp


def test_spair_real_samples(tmp_path: Path) -> None:
    root = _spair_root(tmp_path)
    # the shared sample keeps three split lines but only the first pair file: use that line alone
    listing = root / "Layout" / "large" / "test.txt"
    listing.write_text(listing.read_text().splitlines()[0] + "\n")
    (rec,) = load_records("spair", root, "test")
    assert rec.category == "aeroplane" and rec.n_kps == 3
    np.testing.assert_allclose(rec.src_kps[0], [212, 153])
    np.testing.assert_allclose(rec.trg_bbox, [36, 92, 500, 200])
    assert rec.trg_size == (500, 332)
    assert str(rec.src_image).endswith("JPEGImages/aeroplane/2008_002719.jpg")
    assert pck_threshold(rec, THRESHOLD_KIND["spair"]) == 464
    assert pck_threshold(rec, "bbox", "resized", 100) == pytest.approx(464 / 5)


def test_spair_missing_and_malformed_pair_file(tmp_path: Path) -> None:
    root = _spair_root(tmp_path)
    with pytest.raises(SimpleMatchError, match="000002-2008_002719-2008_004630:aeroplane.json"):
        load_records("spair", root, "test")  # second listed pair has no file
    listing = root / "Layout" / "large" / "test.txt"
    name = listing.read_text().splitlines()[0]
    listing.write_text(name + "\n")
    pair = root / "PairAnnotation" / "test" / f"{name}.json"
    data = json.loads(pair.read_text())
    pair.chmod(0o644)
    pair.write_text("{broken")
    with pytest.raises(SimpleMatchError, match="not valid JSON"):
        load_records("spair", root, "test")
    data["trg_kps"] = data["trg_kps"][:2]
    pair.write_text(json.dumps(data))
    with pytest.raises(SimpleMatchError, match=name):
        load_records("spair", root, "test")
    with pytest.raises(SimpleMatchError, match="trn.txt"):
        load_records("spair", root, "train")


# --- AP-10K (generated GeoAware-SC layout) ------------------------------------------------------------------
def _ap10k_root(tmp: Path) -> Path:
    rng = np.random.default_rng(0)
    for name, vis_zero in (("001", [0, 5]), ("002", [1])):
        kps = np.concatenate([rng.uniform(10, 90, size=(17, 2)), np.full((17, 1), 2.0)], axis=1)
        kps[vis_zero] = 0.0
        ann = tmp / "ImageAnnotation" / "canidae" / "dog" / f"{name}.json"
        ann.parent.mkdir(parents=True, exist_ok=True)
        ann.write_text(
            json.dumps(
                {"bbox": [5, 6, 80, 40], "keypoints": kps.ravel().tolist(), "width": 100, "height": 120}
            )
        )
    for folder in ("test", "test_cross_species"):
        pair_dir = tmp / "PairAnnotation" / folder
        pair_dir.mkdir(parents=True)
        pair = {
            "src_json_path": "data/ap-10k/ImageAnnotation/canidae/dog/001.json",
            "trg_json_path": "data/ap-10k/ImageAnnotation/canidae/dog/002.json",
        }
        (pair_dir / "0-001-002:dog.json").write_text(json.dumps(pair))
    return tmp


def test_ap10k_generated_fixture(tmp_path: Path) -> None:
    root = _ap10k_root(tmp_path)
    (rec,) = load_records("ap10k", root, "test")
    assert rec.n_kps == 14 and rec.category == "dog"  # 17 minus {0, 5} unlabelled in src, {1} in trg
    np.testing.assert_allclose(rec.trg_bbox, [5, 6, 85, 46])
    assert rec.trg_size == (100, 120)
    assert str(rec.trg_image).endswith("JPEGImages/canidae/dog/002.jpg")
    assert pck_threshold(rec, THRESHOLD_KIND["ap10k"]) == 80
    assert len(load_records("ap10k", root, "test", ap10k_split="cross-species")) == 1
    with pytest.raises(SimpleMatchError, match="test_cross_family"):
        load_records("ap10k", root, "test", ap10k_split="cross-family")
    (root / "ImageAnnotation" / "canidae" / "dog" / "002.json").write_text('{"bbox": [1, 2, 3, 4]}')
    with pytest.raises(SimpleMatchError, match="002.json"):
        load_records("ap10k", root, "test")


def test_ap10k_refuses_labelled_keypoints_outside_the_stated_size(tmp_path: Path) -> None:
    root = _ap10k_root(tmp_path)
    ann = root / "ImageAnnotation" / "canidae" / "dog" / "002.json"
    data = json.loads(ann.read_text())
    data["keypoints"][1 * 3 : 1 * 3 + 2] = [500.0, 5.0]  # keypoint 1 is unlabelled (v = 0): ignored
    ann.write_text(json.dumps(data))
    assert load_records("ap10k", root, "test")[0].n_kps == 14
    data["keypoints"][2 * 3 + 1] = 121.0  # a labelled y beyond the 120 px height
    ann.write_text(json.dumps(data))
    with pytest.raises(
        SimpleMatchError, match=r"002.json: keypoint \(.*, 121\) lies outside its 100x120 image"
    ):
        load_records("ap10k", root, "test")


# --- synthetic ----------------------------------------------------------------------------------------------
def test_synthetic_deterministic_and_heldout() -> None:
    a, b = make_synthetic_pair("trn", 3, seed=7), make_synthetic_pair("trn", 3, seed=7)
    np.testing.assert_array_equal(a.src_kps, b.src_kps)
    np.testing.assert_array_equal(a.load("trg"), b.load("trg"))
    assert not np.array_equal(a.src_kps, make_synthetic_pair("trn", 3, seed=8).src_kps)
    assert set(TRAIN_PHOTOS).isdisjoint(HELDOUT_PHOTOS)
    assert {r.category for r in load_records("synthetic", None, "val", n_pairs=6)} <= set(HELDOUT_PHOTOS)
    assert {r.category for r in load_records("synthetic", None, "trn", n_pairs=6)} <= set(TRAIN_PHOTOS)


def test_synthetic_exact_correspondence() -> None:
    rec = make_synthetic_pair("val", 1, seed=0)
    spec = rec.meta["spec"]
    assert 4 <= rec.n_kps <= 30
    np.testing.assert_allclose(spec.inverse_map(rec.trg_kps), rec.src_kps, atol=1e-5)
    src, trg = rec.load("src"), rec.load("trg")
    assert src.shape[:2][::-1] == rec.src_size and trg.shape[:2][::-1] == rec.trg_size
    assert all(160 <= s <= 256 for s in rec.src_size + rec.trg_size)
    tw, th = rec.trg_size
    assert ((rec.trg_kps >= 0) & (rec.trg_kps <= [tw - 1, th - 1])).all()
    # the pixels follow the same map: warp a coordinate ramp and read it back at (integer) target pixels
    sw, sh = rec.src_size
    ramp = np.stack(np.meshgrid(np.arange(sw, dtype=float), np.arange(sh, dtype=float)), axis=2)
    warped = spec.warp(ramp)
    pix = np.round(rec.trg_kps).astype(int)
    pix = pix[(pix[:, 0] <= tw - 1) & (pix[:, 1] <= th - 1)]
    np.testing.assert_allclose(warped[pix[:, 1], pix[:, 0]], spec.inverse_map(pix), atol=1e-6)


# --- PairDataset / augmentation / collate -------------------------------------------------------------------
torch = pytest.importorskip("torch")


def _records_with_known_map() -> list[PairRecord]:
    """Target = source exactly, identity correspondences on a textured image: any mismatch is visible."""
    rng = np.random.default_rng(0)
    img = (rng.uniform(0, 255, size=(120, 160, 3))).astype(np.uint8)
    kps = np.stack([np.linspace(5, 150, 12), np.linspace(5, 110, 12)], axis=1)
    return [
        PairRecord(
            img,
            img.copy(),
            kps,
            kps.copy(),
            "bottle",
            f"p{i}",
            [0, 0, 159, 119],
            [0, 0, 159, 119],
            dataset="synthetic",
        )  # fmt: skip
        for i in range(6)
    ]


def test_pairdataset_eval_item() -> None:
    from simplematch.data.dataset import PairDataset

    rec = make_synthetic_pair("val", 0)
    item = PairDataset([rec], 64, augment=False)[0]
    assert item["src_img"].shape == (3, 64, 64) and item["src_img"].dtype == torch.float32
    assert float(item["src_img"].max()) <= 1.0 and bool(item["valid"].all())
    w, h = rec.trg_size
    np.testing.assert_allclose(item["trg_kps"].numpy(), rec.trg_kps * [64 / w, 64 / h], rtol=1e-5)
    assert item["threshold"] == 64 and item["threshold_original"] == max(w, h)
    assert tuple(item["trg_size"].tolist()) == (w, h)
    np.testing.assert_allclose(item["trg_kps_original"].numpy(), rec.trg_kps, rtol=1e-6)
    assert item["category"] == rec.category and item["pair_id"] == rec.pair_id


def test_augmentation_keeps_correspondence_and_is_deterministic() -> None:
    from simplematch.data.dataset import PairDataset

    recs = _records_with_known_map()
    ds = PairDataset(recs, 96, augment=True, seed=3)
    items = [ds[i] for i in range(len(recs))]
    again = ds[2]
    assert torch.equal(again["src_img"], items[2]["src_img"]) and torch.equal(
        again["valid"], items[2]["valid"]
    )
    ds.set_epoch(1)
    assert any(not torch.equal(ds[i]["src_kps"], items[i]["src_kps"]) for i in range(len(recs)))
    saw_invalid = False
    for item in items:
        valid = item["valid"]
        assert valid.shape == (12,) and item["src_kps"].shape == (12, 2)  # nothing dropped, indices aligned
        saw_invalid |= bool((~valid).any())
        assert ((item["src_kps"][valid] >= 0) & (item["src_kps"][valid] <= 96)).all()
        assert (item["src_kps"][~valid] == 0).all()
        # geometry stays consistent: pairwise distances of valid points agree up to crop scale/rotation
        # (the exact pixel check is test_augmented_pixels_follow_keypoints)
        if valid.sum() >= 3:
            s, t = item["src_kps"][valid].double(), item["trg_kps"][valid].double()
            ds_, dt = torch.cdist(s, s), torch.cdist(t, t)
            assert torch.corrcoef(torch.stack([ds_.flatten(), dt.flatten()]))[0, 1] > 0.9
    del saw_invalid  # invalid marking is asserted in test_augmentation_marks_points_leaving_image_invalid


def test_augmentation_keeps_every_keypoint() -> None:
    """Released recipe: crop-clipped keypoints are kept (clipped to [0, S-1]) and rotation uses an enlarged
    canvas, so no keypoint ever becomes invalid, even under +-180 deg (bottles) of a wide image."""
    from simplematch.data.dataset import PairDataset

    recs = _records_with_known_map()
    ds = PairDataset(recs * 5, 64, augment=True, seed=0)
    for i in range(len(ds)):
        item = ds[i]
        assert bool(item["valid"].all())
        for key in ("src_kps", "trg_kps"):
            assert ((item[key] >= 0) & (item[key] <= 63)).all()


def test_collate_pads_with_invalid() -> None:
    from simplematch.data.dataset import PairDataset, collate_pairs

    recs = [make_synthetic_pair("val", i) for i in range(3)]
    batch = collate_pairs([PairDataset(recs, 32)[i] for i in range(3)])
    n = [r.n_kps for r in recs]
    assert batch["src_kps"].shape == (3, max(n), 2) and batch["valid"].shape == (3, max(n))
    assert batch["valid"].sum(1).tolist() == n and batch["n_kps"].tolist() == n
    for i, k in enumerate(n):
        assert (batch["trg_kps"][i, k:] == 0).all()
    assert batch["src_img"].shape == (3, 3, 32, 32) and batch["threshold"].shape == (3,)
    assert batch["trg_size"].shape == (3, 2) and len(batch["pair_id"]) == 3


# --- stats --------------------------------------------------------------------------------------------------
def test_keypoint_fusion_stats_counts_each_image_once() -> None:
    img = np.zeros((256, 256, 3), np.uint8)
    kps_a = np.array([[1.0, 1.0], [10.0, 10.0], [40.0, 40.0], [200.0, 200.0]])  # 1&10 share a 16-cell
    kps_b = np.array([[100.0, 100.0], [101.0, 101.0]])
    shared = Path("/nonexistent/a.jpg")
    recs = [
        PairRecord(shared, img, kps_a, kps_a, "x", "p0", src_size=(256, 256), trg_size=(256, 256)),
        PairRecord(shared, img, kps_a[:2], kps_a[:2], "x", "p1", src_size=(256, 256), trg_size=(256, 256)),
        PairRecord(img, img, kps_b, kps_b, "x", "p2", src_size=(256, 256), trg_size=(256, 256)),
    ]
    stats = keypoint_fusion_stats(recs, img_size=256, map_sizes=(16, 32, 64))
    # images: shared (4 kps), p0 trg (4), p1 trg (2: both in one 16/32-cell), p2 src (2), p2 trg (2)
    assert stats["total"] == 14
    assert stats[16] == 2 + 2 + 2 + 2 + 2
    assert stats[64] == 2 + 2  # only the (100,100)/(101,101) pairs share a 4-px cell


def test_missing_data_root_errors() -> None:
    with pytest.raises(SimpleMatchError, match="data root"):
        load_records("spair", "/nonexistent/spair", "test")
    with pytest.raises(SimpleMatchError, match="unknown dataset"):
        load_records("kitti", None, "test")
    with pytest.raises(SimpleMatchError, match="needs a data root"):
        load_records("coco", None, "test")


def test_augmented_pixels_follow_keypoints() -> None:
    """Colour-ramp images encode original (x, y): after crop/rotate/resize, the pixel under every VALID
    keypoint must still read back that keypoint's original position, in source and target alike."""
    import albumentations as A

    from simplematch.data.dataset import PairDataset, _build_pipelines

    side = 200
    xs, ys = np.meshgrid(np.arange(side), np.arange(side))
    ramp = np.stack([xs * 255 / (side - 1), ys * 255 / (side - 1), np.full_like(xs, 128)], axis=2)
    img = np.round(ramp).astype(np.uint8)
    kps = np.random.default_rng(1).uniform(20, 180, size=(15, 2))
    recs = [
        PairRecord(img, img.copy(), kps, kps.copy(), "bottle", f"r{i}", dataset=d)
        for i, d in enumerate(["spair", "pfpascal"] * 4)
    ]
    ds = PairDataset(recs, side, augment=True, seed=5, threshold_kind="img")
    ds._pipes = _build_pipelines()
    ds._pipes["photometric"] = A.Compose([])  # geometry only: colours must stay readable
    checked = 0
    for i in range(len(recs)):
        item = ds[i]
        valid = item["valid"].numpy()
        for key_img, key_kps in (("src_img", "src_kps"), ("trg_img", "trg_kps")):
            im = item[key_img].numpy()
            pts = item[key_kps].numpy()[valid]
            inner = (pts > 3).all(1) & (pts < side - 4).all(1)  # away from the zero-filled border
            px = np.round(pts).astype(int).clip(0, side - 1)
            # a point on a crop edge lands on the rotated image's edge, blended with the black fill: the
            # constant third channel (128) tells which points read pure image pixels
            inner &= np.abs(im[2, px[:, 1], px[:, 0]] * 255 - 128) < 3
            px = px[inner]
            decoded = im[:2, px[:, 1], px[:, 0]].T * (side - 1)
            np.testing.assert_allclose(decoded, kps[valid][inner], atol=4.0)
            checked += int(inner.sum())
    assert checked > 50
