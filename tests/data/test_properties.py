"""Property-based: arbitrary bytes/text/JSON into every keypoint and annotation parser either yields
valid arrays or raises SimpleMatchError, never another exception."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simplematch.data.ap10k import parse_ap10k_pair
from simplematch.data.matfile import read_mat
from simplematch.data.pfpascal import parse_pfpascal_csv, read_pascal_mat
from simplematch.data.pfwillow import read_pfwillow, read_willow_mat
from simplematch.data.spair import parse_spair_pair, read_spair
from simplematch.errors import SimpleMatchError
from simplematch.keypoints import parse_keypoints_json

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

numbers = st.one_of(
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
)
json_values = st.recursive(
    st.one_of(numbers, st.text(max_size=5)),
    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=8), kids, max_size=5),
    max_leaves=20,
)
point_lists = st.lists(st.lists(numbers, min_size=0, max_size=3), max_size=6)


def _valid_points(arr: np.ndarray) -> None:
    assert arr.ndim == 2 and arr.shape[1] == 2 and arr.dtype == np.float64 and np.isfinite(arr).all()


# --- parse_keypoints_json -----------------------------------------------------------------------------------
@SETTINGS
@given(st.one_of(json_values, point_lists, st.dictionaries(st.just("keypoints"), point_lists)))
def test_parse_keypoints_objects(obj: object) -> None:
    for candidate in (obj, json.dumps(obj, allow_nan=True) if _dumpable(obj) else "["):
        try:
            arr = parse_keypoints_json(candidate)
        except SimpleMatchError:
            continue
        _valid_points(arr)
        assert len(arr) > 0


def _dumpable(obj: object) -> bool:
    try:
        json.dumps(obj, allow_nan=True)
        return True
    except (ValueError, TypeError):
        return False


@SETTINGS
@given(st.one_of(st.binary(max_size=64), st.text(max_size=64)))
def test_parse_keypoints_bytes_and_text(raw: bytes | str) -> None:
    try:
        _valid_points(parse_keypoints_json(raw))
    except SimpleMatchError:
        pass


@SETTINGS
@given(
    st.lists(st.tuples(st.floats(-50, 150), st.floats(-50, 150)), min_size=1, max_size=8),
    st.tuples(st.integers(1, 120), st.integers(1, 120)),
)
def test_parse_keypoints_image_bounds(points: list[tuple[float, float]], size: tuple[int, int]) -> None:
    w, h = size
    inside = all(0 <= x <= w - 1 and 0 <= y <= h - 1 for x, y in points)
    try:
        arr = parse_keypoints_json(json.dumps({"keypoints": [list(p) for p in points]}), image_size=size)
    except SimpleMatchError:
        assert not inside
        return
    assert inside
    np.testing.assert_allclose(arr, np.asarray(points))


def test_parse_keypoints_examples() -> None:
    np.testing.assert_allclose(parse_keypoints_json("[[1, 2], [3.5, 4]]"), [[1, 2], [3.5, 4]])
    for bad in (
        "[]",
        "[[1, 2, 3]]",
        "[[true, 1]]",
        '[[1, "2"]]',
        "[[NaN, 1]]",
        "[[1e999, 1]]",
        '{"kps": []}',
    ):
        with pytest.raises(SimpleMatchError):
            parse_keypoints_json(bad)


# --- annotation readers -------------------------------------------------------------------------------------
def _spair_like() -> st.SearchStrategy:
    return st.fixed_dictionaries(
        {},
        optional={
            "src_imname": st.one_of(st.text(max_size=6), numbers),
            "trg_imname": st.one_of(st.text(max_size=6), numbers),
            "category": st.one_of(st.text(max_size=6), numbers),
            "src_kps": st.one_of(point_lists, json_values),
            "trg_kps": st.one_of(point_lists, json_values),
            "src_bndbox": st.one_of(st.lists(numbers, max_size=5), json_values),
            "trg_bndbox": st.one_of(st.lists(numbers, max_size=5), json_values),
            "src_imsize": st.one_of(st.lists(numbers, max_size=4), json_values),
            "trg_imsize": st.one_of(st.lists(numbers, max_size=4), json_values),
        },
    )


@SETTINGS
@given(st.one_of(_spair_like(), json_values))
def test_spair_pair_parser(data: object) -> None:
    try:
        rec = parse_spair_pair(data, Path("x.json"), Path("/root"))
    except SimpleMatchError:
        return
    _valid_points(rec.src_kps)
    _valid_points(rec.trg_kps)
    assert len(rec.src_kps) == len(rec.trg_kps)


@SETTINGS
@given(st.binary(max_size=200))
def test_spair_reader_bytes(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "Layout" / "large").mkdir(parents=True)
        (root / "PairAnnotation" / "test").mkdir(parents=True)
        (root / "Layout" / "large" / "test.txt").write_text("p1\n")
        (root / "PairAnnotation" / "test" / "p1.json").write_bytes(raw)
        with pytest.raises(SimpleMatchError):  # random bytes never form a complete pair annotation
            read_spair(root, "test")


@SETTINGS
@given(st.one_of(st.text(max_size=300), st.lists(st.lists(st.text(max_size=12), max_size=8), max_size=4)))
# structured case: a valid header with fuzzed rows
def test_pfpascal_csv_parser(text: str | list[list[str]]) -> None:
    if isinstance(text, list):  # structured: a valid header with fuzzed rows
        text = "source_image,target_image,class,XA,YA,XB,YB\n" + "\n".join(",".join(r) for r in text)
    try:
        recs = parse_pfpascal_csv(text, Path("test_pairs.csv"), Path("/nonexistent-root"))
    except SimpleMatchError:
        return
    for rec in recs:
        _valid_points(rec.src_kps)
        assert len(rec.src_kps) == len(rec.trg_kps)


@SETTINGS
@given(st.binary(max_size=300))
def test_mat_readers_bytes(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "a.mat"
        path.write_bytes(raw)
        for reader in (read_willow_mat, read_pascal_mat):
            try:
                reader(path)
            except SimpleMatchError:
                pass


@SETTINGS
@given(
    st.dictionaries(
        st.sampled_from(["kps", "bbox", "pts_coord", "other"]),
        st.one_of(
            st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=8),
            st.lists(st.lists(st.floats(allow_nan=True), min_size=2, max_size=2), max_size=5),
            st.text(max_size=4),
        ),
        max_size=3,
    )
)
def test_mat_readers_fuzzed_variables(variables: dict) -> None:
    import scipy.io

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "a.mat"
        scipy.io.savemat(path, {k: np.asarray(v) for k, v in variables.items()})
        try:
            kps = read_willow_mat(path)
            assert kps.ndim == 2 and kps.shape[1] == 2
        except SimpleMatchError:
            pass
        try:
            kps, box = read_pascal_mat(path)
            assert kps.ndim == 2 and kps.shape[1] == 2 and not np.isinf(kps).any()
            assert box is None or (box.shape == (4,) and np.isfinite(box).all())
        except SimpleMatchError:
            pass
        assert isinstance(read_mat(path, "fix"), dict)


@SETTINGS
@given(st.binary(max_size=100))
def test_pfwillow_reader_bytes(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "PF-dataset" / "duck(S)").mkdir(parents=True)
        (root / "PF-dataset" / "duck(S)" / "a.mat").write_bytes(raw)
        with pytest.raises(SimpleMatchError):
            read_pfwillow(root)
        (root / "test_pairs.csv").write_bytes(raw)
        try:
            for rec in read_pfwillow(root):
                _valid_points(rec.src_kps)
        except SimpleMatchError:
            pass


def _ap10k_image() -> st.SearchStrategy:
    return st.fixed_dictionaries(
        {},
        optional={
            "bbox": st.one_of(st.lists(numbers, min_size=4, max_size=4), json_values),
            "keypoints": st.one_of(st.lists(numbers, min_size=51, max_size=51), json_values),
            "width": numbers,
            "height": numbers,
        },
    )


@SETTINGS
@given(st.one_of(json_values, _ap10k_image()), st.one_of(json_values, _ap10k_image()), json_values)
def test_ap10k_parser(src_img: object, trg_img: object, pair_extra: object) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ann = root / "ImageAnnotation" / "f" / "s"
        ann.mkdir(parents=True)
        for name, obj in (("a", src_img), ("b", trg_img)):
            text = json.dumps(obj, allow_nan=True) if _dumpable(obj) else "{"
            (ann / f"{name}.json").write_text(text)
        pairs = [
            {"src_json_path": "x/ImageAnnotation/f/s/a.json", "trg_json_path": "ImageAnnotation/f/s/b.json"},
            pair_extra,
        ]
        for pair in pairs:
            try:
                rec = parse_ap10k_pair(pair, root / "p.json", root)
            except SimpleMatchError:
                continue
            _valid_points(rec.src_kps)
            assert len(rec.src_kps) == len(rec.trg_kps) and rec.trg_bbox is not None
