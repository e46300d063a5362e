"""The runtime's numpy matching (simplematch.runtime.matching) against the torch matching, exactly."""

from __future__ import annotations

import numpy as np
import pytest

from simplematch.runtime import matching as npm


# ----------------------------------------------------------------------------------------------------------
# numpy matching == torch matching
# ----------------------------------------------------------------------------------------------------------
def _random_case(seed: int, b: int = 2, n: int = 17, c: int = 16, h: int = 13, img_size: int = 50):
    rng = np.random.default_rng(seed)
    src = rng.standard_normal((b, c, h, h)).astype(np.float32)
    trg = rng.standard_normal((b, c, h, h)).astype(np.float32)
    kps = rng.uniform(0, img_size, (b, n, 2)).astype(np.float32)
    stride = img_size / h
    # Borders and exact cell edges: 0, the last pixel, the image edge itself (clamped) and multiples of s.
    kps[:, :6] = np.array(
        [
            [0, 0],
            [img_size - 1e-3, img_size - 1e-3],
            [img_size, 0],
            [stride, 2 * stride],
            [5 * stride, 0],
            [0, 12 * stride],
        ],
        dtype=np.float32,
    )
    return src, trg, kps


@pytest.mark.parametrize("coord", ["corner", "center"])
@pytest.mark.parametrize("window", [0, 1, 2, 3, 4, 5, 8, 12, 13, 40])
def test_match_keypoints_matches_torch(window: int, coord: str) -> None:
    torch = pytest.importorskip("torch")
    from simplematch import matching as tm

    for seed in range(3):
        src, trg, kps = _random_case(seed * 100 + window)
        for beta in (0.02, 0.1):
            t = tm.match_keypoints(
                torch.from_numpy(src), torch.from_numpy(trg), torch.from_numpy(kps), 50, window, beta, coord
            )
            got = npm.match_keypoints(src, trg, kps, 50, window, beta, coord)
            assert type(got) is npm.Matches and type(t) is tm.Matches and t._fields == got._fields
            np.testing.assert_allclose(got.pred, t.pred.double().numpy(), rtol=0, atol=1e-3)
            np.testing.assert_allclose(got.peak_cos, t.peak_cos.double().numpy(), rtol=0, atol=1e-5)
            np.testing.assert_allclose(got.peak_mass, t.peak_mass.double().numpy(), rtol=0, atol=1e-5)
            np.testing.assert_allclose(got.second_cos, t.second_cos.double().numpy(), rtol=0, atol=1e-5)
            np.testing.assert_allclose(got.cycle_px, t.cycle_px.double().numpy(), rtol=0, atol=2e-3)
            # Single pair (C, h, w) / (N, 2) gives the same as the batch's first element, every field.
            single = npm.match_keypoints(src[0], trg[0], kps[0], 50, window, beta, coord)
            for a, b in zip(single, got, strict=True):
                np.testing.assert_allclose(a, b[0], rtol=0, atol=1e-9)


def test_cells_and_window_indices_agree_exactly() -> None:
    torch = pytest.importorskip("torch")
    from simplematch import matching as tm

    src, trg, kps = _random_case(7, n=64)
    stride = 50 / 13
    np.testing.assert_array_equal(
        npm.keypoint_cells(kps, stride, (13, 13)),
        tm.keypoint_cells(torch.from_numpy(kps), stride, (13, 13)).numpy(),
    )
    feats = npm.sample_keypoint_features(src, kps, stride)
    np.testing.assert_array_equal(
        feats, tm.sample_keypoint_features(torch.from_numpy(src), torch.from_numpy(kps), stride).numpy()
    )
    sim = npm.cosine_similarity(feats, trg)
    t_sim = tm.cosine_similarity(torch.from_numpy(feats), torch.from_numpy(trg)).numpy()
    np.testing.assert_allclose(sim, t_sim, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(sim.argmax(-1), t_sim.argmax(-1))
    # Non-square map and windows on both sides of each axis length: same cells, positions within 1e-3.
    rng = np.random.default_rng(3)
    sim4 = rng.standard_normal((2, 9, 7, 11)).astype(np.float32)
    for window in (0, 3, 6, 7, 8, 11, 12):
        pos, mass = npm.window_soft_argmax(sim4, window, 0.05)
        t_pos, t_mass = tm.window_soft_argmax(torch.from_numpy(sim4), window, 0.05)
        np.testing.assert_allclose(pos, t_pos.double().numpy(), rtol=0, atol=1e-4)
        np.testing.assert_allclose(mass, t_mass.double().numpy(), rtol=0, atol=1e-5)
        np.testing.assert_array_equal(np.floor(pos + 1e-9) >= 0, True)


def test_window_stays_inside_map_and_peak_is_exact() -> None:
    # A single spike: the soft-argmax is the spike's cell, wherever the clamped window lands.
    for cell in [(0, 0), (7, 7), (0, 7), (3, 4)]:
        sim = np.full((1, 1, 8, 8), -1.0, np.float32)
        sim[0, 0, cell[1], cell[0]] = 1.0
        for window in (0, 1, 3, 4, 5, 8, 9):
            pos, mass = npm.window_soft_argmax(sim, window, 0.02)
            np.testing.assert_allclose(pos[0, 0], cell, atol=1e-6)
            assert mass[0, 0] == pytest.approx(1.0, abs=1e-6)
    assert list(npm.window_starts(np.array([0, 1, 4, 7]), 5, 8)) == [0, 0, 2, 3]
    np.testing.assert_allclose(npm.cells_to_pixels(np.array([1.0, 2.0]), 4.0, "center"), [6.0, 10.0])
    with pytest.raises(ValueError):
        npm.cells_to_pixels(np.zeros(2), 4.0, "middle")
