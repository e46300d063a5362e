"""The Matcher API (simplematch.runtime.matcher): encode once, match many; keypoint scaling.

ONNX models are the tiny graphs of tests/helpers.py (make_onnx).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simplematch.errors import SimpleMatchError
from simplematch.image import to_image_frame, to_model_frame
from simplematch.runtime import Matcher
from tests.helpers import S, write_image


# ----------------------------------------------------------------------------------------------------------
# Matcher
# ----------------------------------------------------------------------------------------------------------
def test_encode_once_match_many_equals_match_images(models: dict[str, Path]) -> None:
    rng = np.random.default_rng(1)
    src = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    trg = rng.integers(0, 256, (50, 30, 3), dtype=np.uint8)
    kps = rng.uniform(0, 1, (12, 2)) * [59, 39]
    m = Matcher(models["conv"], batch_size=1)
    once = m.match_images(src, trg, kps)
    assert set(once.timing_ms) == {"preprocess", "encode", "match"}
    fsrc, ftrg = m.encode([m.prepare(src), trg])
    parts = [m.match(fsrc, ftrg, kps[:5]), m.match(fsrc, ftrg, kps[5:])]
    np.testing.assert_allclose(np.concatenate([p.target_kps for p in parts]), once.target_kps, atol=1e-9)
    np.testing.assert_allclose(np.concatenate([p.score for p in parts]), once.score, atol=1e-9)
    assert once.target_kps.shape == (12, 2) and once.peak_mass.shape == (12,)
    assert m.match(fsrc, ftrg, np.zeros((0, 2))).target_kps.shape == (0, 2)
    with pytest.raises(SimpleMatchError, match=r"\(N, 2\)"):
        m.match(fsrc, ftrg, np.array([[1.0, np.nan]]))


@pytest.mark.parametrize("model", ["position", "position_center"])
def test_keypoint_scaling_round_trip(models: dict[str, Path], model: str) -> None:
    """The position model maps every cell to itself: a kp comes back at its own relative position."""
    m = Matcher(models[model])
    src_hw, trg_hw = (48, 64), (90, 120)  # different sizes and aspect ratios
    src = np.zeros((*src_hw, 3), np.uint8)
    trg = np.zeros((*trg_hw, 3), np.uint8)
    rng = np.random.default_rng(0)
    kps = rng.uniform(0, 1, (20, 2)) * [src_hw[1] - 1, src_hw[0] - 1]
    res = m.match_images(src, trg, kps)
    stride = m.meta.stride
    cells = np.floor(to_model_frame(kps, src_hw, S) / stride)
    offset = 0.5 if m.meta.coord == "center" else 0.0
    expected = to_image_frame((cells + offset) * stride, trg_hw, S)
    np.testing.assert_allclose(res.target_kps, expected, atol=1e-3)
    np.testing.assert_allclose(res.target_kps_model, (cells + offset) * stride, atol=1e-3)
    # ... which is the kp itself in relative terms, up to one cell of quantisation.
    rel_err = np.abs(res.target_kps / [trg_hw[1], trg_hw[0]] - kps / [src_hw[1], src_hw[0]])
    assert (rel_err <= stride / S + 1e-9).all()
    np.testing.assert_allclose(res.score, 1.0, atol=1e-5)


def test_matcher_refuses_keypoints_the_cli_refuses(models: dict[str, Path], tmp_path: Path) -> None:
    """The border rule of `smatch infer --kps` (0 <= x <= w-1, 0 <= y <= h-1 in source pixels), same text."""
    from simplematch.keypoints import parse_keypoints_json

    m = Matcher(models["conv"])
    src = np.zeros((30, 40, 3), np.uint8)  # w = 40, h = 30
    fsrc, ftrg = m.encode([src, np.zeros((50, 20, 3), np.uint8)])
    ok = [[0.0, 0.0], [39.0, 29.0]]  # both corners are inside
    assert m.match(fsrc, ftrg, ok).target_kps.shape == (2, 2)
    assert m.match_images(src, src, ok).target_kps.shape == (2, 2)
    for bad in ([[-0.5, 3.0]], [[39.01, 3.0]], [[3.0, 29.5]], [[3.0, -1.0]]):
        with pytest.raises(SimpleMatchError) as cli:
            parse_keypoints_json(bad, image_size=(40, 30))
        for call in (lambda b=bad: m.match(fsrc, ftrg, b), lambda b=bad: m.match_images(src, src, b)):
            with pytest.raises(SimpleMatchError) as api:
                call()
            assert str(api.value) == str(cli.value) and "outside the 40x30 image" in str(api.value)
    # The target image's size does not enter the source rule: 39 is inside a 40-wide source only.
    with pytest.raises(SimpleMatchError, match="outside the 20x50 image"):
        m.match(ftrg, fsrc, [[39.0, 3.0]])


def test_matcher_encode_refuses_one_image_and_folders(models: dict[str, Path], tmp_path: Path) -> None:
    m = Matcher(models["conv"])
    img = write_image(tmp_path / "a.png", 40, 30)
    for single in (str(img), img, np.zeros((30, 40, 3), np.uint8), Image.open(img)):
        with pytest.raises(SimpleMatchError, match=r"list of images.*encode\(\[image\]\)"):
            m.encode(single)
    assert len(m.encode([str(img)])) == 1
    folder = tmp_path / "photos.png"
    folder.mkdir()
    for call in (
        lambda: m.encode([folder]),
        lambda: m.prepare(str(folder)),
        lambda: m.match_images(folder, img, []),
    ):
        with pytest.raises(SimpleMatchError, match="is a folder, not an image file"):
            call()


def test_matcher_warns_once_on_normalised_looking_keypoints(models: dict[str, Path]) -> None:
    import warnings

    m = Matcher(models["conv"])
    big, tiny = np.zeros((30, 40, 3), np.uint8), np.zeros((2, 2, 3), np.uint8)
    fbig, ftiny = m.encode([big, tiny])
    with pytest.warns(UserWarning, match="look normalised") as caught:
        m.match(fbig, fbig, [[0.1, 0.2], [0.9, 1.0], [0.0, 0.5]])
    assert len(caught) == 1
    with pytest.warns(UserWarning, match="look normalised") as caught:
        m.match_images(big, big, [[0.5, 0.5]])
    assert len(caught) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails
        m.match(fbig, fbig, [[0.1, 0.2], [1.5, 0.5]])  # one point beyond 1: pixels
        m.match(ftiny, ftiny, [[0.0, 1.0], [1.0, 0.0]])  # a 2x2 image: [0, 1] is all there is
        m.match(fbig, fbig, np.zeros((0, 2)))
