"""Fault injection: the machine pushes back, the command answers calmly.

Each case runs the real command in a child process (one thread; ``train``, ``eval`` of a checkpoint and
``export`` forked from the prewarmed server of tests/prewarmed.py) with a fault injected from outside --
a memory limit (``resource.RLIMIT_AS``), a tiny full file system or a read-only one (tmpfs, as root),
a signal at a chosen phase (tests/faults/inject.py), a second process on the same run folder, a closed
or full stdout -- and asserts three things: the exit code, stderr being one line without a traceback
or library noise, and the files on disk before and after.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import PYTHON, ROOT, subprocess_env, unstamped, write_tiny_config
from tests.prewarmed import Prewarmed

# Every case runs the real command in a subprocess (seconds each): the whole file is slow.
pytestmark = pytest.mark.slow

INJECT = Path(__file__).with_name("inject.py")
GIB = 2**30


# ---- helpers -------------------------------------------------------------------------------------------
# The commands that import torch start from the prewarmed server (tests/prewarmed.py): a forked child skips
# the ~3 s of imports but is otherwise the process a user's command is. The rest start plain processes.
_PREWARMED: list[Prewarmed] = []


@pytest.fixture(scope="module", autouse=True)
def _prewarmed_server(prewarmed: Prewarmed) -> Iterator[None]:
    _PREWARMED.append(prewarmed)
    yield
    _PREWARMED.clear()


def _imports_torch(args: list[object]) -> bool:
    command = str(args[0])
    model = str(args[1]) if len(args) > 1 else ""
    return command in ("train", "export") or (command == "eval" and not model.endswith(".onnx"))


def smatch(
    args: list[object], cwd: Path, *, inject: str = "-", limit_as: int | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """``smatch ARGS`` in a subprocess (SIGINT at its default); ``inject`` a signal spec for inject.py;
    ``limit_as`` RLIMIT_AS."""
    argv = [str(INJECT), inject, *map(str, args)]
    if _imports_torch(args):
        return _PREWARMED[0].run(argv, cwd, limit_as=limit_as, timeout=timeout)

    def limit() -> None:
        # A shell starts background jobs with SIGINT ignored, and an ignored signal stays ignored across exec
        # (Python then installs no KeyboardInterrupt): the command gets SIGINT as a user's terminal sends it.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if limit_as is not None:
            resource.setrlimit(resource.RLIMIT_AS, (limit_as, limit_as))

    return subprocess.run(
        [PYTHON, *argv], cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=timeout,
        preexec_fn=limit,
    )  # fmt: skip


def one_line(proc: subprocess.CompletedProcess, code: int, contains: str = "") -> str:
    """Assert the exit code and that stderr is one line: no traceback, no warning, not cut."""
    err = proc.stderr.strip()
    assert proc.returncode == code, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    assert len(err.splitlines()) == 1, err
    for noise in ("Traceback", "Warning", "onnxruntime:", "[W:", "[E:"):
        assert noise not in err, err
    assert contains in err, err
    return err


def tree(root: Path) -> dict[str, int]:
    """Every file and folder under ``root`` (relative path -> size, -1 for folders)."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): (-1 if p.is_dir() else p.stat().st_size) for p in sorted(root.rglob("*"))
    }


def _mount_tmpfs(path: Path, options: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (the full/read-only file system cases)")
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")


@pytest.fixture
def full_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB file system: big enough for JSON, too small for any model or picture."""
    path = tmp_path / "full"
    _mount_tmpfs(path, "size=1m")
    yield path
    subprocess.run(["umount", str(path)], check=False)


@pytest.fixture
def ro_fs(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "ro"
    _mount_tmpfs(path, "ro,size=1m")
    yield path
    subprocess.run(["umount", str(path)], check=False)


def fill(fs: Path, leave: int) -> None:
    """Fill ``fs`` up to ``leave`` free bytes."""
    st = os.statvfs(fs)
    free = st.f_bavail * st.f_frsize
    (fs / "ballast").write_bytes(b"\0" * max(0, free - leave))


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path, tiny_onnx: Path) -> Path:
    """A tiny run and its ONNX export (the session's random ones), two photos, a keypoint file and the
    tiny config for the commands that train. Built in this process: the faults are in the commands below."""
    import numpy as np
    from PIL import Image

    ws = tmp_path_factory.mktemp("faults")
    write_tiny_config(ws / "tiny.json")
    shutil.copytree(tiny_checkpoint, ws / "run")
    shutil.copy(tiny_onnx, ws / "model.onnx")
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(ws / name)
    (ws / "kps.json").write_text("[[10, 10], [40, 30]]")
    return ws


# ---- memory --------------------------------------------------------------------------------------------
def test_eval_of_a_checkpoint_asking_for_a_huge_size_is_refused_under_a_memory_limit(
    ws: Path, tmp_path: Path
) -> None:
    big = tmp_path / "big"
    shutil.copytree(ws / "run", big)
    cfg = json.loads((big / "config.json").read_text())
    (big / "config.json").write_text(json.dumps({**cfg, "img_size": 10**9}))
    before = tree(tmp_path)
    proc = smatch(
        ["eval", big, "--dataset", "synthetic", "--json", tmp_path / "r.json"], ws, limit_as=8 * GIB
    )
    err = one_line(proc, 2, "needs at least")
    assert "ulimit -v" in err and "config.json" in err  # names the limit it met and the file to fix
    assert tree(tmp_path) == before


def test_export_at_a_size_that_cannot_fit_is_refused(ws: Path, tmp_path: Path) -> None:
    out = tmp_path / "e.onnx"
    proc = smatch(
        ["export", ws / "run", "--out", out, "--img-size", 100000, "--no-check"], ws, limit_as=8 * GIB
    )
    one_line(proc, 2, "img_size 100000 with batch 1 needs at least")
    assert tree(tmp_path) == {}


def _png_header(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims ``width`` x ``height`` (no pixel data: the guard must not decode it)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 16)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


@pytest.mark.parametrize(
    ("size", "limit", "message"),
    [
        ((12500, 12500), None, "above the 150 MP that smatch decodes"),  # Pillow: a warning only
        (
            (20000, 20000),
            None,
            "is too large to decode safely (Image size (400000000 pixels) exceeds",
        ),  # Pillow: its DecompressionBombError
        ((10000, 9000), 1 * GIB, "decoding it needs about 1.0 GiB"),  # fits the budget, not the limit
    ],
    ids=["over-budget", "over-pillow-limit", "over-memory-limit"],
)
def test_infer_refuses_a_huge_image_from_its_header(ws: Path, tmp_path: Path, size, limit, message) -> None:
    _png_header(tmp_path / "huge.png", *size)
    before = tree(tmp_path)
    proc = smatch(
        ["infer", tmp_path / "huge.png", ws / "b.png", "--kps", ws / "kps.json", "--model", ws / "model.onnx",
         "--out", tmp_path / "o.json"],
        ws, limit_as=limit,
    )  # fmt: skip
    one_line(proc, 2, message)
    assert tree(tmp_path) == before


# ---- devices -------------------------------------------------------------------------------------------
def test_train_on_a_missing_gpu_is_one_line(ws: Path, tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = smatch(["train", "--config", ws / "tiny.json", "--out", tmp_path / "run", "--device", "cuda"], ws)
    one_line(proc, 2, "--device cuda was requested but torch sees no GPU")
    assert tree(tmp_path) == {}


@pytest.mark.parametrize("device", ["cuda", "tensorrt"])
def test_infer_on_a_missing_gpu_is_one_line_without_native_log(ws: Path, device: str) -> None:
    import ctypes.util

    if ctypes.util.find_library("cuda") is not None:
        pytest.skip("this machine has an NVIDIA driver")
    proc = smatch(
        ["infer", ws / "a.png", ws / "b.png", "--kps", ws / "kps.json", "--model", ws / "model.onnx",
         "--device", device],
        ws,
    )  # fmt: skip
    err = one_line(proc, 2, "requested but")
    # The fix names what is really missing, not a package that is already installed.
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert "no NVIDIA driver" in err and "pip install onnxruntime-gpu" not in err


# ---- disk ----------------------------------------------------------------------------------------------
def test_train_on_a_full_disk_leaves_nothing(ws: Path, full_fs: Path) -> None:
    proc = smatch(["train", "--config", ws / "tiny.json", "--out", full_fs / "run"], ws)
    one_line(proc, 2, "the disk is full")
    assert tree(full_fs) == {}


def test_infer_writes_both_files_or_neither(ws: Path, full_fs: Path) -> None:
    fill(full_fs, leave=16 * 1024)  # room for the JSON (2 KB), not for the picture (25 KB)
    before = tree(full_fs)
    out, viz = full_fs / "a.json", full_fs / "b.png"
    proc = smatch(
        ["infer", ws / "a.png", ws / "b.png", "--kps", ws / "kps.json", "--model", ws / "model.onnx",
         "--out", out, "--viz", viz],
        ws,
    )  # fmt: skip
    one_line(proc, 2, f"cannot write {viz}: the disk is full")
    assert tree(full_fs) == before


def test_eval_on_a_full_disk_writes_no_file(ws: Path, full_fs: Path) -> None:
    fill(full_fs, leave=8 * 1024)  # the predictions fit, the result JSON then does not
    before = tree(full_fs)
    proc = smatch(
        ["eval", ws / "run", "--dataset", "synthetic", "--limit", 4, "--predictions", full_fs / "p.jsonl",
         "--json", full_fs / "new" / "r.json"],
        ws,
    )  # fmt: skip
    one_line(proc, 2, "the disk is full")
    assert tree(full_fs) == before  # neither file, nor the folder made for the JSON


def test_convert_on_a_full_disk_leaves_no_empty_folder(
    ws: Path, full_fs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In-process: the import is replaced by the tiny model (an official file is a full-size network).
    from rich.console import Console

    import simplematch.official
    from simplematch.checkpoint import load_checkpoint
    from simplematch.errors import SimpleMatchError
    from simplematch.official import run_convert

    model, cfg = load_checkpoint(ws / "run")
    monkeypatch.setattr(simplematch.official, "convert_official", lambda *a, **k: (model, cfg, {"keys": 1}))
    with pytest.raises(SimpleMatchError, match="the disk is full"):
        run_convert(
            ws / "run", "resnet101", full_fs / "conv", img_size=64, backbone_weights=None, to_official=False,
            console=Console(quiet=True),
        )  # fmt: skip
    assert tree(full_fs) == {}


def test_read_only_folder_is_refused_before_any_work(ws: Path, ro_fs: Path) -> None:
    proc = smatch(["train", "--config", ws / "tiny.json", "--out", ro_fs / "run"], ws)
    one_line(proc, 2, "not writable")
    proc = smatch(
        ["infer", ws / "a.png", ws / "b.png", "--kps", ws / "kps.json", "--model", ws / "model.onnx",
         "--out", ro_fs / "a.json"],
        ws,
    )  # fmt: skip
    one_line(proc, 2, "not writable")
    assert tree(ro_fs) == {}


# ---- stdout --------------------------------------------------------------------------------------------
def test_stdout_to_a_full_device_is_one_line() -> None:
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [PYTHON, str(INJECT), "-", "presets"], env=subprocess_env(), stdout=full, stderr=subprocess.PIPE,
            text=True, timeout=120,
        )  # fmt: skip
    one_line(proc, 2, "cannot write to standard output: the disk is full")


def test_closed_stdout_is_quiet() -> None:
    proc = subprocess.Popen(
        [PYTHON, str(INJECT), "-", "presets", "--json"], env=subprocess_env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    proc.stdout.close()  # the reader is gone before the first line (`smatch ... | head -0`)
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == 141  # as a shell reports the other tools of a pipeline
    assert stderr == ""


def test_started_with_stdout_closed_does_its_work_quietly(ws: Path, tmp_path: Path) -> None:
    # `smatch ... >&-`: Python starts without a stdout (sys.stdout is None); the command still does its work.
    out = tmp_path / "m.json"
    for args in (["presets"], ["infer", ws / "a.png", ws / "b.png", "--kps", ws / "kps.json", "--model",
                               ws / "model.onnx", "--out", out]):  # fmt: skip
        proc = subprocess.run(
            [PYTHON, str(INJECT), "-", *map(str, args)], cwd=ws, env=subprocess_env(), stderr=subprocess.PIPE,
            text=True, timeout=120, preexec_fn=lambda: os.close(1),
        )  # fmt: skip
        assert (proc.returncode, proc.stderr) == (0, ""), args
    assert json.loads(out.read_text())["keypoints"]


# ---- signals -------------------------------------------------------------------------------------------
def _last(run: Path) -> dict:
    return unstamped(json.loads((run / "last.json").read_text()), "train_last")


def test_signal_in_train_setup_leaves_nothing(ws: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = smatch(
        ["train", "--config", ws / "tiny.json", "--out", run], ws, inject="simplematch.train:_setup:SIGTERM:1"
    )
    one_line(proc, 143, "interrupted by SIGTERM")
    assert tree(tmp_path) == {}


def test_signal_in_a_train_step_saves_a_resumable_checkpoint(ws: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = write_tiny_config(tmp_path / "c.json", eval_every=100, max_steps=6)
    proc = smatch(["train", "--config", cfg, "--out", run], ws, inject="simplematch.train:_step:SIGINT:3")
    err = one_line(proc, 130)
    assert err == f"interrupted by SIGINT at step 3; resume with: smatch train --resume {run}"
    assert _last(run) == {"checkpoint": "ckpt-00000003", "step": 3}
    assert smatch(["train", "--resume", run], ws).returncode == 0
    assert _last(run)["step"] == 6


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_signal_in_the_final_validation_stops_and_resumes_to_validate(
    ws: Path, tmp_path: Path, signame: str
) -> None:
    run = tmp_path / "run"
    # tiny: validations at steps 2 and 4 (the last step): the 2nd is the final one.
    proc = smatch(
        ["train", "--config", ws / "tiny.json", "--out", run],
        ws,
        inject=f"simplematch.train:_validate:{signame}:2",
    )
    one_line(proc, 128 + getattr(signal, signame), f"interrupted by {signame} at step 4")
    assert _last(run) == {"checkpoint": "ckpt-00000004", "step": 4, "validated": False}
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val_pck" in r] == [2]  # the aborted validation logged nothing
    proc = smatch(["train", "--resume", run], ws)
    assert proc.returncode == 0, proc.stderr
    assert _last(run) == {"checkpoint": "ckpt-00000004", "step": 4}
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val_pck" in r] == [2, 4]


def test_signal_while_saving_finishes_the_checkpoint_first(ws: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = write_tiny_config(tmp_path / "c.json", max_steps=6)
    proc = smatch(
        ["train", "--config", cfg, "--out", run], ws, inject="simplematch.train:_save_resumable:SIGTERM:1"
    )
    one_line(proc, 143, "interrupted by SIGTERM at step 2")
    assert _last(run) == {"checkpoint": "ckpt-00000002", "step": 2}
    assert sorted(p.name for p in (run / "ckpt-00000002").iterdir()) == [
        "config.json", "model.safetensors", "state.pt"
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("point", "signame"),
    [
        ("simplematch.checkpoint:load_checkpoint:SIGTERM:1", "SIGTERM"),  # loading the model
        ("simplematch.evaluation.torch_predictor:evaluate_model:SIGINT:1", "SIGINT"),  # evaluating
        ("simplematch.files:write_json:SIGTERM:1", "SIGTERM"),  # writing: predictions staged, JSON next
    ],
    ids=["load", "evaluate", "write"],
)
def test_signal_in_eval_is_one_line_and_writes_nothing(
    ws: Path, tmp_path: Path, point: str, signame: str
) -> None:
    proc = smatch(
        ["eval", ws / "run", "--dataset", "synthetic", "--limit", 4, "--json", tmp_path / "r.json",
         "--predictions", tmp_path / "p.jsonl"],
        ws, inject=point,
    )  # fmt: skip
    err = one_line(proc, 128 + getattr(signal, signame))
    assert err == f"interrupted by {signame}"
    assert tree(tmp_path) == {}


# ---- concurrency ---------------------------------------------------------------------------------------
def test_a_run_folder_in_use_is_refused(ws: Path, tmp_path: Path) -> None:
    from simplematch import runlock

    run = tmp_path / "run"
    with runlock.hold(run):
        proc = smatch(["train", "--config", ws / "tiny.json", "--out", run, "--force"], ws)
    err = one_line(proc, 2, f"--out {run} is being written by another smatch process (pid {os.getpid()})")
    assert "Fix: wait for it to finish" in err
    assert tree(tmp_path) == {}


def test_two_trains_at_once_one_wins_and_the_log_is_not_interleaved(ws: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    argv = [INJECT, "-", "train", "--config", ws / "tiny.json", "--out", run]
    procs = [_PREWARMED[0].start(argv, ws) for _ in range(2)]  # both running at once, milliseconds apart
    results = [(p.wait(timeout=300), p.communicate()[1]) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2).strip()
    assert len(loser.splitlines()) == 1 and "Traceback" not in loser
    assert "being written by another smatch process" in loser or "already exists" in loser
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and _last(run)["step"] == 4  # one run's log, in order


def test_a_killed_owner_leaves_no_stale_lock(ws: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    code = (
        f"from simplematch import runlock; import time\nwith runlock.hold({str(run)!r}):\n    time.sleep(600)"
    )
    holder = subprocess.Popen([PYTHON, "-c", code], env=subprocess_env())
    try:
        deadline = time.time() + 60
        from simplematch.runlock import lock_path

        while not lock_path(run).exists() and time.time() < deadline:
            time.sleep(0.1)
        refused = smatch(["train", "--config", ws / "tiny.json", "--out", run], ws)
        one_line(refused, 2, "being written by another smatch process")
    finally:
        holder.kill()
        holder.wait()
    proc = smatch(["train", "--config", ws / "tiny.json", "--out", run], ws)
    assert proc.returncode == 0, proc.stderr


def test_inject_runs_the_cli_unchanged() -> None:
    # The harness itself: with no fault it is plain `smatch` (same exit code and output).
    plain = subprocess.run(
        [PYTHON, "-m", "simplematch.cli", "presets"],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
    )
    harness = subprocess.run(
        [PYTHON, str(INJECT), "-", "presets"], cwd=ROOT, env=subprocess_env(), capture_output=True, text=True
    )
    assert (plain.returncode, plain.stdout) == (harness.returncode, harness.stdout) and plain.stdout
    assert sys.executable == PYTHON
