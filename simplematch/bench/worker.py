"""Fresh-process measurements: the parent writes a spec, ``python -m simplematch.bench --worker SPEC.json``
runs its executor and writes the result next to it.

A fresh interpreter per measurement keeps the peak resident set of one runtime from inflating another's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from simplematch.errors import SimpleMatchError

WORKER_TIMEOUT_S = 3600  # generous: a ViT-B batch of 8 on 2 CPU cores takes seconds per iteration
# The folder that holds the `simplematch` package: the worker must import this very package, even when it
# is not installed (source checkout).
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def main(spec_path: str) -> int:
    """Worker process entry point: run the spec's executor, write its result (or the user error)."""
    from simplematch.bench.executors import EXECUTORS

    spec = json.loads(Path(spec_path).read_text())
    try:
        res = EXECUTORS[spec["executor"]].run(spec)
    except SimpleMatchError as err:
        res = {"error": str(err)}
    Path(spec["out"]).write_text(json.dumps(res))
    return 0


def _worker_env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_ROOT), env.get("PYTHONPATH")) if p)
    if threads:
        # numpy's BLAS (the runtime's matching) spins its own threads: pin it too, or on a busy machine the
        # float64 similarity product of the numpy matching runs ~10x slower than single-threaded.
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(threads)
    return env


def run_worker(spec: dict[str, Any], workdir: Path, label: str) -> dict[str, Any]:
    """Run one worker in a fresh interpreter; returns its result dict (``{"error": ...}`` on a user error)."""
    fd, spec_path = tempfile.mkstemp(prefix="spec-", suffix=".json", dir=workdir)
    os.close(fd)
    out = Path(spec_path).with_suffix(".out.json")
    Path(spec_path).write_text(json.dumps({**spec, "out": str(out)}))
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "simplematch.bench", "--worker", spec_path],
            capture_output=True,
            text=True,
            env=_worker_env(spec.get("threads")),
            timeout=WORKER_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as err:
        raise SimpleMatchError(
            f"benchmark worker for {label} ran over {WORKER_TIMEOUT_S}s", "lower --iters / --batch"
        ) from err
    if proc.returncode != 0 or not out.is_file():
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-1:] or ["no output"]
        hint = " (killed: out of memory?)" if proc.returncode in (-9, 137) else ""
        raise SimpleMatchError(
            f"benchmark worker for {label} failed with exit code {proc.returncode}{hint}: {tail[0][:300]}",
            "rerun with a smaller --batch; `python -m simplematch.bench --worker SPEC` shows the traceback",
        )
    return json.loads(out.read_text())
