"""Training-step memory in the three matching modes of paper Table 11 (see ``TRAIN_MODES``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from simplematch.bench.machine import current_rss_mib, peak_rss_mib, reset_peak_rss
from simplematch.bench.options import MIB, NUM_KPS
from simplematch.geometry import feature_side


def table11_predict(mode: str, s_map, t_map, src_kps, size: int, k: int, beta: float, coord: str):
    """Predicted target pixels (B, N, 2) of one head in a Table 11 mode (see TRAIN_MODES).

    ``dense``: (h*w)^2 correlation, full-map soft-argmax for every source cell; ``dense_window``: the same
    correlation, soft-argmax in each cell's k x k window; ``sparse_window``: the keypoints' rows only, in the
    window (:func:`simplematch.matching.match_keypoints`, what training does). The keypoints' rows are read
    out of the dense results, so the three give the same predictions up to the window
    (tests/bench/test_bench.py).
    """
    import torch
    import torch.nn.functional as F

    from simplematch.geometry import cells_to_pixels
    from simplematch.matching import (
        dense_soft_argmax_loss_inputs,
        keypoint_cells,
        match_keypoints,
        window_soft_argmax,
    )

    if mode == "sparse_window":
        return match_keypoints(s_map, t_map, src_kps, size, k, beta, coord, with_cues=False).pred
    b, _, h, w = t_map.shape
    stride = size / h
    if mode == "dense":
        cells_all = dense_soft_argmax_loss_inputs(s_map, t_map, beta)  # (B, h*w, 2)
    else:
        src = F.normalize(s_map.flatten(2), dim=1).transpose(1, 2)
        corr = torch.bmm(src, F.normalize(t_map.flatten(2), dim=1))  # (B, h*w, h*w)
        cells_all = window_soft_argmax(corr.view(b, h * w, h, w), k, beta).pos
    cells = keypoint_cells(src_kps, stride, (h, w))
    rows = (cells[..., 1] * w + cells[..., 0]).unsqueeze(-1).expand(-1, -1, 2)
    return cells_to_pixels(torch.gather(cells_all, 1, rows), stride, coord)


class TrainMemoryExecutor:
    """Peak memory of ONE optimisation step (forward + backward + Adam step) in one matching mode."""

    name = "train-memory"

    def available(self, device: str) -> str | None:
        return None  # runs wherever the torch model does (the parent already required [train])

    def run(self, spec: dict[str, Any]) -> dict[str, Any]:
        step, cfg = _training_step(spec)
        return {**_measure_step(step, spec["device"]), "fine_map": feature_side(cfg.img_size)}


def _training_step(spec: dict[str, Any]) -> tuple[Callable[[], float], Any]:
    """(one optimisation step on a fixed random batch, the model's config): everything but the step is
    allocated here, so the step's peak over the baseline is the matching mode's cost."""
    import torch

    from simplematch.checkpoint import load_checkpoint
    from simplematch.matching import keypoint_loss

    mode, device, b = spec["mode"], spec["device"], int(spec["batch"])
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    torch.manual_seed(0)
    model, cfg = load_checkpoint(spec["path"], device=device)
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    size, n = cfg.img_size, int(spec.get("num_kps", NUM_KPS))
    src = torch.rand(b, 3, size, size, device=device)
    trg = torch.rand(b, 3, size, size, device=device)
    src_kps = torch.rand(b, n, 2, device=device) * size
    trg_kps = torch.rand(b, n, 2, device=device) * size
    valid = torch.ones(b, n, dtype=torch.bool, device=device)

    def step() -> float:
        # All three modes share the same feature path (one encoder pass over src + trg, every head), so
        # the only difference between them is the matching: that is what Table 11 isolates.
        maps = model.feature_maps(torch.cat((src, trg)))
        windows = cfg.windows[-len(maps) :]
        losses = []
        for m, k in zip(maps, windows, strict=True):
            s_map, t_map = m[:b], m[b:]
            pred = table11_predict(mode, s_map, t_map, src_kps, size, k, cfg.beta, cfg.coord)
            losses.append(keypoint_loss(pred.float(), trg_kps, valid))
        loss = torch.stack(losses).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss)

    return step, cfg


def _measure_step(step: Callable[[], float], device: str) -> dict[str, Any]:
    """Memory before and at the peak of one ``step`` (CUDA allocator, or this process's resident set)."""
    import gc

    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / MIB
        loss = step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / MIB
        reset = True
    else:
        base = current_rss_mib()
        reset = reset_peak_rss()
        loss = step()
        peak = peak_rss_mib()
    return {
        "peak_mem_mib": peak,
        "delta_mib": peak - base,
        "baseline_mib": base,
        "peak_reset": reset,
        "loss": loss,
    }
