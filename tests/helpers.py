"""Shared helpers of the CLI / training / distributed tests: a tiny, fast training config and subprocess env.

The tests share 2 CPU cores with other work, so everything is as small as the code allows: a ResNet-10
from scratch at 64 px, 6 synthetic training pairs (3 steps per epoch at batch 2) and 2 validation pairs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from simplematch.config import Config, resolve_config

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

TINY: dict[str, Any] = dict(
    backbone="resnet10t",
    align_dim=16,
    img_size=64,
    batch_size=2,
    synthetic_pairs=6,
    synthetic_val_pairs=2,
    device="cpu",
    eval_every=2,
    max_steps=4,
)


def tiny_config(**overrides: Any) -> Config:
    return resolve_config("demo_cpu", {**TINY, **overrides})


def write_tiny_config(path: Path, **overrides: Any) -> Path:
    """A config.json for ``smatch train --config`` (the CLI has no flag for the synthetic pair counts)."""
    tiny_config(**overrides).save(path)
    return path


def subprocess_env() -> dict[str, str]:
    """Child-process environment: one thread each (the machine is shared), this checkout importable."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT), COLUMNS="200")
    env.pop("WORLD_SIZE", None)
    return env
