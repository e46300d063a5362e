"""PCK evaluation of a PyTorch model (``smatch eval CHECKPOINT_DIR``).

Per pair we count correct keypoints (``d < alpha * threshold``); :func:`simplematch.metrics.aggregate_pck`
turns the counts into the per-image mean (the paper's convention), the pooled per-point PCK and the
per-category table. The runtime evaluation (``smatch eval MODEL.onnx``) feeds the same aggregation, which
is what makes "the runtime reproduces the PyTorch PCK" a like-for-like comparison.

Distributed: each rank evaluates ``pairs[rank::world]``; per-pair counts are gathered (integers, exact)
so the totals equal the single-process numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from simplematch import distributed as dist_utils
from simplematch.config import THRESHOLDS, Config
from simplematch.data.dataset import PairDataset, collate_pairs
from simplematch.data.records import released_threshold, resolve_threshold
from simplematch.matching import pck_correct
from simplematch.metrics import aggregate_pck

DEFAULT_ALPHAS = (0.05, 0.1, 0.15)


@torch.no_grad()
def pair_counts(
    model: torch.nn.Module,
    dataset: PairDataset,
    *,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    frame: str = "resized",
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    window: int | None = None,
    num_workers: int = 0,
    progress: Any = None,
    inclusive: bool = False,
) -> list[dict[str, Any]]:
    """Per-pair results ``{"index", "category", "valid", "correct": [per alpha]}`` for this rank's share."""
    device = torch.device(device)
    indices = list(range(dist_utils.rank(), len(dataset), dist_utils.world_size()))
    # Own generator: a DataLoader iterator draws a base seed, and drawing it from the global torch RNG would
    # make validation during training shift the dropout stream (a resumed run would then diverge).
    loader = DataLoader(
        Subset(dataset, indices), batch_size=batch_size, shuffle=False, num_workers=num_workers,
        collate_fn=collate_pairs, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    was_training = model.training
    model.eval()
    out: list[dict[str, Any]] = []
    pos = 0
    for batch in loader:
        src = batch["src_img"].to(device)
        trg = batch["trg_img"].to(device)
        kps = batch["src_kps"].to(device)
        pred = model.predict(src, trg, kps, window=window)[0].float().cpu()
        valid = batch["valid"]
        if frame == "original":
            size = torch.as_tensor(batch["trg_size"], dtype=torch.float64)  # (B, 2) original (w, h)
            scale = size / float(src.shape[-1])
            pred = pred.double() * scale[:, None, :]
            gt = batch["trg_kps_original"].double()
            thr = torch.as_tensor(batch["threshold_original"], dtype=torch.float64)
        else:
            gt = batch["trg_kps"].double()
            thr = torch.as_tensor(batch["threshold"], dtype=torch.float64)
        correct = pck_correct(pred.double(), gt, valid, thr, alphas, inclusive=inclusive)
        for i in range(pred.shape[0]):
            out.append(
                {
                    "index": indices[pos + i],
                    "category": batch["category"][i],
                    "valid": int(valid[i].sum()),
                    "correct": [int(c) for c in correct[i]],
                }
            )
        pos += pred.shape[0]
        if progress is not None:
            progress(pred.shape[0])
    model.train(was_training)
    return out


def gather_pair_counts(local: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """All ranks' per-pair results in dataset order (exact integers, no float reduction)."""
    merged = [row for part in dist_utils.gather_objects(local) for row in part]
    return sorted(merged, key=lambda r: r["index"])


def summarize(
    rows: list[dict[str, Any]],
    alphas: Sequence[float],
    *,
    dataset: str,
    split: str,
    frame: str,
    model_info: dict[str, Any],
    config: dict[str, Any],
    threshold: str | None = None,
) -> dict[str, Any]:
    """The evaluation JSON (exact top-level keys of the CLI contract); ``threshold`` = the kind used."""
    counts = np.array([r["correct"] for r in rows], dtype=np.int64).reshape(len(rows), len(alphas))
    valid = np.array([r["valid"] for r in rows], dtype=np.int64)
    agg = aggregate_pck(counts, valid, [r["category"] for r in rows], alphas)
    return {
        "dataset": dataset,
        "split": split,
        "pairs": agg["pairs"],
        "points": agg["points"],
        "threshold": threshold or THRESHOLDS[dataset],
        "frame": frame,
        "pck": agg["pck"],
        "pck_per_point": agg["pck_per_point"],
        "per_category": agg["per_category"],
        "model": model_info,
        "config": config,
    }


def evaluate_model(
    model: torch.nn.Module,
    cfg: Config,
    records: list,
    *,
    dataset: str,
    split: str,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    frame: str = "resized",
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    window: int | None = None,
    model_info: dict[str, Any] | None = None,
    progress: Any = None,
    threshold: str | None = None,
    released_compat: bool = False,
) -> dict[str, Any]:
    """``threshold``: PCK threshold kind (None: the dataset's convention); see records.resolve_threshold.
    ``released_compat``: the released code's scoring quirks (released_threshold, ``<=``); docs/recipe.md."""
    kind = resolve_threshold(
        dataset, released_threshold(dataset, threshold, released_compat), frame, THRESHOLDS
    )
    ds = PairDataset(records, cfg.img_size, augment=False, seed=cfg.seed, threshold_kind=kind)
    local = pair_counts(
        model,
        ds,
        alphas=alphas,
        frame=frame,
        batch_size=batch_size,
        device=device,
        window=window,
        progress=progress,
        inclusive=released_compat,
    )
    rows = gather_pair_counts(local)
    conf = cfg.to_dict()
    if window is not None:
        conf = {**conf, "eval_window": window}
    if released_compat:
        conf = {**conf, "eval_released_compat": True}
    return summarize(
        rows,
        alphas,
        dataset=dataset,
        split=split,
        frame=frame,
        model_info=model_info or {"path": None, "sha256": None},
        config=conf,
        threshold=kind,
    )


def checkpoint_info(ckpt_dir: str | Path) -> dict[str, Any]:
    from simplematch.io import sha256_file

    path = Path(ckpt_dir)
    weights = path / "model.safetensors" if path.is_dir() else path
    return {"path": str(path), "sha256": sha256_file(weights) if weights.is_file() else None}
