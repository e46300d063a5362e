"""Shared helpers of the test suite: where the repository and the benchmark subset are, a tiny training
config, and the subprocess environment. Fixtures built from these live in tests/conftest.py.

The tests share 2 CPU cores with other work, so everything is as small as the code allows: a ResNet-10
from scratch at 64 px, 6 synthetic training pairs (3 steps per epoch at batch 2) and 2 validation pairs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

from simplematch.config import Config, resolve_config

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

# The benchmark subset is read in place, never copied into the repository: ../shared/data beside the
# checkout, or the folder SMATCH_TEST_DATA names (a worktree, a CI cache). A test that needs a dataset
# skips with the reason when it is absent (a newcomer's clone has no ../shared).
SHARED_DATA = Path(os.environ.get("SMATCH_TEST_DATA") or ROOT.parent / "shared" / "data").resolve()
WILLOW = SHARED_DATA / "pf-willow"
PASCAL_ANNOTATIONS = SHARED_DATA / "pf-pascal-annotations"
SPAIR = SHARED_DATA / "spair-71k-format"
HAVE_WILLOW = (WILLOW / "PF-dataset").is_dir()
NO_WILLOW = f"the PF-WILLOW subset is not at {WILLOW} (set SMATCH_TEST_DATA to the folder holding pf-willow/)"


def need(path: Path) -> None:
    """Skip the calling test, naming the missing path, when a piece of the benchmark subset is absent."""
    if not path.exists():
        pytest.skip(
            f"benchmark data {path} is absent (read from ../shared/data or $SMATCH_TEST_DATA, never copied)"
        )


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


def unstamped(doc: dict[str, Any], kind: str) -> dict[str, Any]:
    """Check the version / time / units stamp of a result JSON (simplematch.provenance) and drop it."""
    from datetime import datetime, timedelta, timezone

    import simplematch
    from simplematch.provenance import STAMP_KEYS, UNITS

    assert list(doc)[: len(STAMP_KEYS)] == list(STAMP_KEYS), f"the stamp comes first: {list(doc)[:4]}"
    assert doc["smatch_version"] == simplematch.__version__
    written = datetime.fromisoformat(doc["written_at"].replace("Z", "+00:00"))
    assert written.utcoffset() == timedelta(0), doc["written_at"]
    assert abs(datetime.now(timezone.utc) - written) < timedelta(hours=1), doc["written_at"]
    assert doc["units"] == UNITS[kind]
    return {k: v for k, v in doc.items() if k not in STAMP_KEYS}
