"""Suite-wide setup: compute threads per xdist worker, the file order, the tiny models, the prewarmed server
(tests/prewarmed.py), and a worker's exit.

``make test`` runs the suite with pytest-xdist (``-n auto --dist loadfile``): every file stays on one
worker, so a module-scoped fixture (an export, a short training run) is still built once, and a test that
reads what an earlier test of its file observed still sees it. Session fixtures are built once per worker,
except the tiny checkpoint and its export (:func:`built_once`) and the prewarmed server, which the workers
of one run share.
"""

from __future__ import annotations

import gc
import os
import shutil

# Before numpy or torch is imported anywhere: N workers on N cores must not each start N compute threads (the
# oversubscription costs more than the parallelism gains). A plain serial run keeps the library default.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
if _WORKERS > 1:
    _cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    _threads = str(max(1, _cpus // _WORKERS))
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, _threads)

# After the thread settings: numpy (imported by the helpers) sizes its BLAS pool when it loads.
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests.helpers import make_meta, make_onnx, subprocess_env, tiny_config  # noqa: E402
from tests.prewarmed import Prewarmed, locked, shared_server  # noqa: E402

# The runtime-only install check: the longest single test, and mostly waiting on pip, so it starts first.
_FIRST = Path(__file__).with_name("test_install_runtime.py")


def pytest_unconfigure(config: pytest.Config) -> None:
    """The process exits next: as simplematch.shutdown does for the CLI, keep the interpreter's shutdown
    garbage collection off the millions of objects torch and the suite leave alive (about 1 s per worker)."""
    gc.freeze()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest files first: the install check, then by the number of ``slow`` tests (a stable sort).

    ``make test`` runs ``-n auto --dist loadfile --no-loadscope-reorder``: a free worker takes the next whole
    file in this order (xdist's own reorder counts tests, which puts the one-test install check last). The
    many quick files then fill the workers' last gaps instead of one long file running alone at the end.
    """
    slow: dict[Path, int] = {}
    for item in items:
        slow[item.path] = slow.get(item.path, 0) + (item.get_closest_marker("slow") is not None)
    items.sort(key=lambda item: (item.path != _FIRST, -slow[item.path]))


def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of this test run that every xdist worker shares (the parent of the workers' own)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """``build(folder)`` once per test run, whichever worker comes first (the others wait for it, then read).

    Read-only for the tests: a test that writes into it copies it first."""
    root = run_folder(tmp_path_factory)
    folder, done = root / name, root / f"{name}.built"
    with locked(root / f"{name}.lock"):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a worker that failed halfway
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init checkpoint of :func:`tests.helpers.tiny_config` (seed 0), built once per run.

    Read-only: a test that writes into a checkpoint folder copies it first (``shutil.copytree``).
    """

    def build(folder: Path) -> None:
        import torch

        from simplematch.checkpoint import save_checkpoint
        from simplematch.model import SimpleMatch

        cfg = tiny_config()
        torch.manual_seed(0)
        save_checkpoint(SimpleMatch(cfg), cfg, folder / "ckpt")

    return built_once(tmp_path_factory, "tiny", build) / "ckpt"


@pytest.fixture(scope="session")
def tiny_onnx(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """:func:`tiny_checkpoint` exported to ONNX (``smatch export --no-check``), once per run; read-only.

    For tests that need a real exported model but do not test the export (an export costs seconds)."""

    def build(folder: Path) -> None:
        from simplematch.export import export_checkpoint

        export_checkpoint(tiny_checkpoint, out=folder / "model.onnx", check=False)

    return built_once(tmp_path_factory, "tiny_onnx", build) / "model.onnx"


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny ONNX models (tests.helpers.make_onnx), built once per session; tests only read them."""
    root = tmp_path_factory.mktemp("models")
    return {
        "conv": make_onnx(root / "conv.onnx"),
        "position": make_onnx(root / "position.onnx", kind="position"),
        "position_center": make_onnx(
            root / "position_center.onnx", kind="position", meta=make_meta(coord="center")
        ),
    }


@pytest.fixture(scope="session")
def prewarmed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prewarmed]:
    """Children forked from a Python that imported the training stack once (tests/prewarmed.py): for the
    suites that start ``smatch train / eval / export`` many times to test what the command does, not how
    the interpreter starts. One server for the whole run, shared by the workers."""
    with shared_server(run_folder(tmp_path_factory), subprocess_env()) as server:
        yield server
