"""Sparse matching, window-based soft-argmax localisation and loss (paper section 3.3, 3.4).

Pure functions on tensors, used by training, evaluation and the export parity check. The numpy twins in
``simplematch/runtime/matching.py`` are pinned to these by parity tests. PCK is not counted here: every
evaluator hands numpy predictions to :mod:`simplematch.metrics`, which holds the one rule.

Conventions
-----------
* Keypoints are ``(..., 2)`` pixel coordinates in the model's square input frame, **x then y**.
* A feature map of size ``h x w`` made from an ``S x S`` input has stride ``s = S / h`` (e.g. 252 / 63 = 4,
  :data:`simplematch.geometry.FEATURE_STRIDE`); ``window_size`` and ``cells_to_pixels`` are shared with
  the numpy twins (:mod:`simplematch.geometry`).
* Source features are taken at the nearest cell ``floor(x / s), floor(y / s)`` (eq. 6, as released).
* Cell ``i`` maps back to pixel ``i * s`` (``coord="corner"``, the released code, so released
  checkpoints score as published) or ``(i + 0.5) * s`` (``coord="center"``).
* The similarity volume is sparse: (B, N, h*w), never the dense (h*w)^2 one.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from simplematch.geometry import cells_to_pixels, window_size


class SoftArgmax(NamedTuple):
    """``pos`` (B, N, 2) sub-cell positions (x, y) in cell units; ``mass`` (B, N) peak probability."""

    pos: torch.Tensor
    mass: torch.Tensor


class Matches(NamedTuple):
    """What :func:`match_keypoints` returns (twin of ``simplematch.runtime.matching.Matches``).

    ``pred`` (B, N, 2) target pixels; ``peak_cos``, ``peak_mass`` (B, N). ``second_cos`` (best cosine outside
    the window) and ``cycle_px`` (back-match distance to the query, S-frame pixels) are computed without
    gradient, and are ``None`` when ``with_cues=False`` (training does not need them).
    """

    pred: torch.Tensor
    peak_cos: torch.Tensor
    peak_mass: torch.Tensor
    second_cos: torch.Tensor | None
    cycle_px: torch.Tensor | None


def keypoint_cells(kps: torch.Tensor, stride: float, hw: tuple[int, int]) -> torch.Tensor:
    """(B, N, 2) pixels -> (B, N, 2) integer cells ``floor(kp / stride)``, clamped into the map."""
    h, w = hw
    cells = torch.floor(kps / stride).long()
    return torch.stack((cells[..., 0].clamp(0, w - 1), cells[..., 1].clamp(0, h - 1)), dim=-1)


def sample_keypoint_features(feats: torch.Tensor, kps: torch.Tensor, stride: float) -> torch.Tensor:
    """Eq. 6-7: gather features at the nearest cells.

    feats: (B, C, h, w); kps: (B, N, 2) pixels (x, y) -> (B, N, C).
    """
    b, c, h, w = feats.shape
    cells = keypoint_cells(kps, stride, (h, w))
    flat = cells[..., 1] * w + cells[..., 0]  # (B, N)
    return torch.gather(feats.flatten(2), 2, flat.unsqueeze(1).expand(b, c, -1)).transpose(1, 2)


def cosine_similarity(src_feats: torch.Tensor, trg_feats: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Eq. 9: cosine similarity of each source keypoint with every target cell.

    src_feats: (B, N, C); trg_feats: (B, C, h, w) -> (B, N, h*w). Norms are per vector (eps as released).
    """
    src = src_feats / (src_feats.norm(dim=-1, keepdim=True) + eps)
    trg = trg_feats.flatten(2)
    trg = trg / (trg.norm(dim=1, keepdim=True) + eps)
    return torch.bmm(src, trg)


def window_starts(center: torch.Tensor, k: int, size: int) -> torch.Tensor:
    """Top-left of a k-window around ``center`` kept inside ``[0, size)``: clamp(c - k//2, 0, size - k)."""
    return (center - k // 2).clamp(0, size - k)


def window_soft_argmax(sim: torch.Tensor, window: int, beta: float) -> SoftArgmax:
    """Eq. 10-12: coarse argmax, k x k window kept inside the map, softmax(sim / beta), expectation.

    sim: (B, N, h, w) similarities -> SoftArgmax((B, N, 2) sub-cell positions (x, y) in cell units,
    (B, N) the softmax mass of the window's peak). ``window`` <= 0 or >= the side means the whole axis.
    """
    b, n, h, w = sim.shape
    ky, kx = window_size(window, h, w)
    flat_idx = sim.flatten(2).argmax(dim=-1)  # (B, N)
    y0 = window_starts(flat_idx // w, ky, h)
    x0 = window_starts(flat_idx % w, kx, w)
    ar_y = torch.arange(ky, device=sim.device)
    ar_x = torch.arange(kx, device=sim.device)
    rows = (y0.unsqueeze(-1) + ar_y).unsqueeze(-1)  # (B, N, ky, 1)
    cols = (x0.unsqueeze(-1) + ar_x).unsqueeze(-2)  # (B, N, 1, kx)
    # Gather only the window: memory O(B N k^2), not O(B N h w) for the softmax and its gradient.
    win = torch.gather(sim.flatten(2), 2, (rows * w + cols).flatten(2)).view(b, n, ky, kx)
    prob = torch.softmax(win.flatten(2).float() / beta, dim=-1).view(b, n, ky, kx)
    off_y = (prob.sum(dim=3) * ar_y.to(prob.dtype)).sum(dim=-1)
    off_x = (prob.sum(dim=2) * ar_x.to(prob.dtype)).sum(dim=-1)
    pos = torch.stack((x0.to(prob.dtype) + off_x, y0.to(prob.dtype) + off_y), dim=-1)
    return SoftArgmax(pos, prob.flatten(2).amax(dim=-1))


def best_outside_window(sim: torch.Tensor, window: int) -> torch.Tensor:
    """(B, N, h, w) -> (B, N) best similarity outside the soft-argmax window; -1 if it is the whole map."""
    b, n, h, w = sim.shape
    ky, kx = window_size(window, h, w)
    flat_idx = sim.flatten(2).argmax(dim=-1)
    y0 = window_starts(flat_idx // w, ky, h)[..., None, None]
    x0 = window_starts(flat_idx % w, kx, w)[..., None, None]
    ys = torch.arange(h, device=sim.device)[:, None]
    xs = torch.arange(w, device=sim.device)[None, :]
    inside = (ys >= y0) & (ys < y0 + ky) & (xs >= x0) & (xs < x0 + kx)
    return sim.masked_fill(inside, float("-inf")).flatten(2).amax(dim=-1).clamp_min(-1.0)


def match_keypoints(
    src_map: torch.Tensor,
    trg_map: torch.Tensor,
    src_kps: torch.Tensor,
    img_size: int,
    window: int,
    beta: float,
    coord: str = "corner",
    with_cues: bool = True,
) -> Matches:
    """Sparse matching + window soft-argmax at one head.

    src_map, trg_map: (B, C, h, w) head features (normalised or not); src_kps: (B, N, 2) pixels in the
    ``img_size`` frame -> :class:`Matches` with (B, N, 2) predicted target pixels and the confidence cues.
    """
    b, n = src_kps.shape[:2]
    h, w = trg_map.shape[-2:]
    stride = img_size / h
    src_feats = sample_keypoint_features(src_map, src_kps, stride)
    sim = cosine_similarity(src_feats, trg_map).view(b, n, h, w)
    cells, mass = window_soft_argmax(sim, window, beta)
    pred = cells_to_pixels(cells, stride, coord)
    peak = sim.flatten(2).amax(dim=-1)
    if not with_cues:
        return Matches(pred, peak, mass, None, None)
    with torch.no_grad():  # cues only score the match; no gradient flows through them
        second = best_outside_window(sim, window)
        # The cell nearest the prediction (rint in cell units, given as its centre pixel: no floor flips).
        back_feats = sample_keypoint_features(trg_map, (torch.round(cells.detach()) + 0.5) * stride, stride)
        back_sim = cosine_similarity(back_feats, src_map).view(b, n, h, w)
        back = cells_to_pixels(window_soft_argmax(back_sim, window, beta).pos, stride, coord)
        cycle = torch.linalg.vector_norm(back - src_kps.to(back.dtype), dim=-1)
    return Matches(pred, peak, mass, second, cycle)


def keypoint_loss(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Eq. 13: mean over valid keypoints of the Euclidean (not squared) distance in input pixels.

    pred, gt: (B, N, 2); valid: (B, N) bool.
    """
    dist = torch.linalg.vector_norm(pred.float() - gt.float(), dim=-1)
    mask = valid.float()
    return (dist * mask).sum() / mask.sum().clamp_min(1.0)


def dense_soft_argmax_loss_inputs(src_map: torch.Tensor, trg_map: torch.Tensor, beta: float) -> torch.Tensor:
    """The dense baseline of paper Table 11: full (h*w) x (h*w) correlation + full-map soft-argmax.

    Used only by ``smatch bench --train-memory`` to measure what sparse + window saves.
    src_map, trg_map: (B, C, h, w) -> (B, h*w, 2) expected target cell (x, y) for *every* source cell.
    """
    b, c, h, w = src_map.shape
    src = F.normalize(src_map.flatten(2), dim=1)
    trg = F.normalize(trg_map.flatten(2), dim=1)
    corr = torch.bmm(src.transpose(1, 2), trg)  # (B, hw, hw)
    prob = torch.softmax(corr / beta, dim=-1).view(b, h * w, h, w)
    ys = torch.arange(h, device=corr.device, dtype=prob.dtype)
    xs = torch.arange(w, device=corr.device, dtype=prob.dtype)
    ey = (prob.sum(dim=3) * ys).sum(-1)
    ex = (prob.sum(dim=2) * xs).sum(-1)
    return torch.stack((ex, ey), dim=-1)
