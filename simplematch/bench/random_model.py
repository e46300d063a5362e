"""The randomly initialised model measured when no ``--checkpoint`` is given (throughput does not depend on
the weights), saved as a checkpoint so the same export path as ``smatch export`` runs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def build_random_checkpoint(
    preset: str, overrides: dict[str, Any], out: Path, batches: Sequence[int], device: str
) -> Path:
    import torch

    from simplematch.checkpoint import save_checkpoint
    from simplematch.config import resolve_config
    from simplematch.model import SimpleMatch
    from simplematch.validate import check_memory

    torch.manual_seed(0)
    # weights=None: never read (or require) a pretrained backbone file for a throughput benchmark.
    cfg = resolve_config(preset, {**overrides, "weights": None})
    cfg.weights = None
    check_memory(cfg, max(batches), device, training=False)
    model = SimpleMatch(cfg)
    save_checkpoint(model, cfg, out)
    return out
