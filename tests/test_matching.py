"""Matching functions against naive loop implementations (explicit tolerances)."""

from __future__ import annotations

import math

import pytest
import torch

from simplematch import matching as M


def naive_window_soft_argmax(sim: torch.Tensor, k: int, beta: float) -> torch.Tensor:
    """Loop reference written straight from eq. 10-12 with the released border rule."""
    b, n, h, w = sim.shape
    out = torch.zeros(b, n, 2, dtype=torch.float64)
    for bi in range(b):
        for ni in range(n):
            s = sim[bi, ni].double()
            idx = int(torch.argmax(s.flatten()))
            cy, cx = divmod(idx, w)
            ky = h if k <= 0 or k >= h else k
            kx = w if k <= 0 or k >= w else k
            y0 = min(max(cy - ky // 2, 0), h - ky)
            x0 = min(max(cx - kx // 2, 0), w - kx)
            win = s[y0 : y0 + ky, x0 : x0 + kx]
            weights = [[math.exp(float(win[i, j]) / beta) for j in range(kx)] for i in range(ky)]
            total = sum(sum(r) for r in weights)
            ex = sum(weights[i][j] * j for i in range(ky) for j in range(kx)) / total
            ey = sum(weights[i][j] * i for i in range(ky) for j in range(kx)) / total
            out[bi, ni] = torch.tensor([x0 + ex, y0 + ey])
    return out


def test_sample_keypoint_features_nearest_cell() -> None:
    torch.manual_seed(0)
    feats = torch.randn(2, 5, 6, 7)
    kps = torch.tensor([[[0.0, 0.0], [27.9, 23.9], [4.0, 8.1]], [[100.0, -3.0], [12.5, 3.99], [3.99, 4.0]]])
    out = M.sample_keypoint_features(feats, kps, stride=4.0)
    assert out.shape == (2, 3, 5)
    for b in range(2):
        for n in range(3):
            x = min(max(int(math.floor(kps[b, n, 0] / 4)), 0), 6)
            y = min(max(int(math.floor(kps[b, n, 1] / 4)), 0), 5)
            assert torch.equal(out[b, n], feats[b, :, y, x])


def test_cosine_similarity_matches_loop() -> None:
    torch.manual_seed(1)
    src = torch.randn(2, 4, 8)
    trg = torch.randn(2, 8, 3, 5)
    sim = M.cosine_similarity(src, trg)
    assert sim.shape == (2, 4, 15)
    for b in range(2):
        for n in range(4):
            for j in range(15):
                v = trg[b, :, j // 5, j % 5]
                ref = float(src[b, n] @ v / (src[b, n].norm() * v.norm()))
                assert abs(float(sim[b, n, j]) - ref) < 1e-5


@pytest.mark.parametrize("k", [1, 4, 5, 9, 12, 13, 100, 0])
@pytest.mark.parametrize("beta", [0.02, 0.5])
def test_window_soft_argmax_matches_naive(k: int, beta: float) -> None:
    torch.manual_seed(k)
    sim = torch.rand(2, 6, 12, 13) * 2 - 1
    # Plant peaks at all four borders and corners so the window has to shift inside the map.
    sim[0, 0, 0, 0] = 2
    sim[0, 1, 11, 12] = 2
    sim[0, 2, 0, 6] = 2
    sim[0, 3, 6, 12] = 2
    sim[1, 0, 11, 0] = 2
    sim[1, 1, 5, 0] = 2
    got = M.window_soft_argmax(sim, k, beta).pos
    ref = naive_window_soft_argmax(sim, k, beta)
    assert torch.allclose(got.double(), ref, atol=1e-4), (got - ref).abs().max()


def test_window_whole_map_when_k_at_least_side() -> None:
    sim = torch.rand(1, 3, 8, 8)
    whole = M.window_soft_argmax(sim, 0, 0.1)
    for k in (8, 50):
        got = M.window_soft_argmax(sim, k, 0.1)
        assert torch.allclose(got.pos, whole.pos) and torch.allclose(got.mass, whole.mass)


def test_window_start_shifted_inside() -> None:
    c = torch.tensor([0, 3, 30, 62])
    assert M.window_starts(c, 45, 63).tolist() == [0, 0, 8, 18]
    assert M.window_starts(c, 4, 63).tolist() == [0, 1, 28, 59]


def test_planted_peak_recovered_sub_pixel() -> None:
    """A Gaussian bump at a sub-cell location is recovered within 0.01 px (symmetric window, small beta)."""
    h = w = 40
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    targets = [(17.3, 22.6), (20.0, 20.0), (9.75, 30.25)]
    sims = []
    for tx, ty in targets:
        # log-quadratic similarity: softmax(sim / beta) is then an exact Gaussian centred on (tx, ty)
        sims.append(-((xs - tx) ** 2 + (ys - ty) ** 2) * 0.02 / 8.0)
    sim = torch.stack(sims)[None]
    pos = M.window_soft_argmax(sim, 21, beta=0.02).pos
    pix = M.cells_to_pixels(pos, stride=4.0)
    for i, (tx, ty) in enumerate(targets):
        assert abs(float(pix[0, i, 0]) - tx * 4) < 0.01
        assert abs(float(pix[0, i, 1]) - ty * 4) < 0.01


def test_cells_to_pixels_conventions() -> None:
    c = torch.tensor([[[2.0, 3.0]]])
    assert M.cells_to_pixels(c, 4.0, "corner").tolist() == [[[8.0, 12.0]]]
    assert M.cells_to_pixels(c, 4.0, "center").tolist() == [[[10.0, 14.0]]]
    with pytest.raises(ValueError):
        M.cells_to_pixels(c, 4.0, "middle")


def test_geometry_is_written_once_for_both_array_libraries() -> None:
    """torch and numpy matching use the same helpers; the model's fine map is at 1 / FEATURE_STRIDE."""
    import numpy as np

    from simplematch import geometry
    from simplematch.model import SimpleMatch
    from simplematch.runtime import matching as npm

    assert M.cells_to_pixels is npm.cells_to_pixels is geometry.cells_to_pixels
    assert M.window_size is npm.window_size is geometry.window_size
    cells = np.array([[0.0, 1.5], [7.25, 3.0]])
    for coord in ("corner", "center"):
        np.testing.assert_array_equal(
            geometry.cells_to_pixels(torch.from_numpy(cells), 4.0, coord).numpy(),
            geometry.cells_to_pixels(cells, 4.0, coord),
        )
    assert geometry.window_size(0, 9, 7) == (9, 7) and geometry.window_size(5, 9, 7) == (5, 5)
    assert geometry.window_size(8, 9, 7) == (8, 7)  # >= the side: that whole axis
    assert geometry.FEATURE_STRIDE == 4  # paper Fig. 3: the fine head is at H/4
    from tests.helpers import tiny_config

    model = SimpleMatch(tiny_config()).eval()
    with torch.no_grad():
        maps = model.encode(torch.zeros(1, 3, 64, 64))
    assert maps.shape[-2:] == (geometry.feature_side(64),) * 2 == (64 // 4,) * 2


def test_match_keypoints_identity_features() -> None:
    """Features equal for the same cell on both maps: each keypoint maps to its own cell."""
    torch.manual_seed(3)
    feats = torch.randn(1, 32, 16, 16)
    kps = torch.tensor([[[5.0, 9.0], [60.0, 3.0], [33.0, 47.0]]])
    pred, peak, mass, _, _ = M.match_keypoints(feats, feats, kps, 64, window=5, beta=1e-4)
    expected = torch.floor(kps / 4) * 4
    assert torch.allclose(pred, expected, atol=1e-3)
    assert torch.allclose(peak, torch.ones_like(peak), atol=1e-5)
    assert (mass > 0.99).all()


def test_keypoint_loss_euclidean_masked() -> None:
    pred = torch.tensor([[[0.0, 0.0], [3.0, 4.0], [100.0, 100.0]]])
    gt = torch.zeros(1, 3, 2)
    valid = torch.tensor([[True, True, False]])
    assert float(M.keypoint_loss(pred, gt, valid)) == pytest.approx(2.5)


def test_gradients_flow_through_window() -> None:
    torch.manual_seed(0)
    src = torch.randn(1, 8, 10, 10, requires_grad=True)
    trg = torch.randn(1, 8, 10, 10, requires_grad=True)
    kps = torch.tensor([[[3.0, 5.0], [20.0, 30.0]]])
    pred = M.match_keypoints(src, trg, kps, 40, window=5, beta=0.02, with_cues=False).pred
    pred.sum().backward()
    assert src.grad is not None and src.grad.abs().sum() > 0
    assert trg.grad is not None and trg.grad.abs().sum() > 0


def test_dense_matches_sparse_full_map() -> None:
    """The dense baseline (bench only) agrees with sparse matching over the whole map."""
    torch.manual_seed(5)
    src = torch.randn(1, 8, 6, 6)
    trg = torch.randn(1, 8, 6, 6)
    dense = M.dense_soft_argmax_loss_inputs(src, trg, beta=0.1)
    kps = torch.tensor([[[2 * 4.0, 3 * 4.0]]])  # cell (2, 3) -> flat index 3*6+2
    sparse_cells = M.window_soft_argmax(
        M.cosine_similarity(M.sample_keypoint_features(src, kps, 4.0), trg).view(1, 1, 6, 6), 0, 0.1
    ).pos
    assert torch.allclose(dense[0, 3 * 6 + 2], sparse_cells[0, 0], atol=1e-4)
