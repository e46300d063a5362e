"""Numpy twins of :mod:`simplematch.matching` (sparse matching + window soft-argmax, paper section 3.3).

Same conventions, same arithmetic order, pinned to the torch functions by ``tests/runtime/test_matching.py``:

* keypoints are ``(..., 2)`` pixels (x, y) in the model's ``S x S`` frame; the stride is ``S / h``;
* a source keypoint takes the feature of its nearest cell ``floor(kp / stride)`` (clamped into the map);
* cosine similarity against every target cell (sparse: ``(B, N, h*w)``, never ``(h*w)^2``);
* argmax, a ``k x k`` window whose top-left is ``clamp(c - k//2, 0, side - k)`` (``k <= 0`` or ``k >= side``
  means the whole axis), ``softmax(sim / beta)`` inside it and the expectation of its marginals;
* cells -> pixels with ``i * s`` (``corner``) or ``(i + 0.5) * s`` (``center``).

Everything is vectorised over batch and keypoints (no Python loop per keypoint).

:func:`match_keypoints` also returns the raw confidence cues (``peak_cos``, ``peak_mass``, ``second_cos``,
``cycle_px``); :mod:`simplematch.confidence` maps them to [0, 1].
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from simplematch.geometry import cells_to_pixels, window_size


class SoftArgmax(NamedTuple):
    """``pos`` (B, N, 2) sub-cell positions (x, y) in cell units; ``mass`` (B, N) peak probability."""

    pos: np.ndarray
    mass: np.ndarray


class Matches(NamedTuple):
    """What :func:`match_keypoints` returns; every field (N, ...) or (B, N, ...) like the keypoints.

    ``pred`` target pixels (x, y) in the S frame; ``peak_cos``, ``peak_mass``, ``second_cos`` (best cosine
    outside the window; -1 when the window is the whole map) and ``cycle_px`` (see the module doc).
    """

    pred: np.ndarray
    peak_cos: np.ndarray
    peak_mass: np.ndarray
    second_cos: np.ndarray
    cycle_px: np.ndarray


def keypoint_cells(kps: np.ndarray, stride: float, hw: tuple[int, int]) -> np.ndarray:
    """(..., 2) pixels -> (..., 2) int64 cells ``floor(kp / stride)``, clamped into the ``h x w`` map."""
    h, w = hw
    # Divide in the keypoints' own dtype (float32 kps stay float32), as torch does: a keypoint exactly on a
    # cell border then falls into the same cell on both paths.
    cells = np.floor(np.asarray(kps) / stride).astype(np.int64)
    return np.stack((np.clip(cells[..., 0], 0, w - 1), np.clip(cells[..., 1], 0, h - 1)), axis=-1)


def sample_keypoint_features(feats: np.ndarray, kps: np.ndarray, stride: float) -> np.ndarray:
    """Eq. 6-7: features at the nearest cells. feats: (B, C, h, w); kps: (B, N, 2) -> (B, N, C)."""
    b, c, h, w = feats.shape
    cells = keypoint_cells(kps, stride, (h, w))
    flat = cells[..., 1] * w + cells[..., 0]  # (B, N)
    return np.take_along_axis(feats.reshape(b, c, h * w), flat[:, None, :], axis=2).transpose(0, 2, 1)


def cosine_similarity(src_feats: np.ndarray, trg_feats: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """Eq. 9: src_feats (B, N, C), trg_feats (B, C, h, w) -> (B, N, h*w) float64; per-vector norms + eps.

    Computed in float64 (torch: float32): a float32 BLAS product rounds differently for different N, so
    matching keypoints in two calls would differ from one call by ~1e-5 px. In float64 the result does not
    depend on how keypoints are grouped, and it stays within the parity budget of the float32 reference.
    The target norms divide the (N, h*w) product instead of the (C, h*w) map (the same cosine to ~1e-16):
    normalising the map was half of the matching time of a ViT-S map (384 x 63 x 63).
    """
    src = np.asarray(src_feats, dtype=np.float64)
    src = src / (np.linalg.norm(src, axis=-1, keepdims=True) + eps)
    trg = np.asarray(trg_feats, dtype=np.float64).reshape(trg_feats.shape[0], trg_feats.shape[1], -1)
    sim = src @ trg
    sim /= (np.sqrt(np.einsum("bck,bck->bk", trg, trg)) + eps)[:, None, :]
    return sim


def window_starts(center: np.ndarray, k: int, size: int) -> np.ndarray:
    """Top-left of a k-window around ``center`` kept inside ``[0, size)``: clamp(c - k//2, 0, size - k)."""
    return np.clip(center - k // 2, 0, size - k)


def window_soft_argmax(sim: np.ndarray, window: int, beta: float) -> SoftArgmax:
    """Eq. 10-12 on (B, N, h, w) similarities -> SoftArgmax((B, N, 2) positions (x, y), (B, N) peak mass).

    The peak mass is the largest softmax probability inside the window (a confidence in (0, 1]).
    """
    b, n, h, w = sim.shape
    ky, kx = window_size(window, h, w)
    flat_sim = sim.reshape(b, n, h * w)
    # numpy and torch both return the first maximal index on ties, so the coarse cell agrees exactly.
    flat_idx = flat_sim.argmax(axis=-1)
    y0 = window_starts(flat_idx // w, ky, h)
    x0 = window_starts(flat_idx % w, kx, w)
    ar_y = np.arange(ky)
    ar_x = np.arange(kx)
    rows = (y0[..., None] + ar_y)[..., :, None]  # (B, N, ky, 1)
    cols = (x0[..., None] + ar_x)[..., None, :]  # (B, N, 1, kx)
    win = np.take_along_axis(flat_sim, (rows * w + cols).reshape(b, n, ky * kx), axis=2)
    # Softmax in float64 with the max subtracted (what torch.softmax does internally): exp never overflows,
    # whatever beta, and the expectation stays far inside the 1e-3 px parity budget.
    logits = np.asarray(win, dtype=np.float64) / beta
    logits -= logits.max(axis=-1, keepdims=True)
    prob = np.exp(logits)
    prob /= prob.sum(axis=-1, keepdims=True)
    prob = prob.reshape(b, n, ky, kx)
    off_y = (prob.sum(axis=3) * ar_y).sum(axis=-1)
    off_x = (prob.sum(axis=2) * ar_x).sum(axis=-1)
    pos = np.stack((x0 + off_x, y0 + off_y), axis=-1)
    return SoftArgmax(pos, prob.reshape(b, n, ky * kx).max(axis=-1))


def best_outside_window(sim: np.ndarray, window: int) -> np.ndarray:
    """(B, N, h, w) similarities -> (B, N) the best one outside the k x k window around the argmax.

    The window is the soft-argmax one (same clamping); where it covers the whole map the result is -1 (the
    lowest cosine), so the ratio test then says "no competitor".
    """
    b, n, h, w = sim.shape
    ky, kx = window_size(window, h, w)
    flat_idx = sim.reshape(b, n, h * w).argmax(axis=-1)
    y0 = window_starts(flat_idx // w, ky, h)[..., None, None]
    x0 = window_starts(flat_idx % w, kx, w)[..., None, None]
    ys = np.arange(h)[:, None]
    xs = np.arange(w)[None, :]
    inside = (ys >= y0) & (ys < y0 + ky) & (xs >= x0) & (xs < x0 + kx)  # (B, N, h, w)
    return np.where(inside, -np.inf, sim).reshape(b, n, h * w).max(axis=-1).clip(min=-1.0)


def match_keypoints(
    src_map: np.ndarray,
    trg_map: np.ndarray,
    src_kps: np.ndarray,
    img_size: int,
    window: int,
    beta: float,
    coord: str = "corner",
) -> Matches:
    """Sparse matching + window soft-argmax: the runtime twin of ``simplematch.matching.match_keypoints``.

    src_map, trg_map: (C, h, w) or (B, C, h, w) features; src_kps: (N, 2) or (B, N, 2) pixels (x, y) in the
    ``img_size`` frame. Returns :class:`Matches`: predicted target pixels (N, 2) / (B, N, 2) in the same
    frame (float64) and the raw confidence cues, (N,) / (B, N).
    """
    single = src_map.ndim == 3
    if single:
        src_map, trg_map, src_kps = src_map[None], trg_map[None], np.asarray(src_kps)[None]
    src_kps = np.asarray(src_kps)
    if (
        src_map.ndim != 4
        or trg_map.ndim != 4
        or trg_map.shape[:2] != src_map.shape[:2]
        or src_kps.ndim != 3
        or src_kps.shape[0] != src_map.shape[0]
        or src_kps.shape[-1] != 2
    ):
        raise ValueError(
            f"shapes do not fit: src_map {src_map.shape}, trg_map {trg_map.shape}, src_kps {src_kps.shape}"
        )
    b, n = src_kps.shape[:2]
    h, w = trg_map.shape[-2:]
    stride = img_size / h
    src_feats = sample_keypoint_features(src_map, src_kps, stride)
    sim = cosine_similarity(src_feats, trg_map).reshape(b, n, h, w)
    cells, mass = window_soft_argmax(sim, window, beta)
    pred = cells_to_pixels(cells, stride, coord)
    peak = sim.reshape(b, n, h * w).max(axis=-1)
    second = best_outside_window(sim, window)
    # Cycle: the target feature at the cell nearest the prediction, matched back into the source the same
    # way. The cell is rint(position in cell units) (both coord conventions), passed as its centre pixel so
    # the floor inside sample_keypoint_features cannot flip on rounding.
    back_feats = sample_keypoint_features(trg_map, (np.rint(cells) + 0.5) * stride, stride)
    back_sim = cosine_similarity(back_feats, src_map).reshape(b, n, h, w)
    back = cells_to_pixels(window_soft_argmax(back_sim, window, beta).pos, stride, coord)
    cycle = np.linalg.norm(back - src_kps, axis=-1)
    out = Matches(pred, peak, mass, second, cycle)
    return Matches(*(f[0] for f in out)) if single else out
