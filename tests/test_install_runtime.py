"""The end-to-end runtime-only install proof, ``scripts/check_runtime_install.sh``, as one test.

As a test it runs alongside the rest of the suite under pytest-xdist (it is mostly pip, so it overlaps
well), and its verdict lands in pytest's summary line. The script builds the wheel, installs it without
extras into a fresh venv and drives the CLI from there; see the script's header for each step. It is given
the session's tiny model and checkpoint instead of exporting its own (a torch process and an export fewer).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import HAVE_WILLOW, ROOT, SHARED_DATA, WILLOW, file_stats, subprocess_env

SCRIPT = ROOT / "scripts" / "check_runtime_install.sh"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="the install check is a bash script")
def test_runtime_only_install_from_the_wheel(tiny_checkpoint: Path, tiny_onnx: Path) -> None:
    # The environment running pytest is the full one (the wheel is built with it).
    env = {**subprocess_env(), "FULL_VENV": sys.prefix, "SMATCH_SHARED_DATA": str(SHARED_DATA),
           "CHECK_MODEL": str(tiny_onnx), "CHECK_CKPT": str(tiny_checkpoint)}  # fmt: skip
    before = [file_stats(tiny_checkpoint), file_stats(tiny_onnx.parent)]
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    assert "== install check passed" in log, log[-6000:]
    assert f"== take the exported model {tiny_onnx}" in log, log[-6000:]
    # Shared by the whole session: the runtime venv's commands read them and write nothing beside them.
    assert [file_stats(tiny_checkpoint), file_stats(tiny_onnx.parent)] == before
    # The PF-WILLOW evaluation runs exactly when the subset is there, and says so when it is not.
    if HAVE_WILLOW:
        assert "pairs, PCK" in log, log[-6000:]
    else:
        assert f"SKIP eval: {WILLOW} not found" in log, log[-6000:]
