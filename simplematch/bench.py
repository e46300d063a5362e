"""``smatch bench``: inference throughput, latency, peak memory and matching share per runtime, plus the
training-memory ablation of paper Table 11 (baseline dense, + window, + sparse matching).

Design
------
* Every measurement runs in a **fresh subprocess** (``python -m simplematch.bench --worker SPEC.json``), so
  the peak resident set of one runtime never inflates another's, and a worker for onnxruntime / TensorRT
  never imports torch (its RSS is what the torch-free runtime really costs).
* Without ``--checkpoint`` a randomly initialised model is built from a preset (throughput does not depend
  on the weights) and saved to a temporary checkpoint, so the same export path as ``smatch export`` runs.
* ``onnx`` / ``onnx-fp16`` / ``trt`` models are exported with the parity check on; a runtime that cannot
  run here (TensorRT absent, CUDA absent, failed export) is listed under ``skipped`` with the reason.
* ``--repeats R`` runs every worker R times (fresh process each) and reports the per-field median.

This module imports neither torch nor onnxruntime at import time: the CLI stays fast and runtime workers
stay torch-free.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from simplematch import validate
from simplematch.errors import SimpleMatchError, first_line

RUNTIMES = ("torch", "torch-amp", "onnx", "onnx-fp16", "onnx-int8", "trt", "trt-fp16")
DEFAULT_RUNTIMES = ("torch", "onnx", "onnx-fp16", "trt")
DEFAULT_PRESET = "demo_cpu"  # the random-init model measured when no --checkpoint / --model is given
# Paper Table 11, in its order: baseline (dense correlation, full-map soft-argmax), + window (dense
# correlation, windowed soft-argmax), + sparse matching (sparse correlation + window: what training does).
TRAIN_MODES = ("dense", "dense_window", "sparse_window")
TRAIN_MODE_LABELS = {"dense": "baseline", "dense_window": "+ window", "sparse_window": "+ sparse matching"}
PAPER_TABLE11_MB = {"dense": 21941, "dense_window": 16287, "sparse_window": 10675}  # DINOv2 448, RTX 4090
RESULT_KEYS = (
    "runtime",
    "batch",
    "images_per_s",
    "latency_ms_p50",
    "latency_ms_p95",
    "peak_mem_mib",
    "match_share",
)
NUM_KPS = 30  # keypoints per pair for the matching share (the setting)
MODEL_SUFFIXES = (".onnx", ".engine", ".plan")
WORKER_TIMEOUT_S = 3600  # generous: a ViT-B batch of 8 on 2 CPU cores takes seconds per iteration
MIB = 2**20
TRT_NEEDS_CUDA = "TensorRT engines run on an NVIDIA GPU only (pass --device cuda)"

Log = Callable[[str], None]


# --------------------------------------------------------------------------------------------------------
# Small helpers (shared by parent and workers)
# --------------------------------------------------------------------------------------------------------
def split_values(values: Iterable[str] | None) -> list[str]:
    """``["torch,onnx", "trt"]`` -> ``["torch", "onnx", "trt"]``: options repeat or are comma-separated."""
    out: list[str] = []
    for value in values or []:
        out.extend(v for v in re.split(r"[,\s]+", str(value)) if v)
    return out


def parse_batches(values: Iterable[str | int] | None) -> list[int]:
    batches: list[int] = []
    for v in split_values(str(x) for x in (values or [])):
        if not v.isdigit() or int(v) < 1:
            raise SimpleMatchError(f"--batch {v!r} is invalid", "pass positive integers, e.g. --batch 1,8")
        batches.append(int(v))
    return batches or [1, 8]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(device: str) -> tuple[str, dict[str, Any]]:
    """(device description, versions): what a number was measured on, recorded with every result."""
    import psutil

    import simplematch

    versions: dict[str, Any] = {
        "python": platform.python_version(),
        "simplematch": simplematch.__version__,
        "torch": _version("torch"),
        "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu"),
        "onnx": _version("onnx"),
        "timm": _version("timm"),
        "numpy": _version("numpy"),
        "tensorrt": _version("tensorrt"),
        "cpu": _cpu_name(),
        "cpu_cores": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
    }
    desc = f"cpu ({versions['cpu']}, {versions['cpu_cores']} cores)"
    if device == "cuda":
        import torch

        name = torch.cuda.get_device_name(0)
        versions["gpu"] = name
        versions["cuda"] = torch.version.cuda
        desc = f"cuda ({name})"
    return desc, versions


def _peak_rss_mib() -> float:
    """Peak resident set of this process (VmHWM; ru_maxrss where /proc is unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _current_rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / MIB


def _reset_peak_rss() -> bool:
    """Linux: writing 5 to clear_refs resets VmHWM to the current RSS, so a later peak is this phase's."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _median(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(statistics.median(vals)) if vals else None


# --------------------------------------------------------------------------------------------------------
# Workers (run in a fresh ``python -m simplematch.bench --worker SPEC`` process)
# --------------------------------------------------------------------------------------------------------
def _infer_worker(spec: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    device, batch, runtime = spec["device"], int(spec["batch"]), spec["runtime"]
    rng = np.random.default_rng(0)
    sync: Callable[[], None] = lambda: None  # noqa: E731
    if runtime == "torch":
        import torch

        from simplematch.checkpoint import load_checkpoint
        from simplematch.matching import match_keypoints as torch_match

        if spec.get("threads"):
            torch.set_num_threads(int(spec["threads"]))
        model, cfg = load_checkpoint(spec["path"], device=device)
        # The exported graph has LoRA folded in; fold it here too so both runtimes compute the same network.
        model.merge_lora()
        model.eval()
        size, window, beta, coord = cfg.img_size, cfg.fine_window, cfg.beta, cfg.coord
        if device == "cuda":
            sync = torch.cuda.synchronize
            torch.cuda.reset_peak_memory_stats()

        # torch-amp: float16 autocast on CUDA (what `--amp` training uses), weights stay float32.
        amp = bool(spec.get("amp"))

        def encode(x: Any) -> Any:
            with torch.inference_mode(), torch.autocast(device, dtype=torch.float16, enabled=amp):
                return model.encode(torch.from_numpy(x).to(device)).float()

        def match(src: Any, trg: Any, kps: Any) -> Any:
            with torch.inference_mode():
                return torch_match(src, trg, torch.from_numpy(kps).to(device), size, window, beta, coord)

        kind = "autocast fp16" if amp else "fp32"
        provider = f"torch {torch.__version__} eager {kind} ({torch.get_num_threads()} threads)"
    else:
        from simplematch.runtime.backends import OnnxBackend, load_backend
        from simplematch.runtime.matching import match_keypoints as np_match

        if spec.get("threads") and str(spec["path"]).lower().endswith(".onnx"):
            backend = OnnxBackend(spec["path"], device=device, threads=int(spec["threads"]))
        else:
            backend = load_backend(spec["path"], device=device)
        meta = backend.meta
        size, window, beta, coord = meta.img_size, meta.window, meta.beta, meta.coord
        encode = backend.encode

        def match(src: Any, trg: Any, kps: Any) -> Any:
            return np_match(src, trg, kps, size, window, beta, coord)

        provider = backend.provider

    images = rng.random((batch, 3, size, size), dtype=np.float32)
    for _ in range(int(spec["warmup"])):
        encode(images)
    sync()
    lat = []
    for _ in range(int(spec["iters"])):
        t0 = time.perf_counter()
        feats = encode(images)
        sync()
        lat.append(time.perf_counter() - t0)
    p50, p95 = (float(v) for v in np.percentile(lat, [50, 95]))

    # Matching share of one pair: 30 keypoints on the real fine map of this model (e.g. 63 x 63 at 252).
    src, trg = feats[:1], feats[-1:]
    kps = (rng.random((1, spec.get("num_kps", NUM_KPS), 2)) * size).astype(np.float32)
    for _ in range(3):
        match(src, trg, kps)
    sync()
    mt = []
    for _ in range(max(int(spec["iters"]), 20)):
        t0 = time.perf_counter()
        match(src, trg, kps)
        sync()
        mt.append(time.perf_counter() - t0)
    match_s = float(np.median(mt))
    encode_per_image = p50 / batch
    if device == "cuda" and runtime == "torch":
        import torch

        peak = torch.cuda.max_memory_allocated() / MIB
    elif device == "cuda":
        peak = _gpu_used_mib() or 0.0
    else:
        peak = _peak_rss_mib()
    return {
        "images_per_s": batch * len(lat) / sum(lat),
        "latency_ms_p50": p50 * 1e3,
        "latency_ms_p95": p95 * 1e3,
        "peak_mem_mib": peak,
        "match_share": match_s / (2 * encode_per_image + match_s),
        "match_ms": match_s * 1e3,
        "fine_map": list(feats.shape[-2:]),
        "provider": provider,
    }


def _int8_bench_options(tmp: Path) -> dict[str, Any]:
    """``onnx-int8`` for throughput: calibrated on 16 synthetic images written under ``tmp`` (speed does not
    depend on what the ranges were calibrated on) and with the accuracy gate off -- a random-init model's
    flat similarity maps make agreement meaningless; ``smatch export --int8`` is where accuracy is gated."""
    import numpy as np
    from PIL import Image

    from simplematch.export.parity import synthetic_images

    calib = tmp / "calib"
    calib.mkdir(exist_ok=True)
    for i, im in enumerate(synthetic_images(16, seed=1)):
        Image.fromarray(np.asarray(im, dtype=np.uint8)).save(calib / f"{i:02d}.png")
    return {"int8": True, "calib_data": calib, "int8_min_agreement": 0.0}


def fixed_batch(path: Path) -> int | None:
    """The static batch of an exported ``.onnx`` (None when dynamic, or for engines: their worker checks).

    Asks onnxruntime (a base dependency: `onnx` is not in the runtime-only install) for the first input's
    shape: a dynamic batch is a name (str) or None, a static one an int.
    """
    if path.suffix.lower() != ".onnx":
        return None
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        inputs = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]).get_inputs()
    except Exception as err:
        raise SimpleMatchError(
            f"--model {path} is not a readable ONNX file ({first_line(err)})", "re-export it"
        ) from err
    dim = inputs[0].shape[0] if inputs and inputs[0].shape else None
    return dim if isinstance(dim, int) and dim > 0 else None


def _check_fixed_batch(path: Path, batches: Sequence[int]) -> None:
    """A fixed-batch model timed at another batch would be padded (or looped): the number would describe
    a batch that was not asked for, so that combination is refused before any measurement."""
    fixed = fixed_batch(path)
    others = [b for b in batches if b != fixed]
    if fixed is not None and others:
        raise SimpleMatchError(
            f"--model {path.name} was exported with a fixed batch of {fixed}; --batch {others[0]} would time "
            f"padded batches of {fixed}",
            f"pass --batch {fixed}, or export with the default dynamic batch",
        )


def _gpu_used_mib() -> float | None:
    """GPU memory this process holds per nvidia-smi (onnxruntime / TensorRT do not use torch's allocator)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_gpu_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] == str(os.getpid()) and parts[1].isdigit():
            return float(parts[1])
    return None


def table11_predict(mode: str, s_map, t_map, src_kps, size: int, k: int, beta: float, coord: str):
    """Predicted target pixels (B, N, 2) of one head in a Table 11 mode (see TRAIN_MODES).

    ``dense``: (h*w)^2 correlation, full-map soft-argmax for every source cell; ``dense_window``: the same
    correlation, soft-argmax in each cell's k x k window; ``sparse_window``: the keypoints' rows only, in the
    window (:func:`simplematch.matching.match_keypoints`, what training does). The keypoints' rows are read
    out of the dense results, so the three give the same predictions up to the window (tests/test_bench.py).
    """
    import torch
    import torch.nn.functional as F

    from simplematch.matching import (
        cells_to_pixels,
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


def _train_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Peak memory of ONE optimisation step (forward + backward + Adam step) in one matching mode."""
    import gc

    import torch

    from simplematch.checkpoint import load_checkpoint
    from simplematch.matching import keypoint_loss

    mode, device, b = spec["mode"], spec["device"], int(spec["batch"])
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    torch.manual_seed(0)
    model, cfg = load_checkpoint(spec["path"], device=device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr)
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
        base = _current_rss_mib()
        reset = _reset_peak_rss()
        loss = step()
        peak = _peak_rss_mib()
    return {
        "peak_mem_mib": peak,
        "delta_mib": peak - base,
        "baseline_mib": base,
        "peak_reset": reset,
        "loss": loss,
        "fine_map": cfg.img_size // 4,
    }


def _worker_main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    out = Path(spec["out"])
    try:
        res = _train_worker(spec) if spec["kind"] == "train" else _infer_worker(spec)
    except SimpleMatchError as err:
        res = {"error": str(err)}
    out.write_text(json.dumps(res))
    return 0


# --------------------------------------------------------------------------------------------------------
# Parent: orchestration
# --------------------------------------------------------------------------------------------------------
def _run_worker(spec: dict[str, Any], workdir: Path, label: str) -> dict[str, Any]:
    """Run one worker in a fresh interpreter; returns its result dict (``{"error": ...}`` on a user error)."""
    fd, spec_path = tempfile.mkstemp(prefix="spec-", suffix=".json", dir=workdir)
    os.close(fd)
    out = Path(spec_path).with_suffix(".out.json")
    Path(spec_path).write_text(json.dumps({**spec, "out": str(out)}))
    env = dict(os.environ)
    # The worker must import this very package, even when it is not installed (source checkout).
    pkg_root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
    if spec.get("threads"):
        # numpy's BLAS (the runtime's matching) spins its own threads: pin it too, or on a busy machine the
        # float64 similarity product of the numpy matching runs ~10x slower than single-threaded.
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(spec["threads"])
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "simplematch.bench", "--worker", spec_path],
            capture_output=True,
            text=True,
            env=env,
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


def _median_result(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [k for k, v in runs[0].items() if isinstance(v, int | float) and not isinstance(v, bool)]
    merged = dict(runs[0])
    merged.update({k: _median([r.get(k) for r in runs]) for k in keys})
    return merged


def _check_device(device: str) -> str:
    device = str(device).lower()
    if device not in ("cpu", "cuda"):
        raise SimpleMatchError(f"unknown device {device!r}", "use --device cpu or --device cuda")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SimpleMatchError("--device cuda but torch sees no CUDA GPU", "use --device cpu")
    return device


def _tensorrt_missing() -> str | None:
    try:
        import tensorrt  # noqa: F401 - availability probe only
    except Exception as err:
        first = (str(err).splitlines() or [""])[0][:120]
        return f"tensorrt is not importable ({type(err).__name__}: {first})"
    return None


def _build_random_checkpoint(
    preset: str, overrides: dict[str, Any], out: Path, batches: Sequence[int], device: str
) -> Path:
    """A randomly initialised model (throughput does not depend on weights), saved so export works."""
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


def run_bench(
    *,
    checkpoint: str | Path | None = None,
    models: Sequence[str | Path] = (),
    runtimes: Sequence[str] | None = None,
    batches: Sequence[int] = (1, 8),
    warmup: int = 2,
    iters: int = 10,
    repeats: int = 1,
    train_memory: bool = False,
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
    device: str = "cpu",
    json_path: str | Path | None = None,
    num_kps: int = NUM_KPS,
    threads: int | None = None,
    force: bool = False,
    log: Log | None = None,
) -> dict[str, Any]:
    """Benchmark runtimes x batch sizes (and optionally training memory); returns the result dict.

    ``runtimes`` defaults to :data:`DEFAULT_RUNTIMES` unless only ``models`` are given. Every number is a
    median over ``repeats`` fresh worker processes. ``json_path`` is written atomically. ``threads`` pins
    torch and onnxruntime to the same CPU thread count (``None``: each library's default); on a small,
    shared machine oversubscribed OpenMP threads can slow torch by an order of magnitude, so say which.
    """
    say = log or (lambda _msg: None)
    runtimes = list(runtimes) if runtimes is not None else ([] if models else list(DEFAULT_RUNTIMES))
    runtimes = [r for r in runtimes if r != "none"]  # `--runtime none`: only --model files / --train-memory
    if models and checkpoint is None:
        # With only --model files, `--runtime onnx|trt` names the engine that runs them, which each file's
        # suffix already decides. Any other runtime would export its own model from a checkpoint.
        kinds = {"trt" if Path(m).suffix.lower() in (".engine", ".plan") else "onnx" for m in models}
        foreign = [r for r in runtimes if r not in kinds]
        if foreign:
            raise SimpleMatchError(
                f"--runtime {', '.join(foreign)} exports a model from a checkpoint, and none was given",
                "pass --checkpoint DIR, or drop --runtime to benchmark the --model files alone",
            )
        runtimes = []
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    if checkpoint is not None and (preset is not None or given):
        flags = ["--preset"] * (preset is not None) + [f"--{k.replace('_', '-')}" for k in given]
        raise SimpleMatchError(
            f"{', '.join(flags)} describe the random-init model, and --checkpoint {checkpoint} is measured as"
            " saved",
            "drop them to measure the checkpoint, or drop --checkpoint to measure that random-init model",
        )
    if not runtimes and not models and not train_memory:
        raise SimpleMatchError(
            "nothing to benchmark (--runtime none, no --model, no --train-memory)",
            "pass --model FILE, a --runtime, or --train-memory",
        )
    unknown = [r for r in runtimes if r not in RUNTIMES]
    if unknown:
        raise SimpleMatchError(
            f"unknown runtime(s) {', '.join(unknown)}", f"use any of {', '.join(RUNTIMES)}"
        )
    runtimes = list(dict.fromkeys(runtimes))
    batches = list(dict.fromkeys(int(b) for b in batches))
    if not batches or any(b < 1 for b in batches):
        raise SimpleMatchError(f"batch sizes {batches} are invalid", "pass positive integers, e.g. --batch 1")
    if warmup < 0 or iters < 1 or repeats < 1:
        raise SimpleMatchError("--warmup must be >= 0, --iters and --repeats >= 1", "pass e.g. --iters 10")
    if threads is not None and threads < 1:
        raise SimpleMatchError(f"--threads {threads} is invalid", "pass a positive thread count")
    if num_kps < 1:
        raise SimpleMatchError("the number of keypoints must be >= 1", "use the default 30")
    if runtimes or train_memory or checkpoint is not None:
        from simplematch.extras import require

        require("train", "benchmarking a checkpoint or the torch/export runtimes (only --model runs without)")
    device = _check_device(device)
    json_file = validate.output_file(json_path, "--json", suffixes=(".json",), inputs=models, force=force)
    model_files = [Path(m) for m in models]
    for m in model_files:
        if not m.is_file():
            raise SimpleMatchError(f"--model {m} not found", "pass an existing .onnx or .engine file")
        if m.suffix.lower() not in MODEL_SUFFIXES:
            raise SimpleMatchError(
                f"--model {m} is not .onnx/.engine", "pass a model written by `smatch export`"
            )
        _check_fixed_batch(m, batches)
    if checkpoint is not None:
        from simplematch.checkpoint import WEIGHTS_NAME

        ckpt = Path(checkpoint)
        if not (ckpt.is_dir() and (ckpt / WEIGHTS_NAME).is_file()):
            raise SimpleMatchError(
                f"checkpoint not found: {ckpt} (needs {WEIGHTS_NAME})", "pass a folder made by `smatch train`"
            )

    from simplematch.io import atomic_write_text, sha256_file

    desc, versions = environment(device)
    versions["threads"] = threads or "default"
    skipped: list[dict[str, str]] = []
    results: list[dict[str, Any]] = []
    train_rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="smatch-bench-") as tmp_name:
        tmp = Path(tmp_name)
        needs_ckpt = bool(runtimes) or train_memory
        ckpt_dir: Path | None = None
        if checkpoint is not None:
            ckpt_dir = Path(checkpoint)
        elif needs_ckpt:
            say(f"building a randomly initialised model from preset {preset}")
            ckpt_dir = _build_random_checkpoint(
                preset or DEFAULT_PRESET, given, tmp / "ckpt", batches, device
            )
        if ckpt_dir is not None:
            model_sha = sha256_file(ckpt_dir / "model.safetensors")
        else:
            model_sha = ",".join(sha256_file(m) for m in model_files)

        # (label, model path, is_user_file) for every runnable runtime; export what needs exporting.
        plan: list[tuple[str, Path, bool]] = []
        trt_missing = _tensorrt_missing() if any(r.startswith("trt") for r in runtimes) else None
        for rt in runtimes:
            if rt == "torch-amp" and device != "cuda":
                skipped.append(
                    {"runtime": rt, "reason": "autocast is measured on CUDA only (pass --device cuda)"}
                )
                continue
            if rt in ("torch", "torch-amp"):
                assert ckpt_dir is not None
                plan.append((rt, ckpt_dir, False))
                continue
            fp16 = rt.endswith("-fp16")
            fmt = "trt" if rt.startswith("trt") else "onnx"
            if fmt == "trt" and trt_missing:
                skipped.append({"runtime": rt, "reason": trt_missing})
                continue
            if fmt == "trt" and device != "cuda":
                skipped.append({"runtime": rt, "reason": TRT_NEEDS_CUDA})
                continue
            from simplematch.export import export_checkpoint

            int8 = rt == "onnx-int8"
            suffix = ".int8" if int8 else ".fp16" if fp16 else ""
            out = tmp / f"model{suffix}.{'onnx' if fmt == 'onnx' else 'engine'}"
            say(f"exporting {rt} (parity check on)")
            try:
                if int8:
                    export_checkpoint(ckpt_dir, out=out, **_int8_bench_options(tmp))
                else:
                    export_checkpoint(ckpt_dir, fmt=fmt, out=out, fp16=fp16, batch=None, check=True)
            except SimpleMatchError as err:
                skipped.append({"runtime": rt, "reason": f"export failed: {err}"})
                continue
            plan.append((rt, out, False))
        trt_missing_user = None
        for m in model_files:
            label = f"model:{m.name}"
            if m.suffix.lower() in (".engine", ".plan"):
                trt_missing_user = trt_missing_user or _tensorrt_missing()
                reason = trt_missing_user or (None if device == "cuda" else TRT_NEEDS_CUDA)
                if reason:
                    skipped.append({"runtime": label, "reason": reason})
                    continue
            plan.append((label, m, True))

        for label, path, user_file in plan:
            kind = "torch" if label in ("torch", "torch-amp") else "runtime"
            for b in batches:
                runs = []
                for r in range(repeats):
                    spec = dict(kind="infer", runtime=kind, path=str(path), batch=b, warmup=warmup,
                                iters=iters, device=device, num_kps=num_kps, threads=threads,
                                amp=label == "torch-amp")  # fmt: skip
                    res = _run_worker(spec, tmp, f"{label} batch {b}")
                    if "error" in res:
                        if user_file:
                            raise SimpleMatchError(res["error"])
                        break
                    runs.append(res)
                    say(
                        f"{label:>12} batch {b} run {r + 1}/{repeats}: {res['images_per_s']:.2f} img/s, "
                        f"p50 {res['latency_ms_p50']:.1f} ms, peak {res['peak_mem_mib']:.0f} MiB, "
                        f"match {res['match_share'] * 100:.2f}%"
                    )
                if not runs:
                    skipped.append({"runtime": label, "reason": res["error"]})
                    break
                med = _median_result(runs)
                results.append({"runtime": label, "batch": b, **{k: med[k] for k in RESULT_KEYS[2:]}})

        if train_memory:
            assert ckpt_dir is not None
            tb = max(batches)
            for mode in TRAIN_MODES:
                runs = []
                for r in range(repeats):
                    spec = dict(kind="train", mode=mode, path=str(ckpt_dir), batch=tb, device=device,
                                num_kps=num_kps, threads=threads)  # fmt: skip
                    res = _run_worker(spec, tmp, f"train-memory {mode}")
                    if "error" in res:
                        raise SimpleMatchError(res["error"])
                    runs.append(res)
                    say(f"train-memory {mode:>13} batch {tb} run {r + 1}/{repeats}: "
                        f"peak {res['peak_mem_mib']:.0f} MiB, delta {res['delta_mib']:.0f} MiB")  # fmt: skip
                med = _median_result(runs)
                train_rows.append(
                    {
                        "mode": mode,
                        "peak_mem_mib": med["peak_mem_mib"],
                        "delta_mib": med["delta_mib"],
                        "baseline_mib": med["baseline_mib"],
                        "batch": tb,
                    }
                )

    if not results and not train_rows:
        reasons = "; ".join(f"{s['runtime']}: {s['reason']}" for s in skipped) or "nothing ran"
        raise SimpleMatchError(f"no benchmark could run ({reasons})", "choose a runtime this machine has")
    result: dict[str, Any] = {
        "device": desc,
        "versions": versions,
        "model_sha256": model_sha,
        "results": results,
        "skipped": skipped,
    }
    if train_memory:
        result["train_memory"] = train_rows
    if json_file is not None:
        atomic_write_text(json_file, json.dumps(result, indent=2) + "\n")
    return result


def print_bench(result: dict[str, Any], console: Any) -> None:
    """Rich tables of a :func:`run_bench` result."""
    from rich.table import Table

    table = Table(title=f"smatch bench on {result['device']}")
    for col in ("runtime", "batch", "images/s", "p50 ms", "p95 ms", "peak MiB", "match share"):
        table.add_column(col, justify="left" if col == "runtime" else "right")
    for r in result["results"]:
        table.add_row(
            r["runtime"],
            str(r["batch"]),
            f"{r['images_per_s']:.2f}",
            f"{r['latency_ms_p50']:.1f}",
            f"{r['latency_ms_p95']:.1f}",
            f"{r['peak_mem_mib']:.0f}",
            f"{r['match_share'] * 100:.2f}%",
        )
    if result["results"]:  # a --train-memory-only run has no inference rows
        console.print(table)
    for s in result["skipped"]:
        console.print(f"skipped {s['runtime']}: {s['reason']}")
    rows = result.get("train_memory") or []
    if rows:
        dense = next((r for r in rows if r["mode"] == "dense"), None)
        tm = Table(title=f"training memory (paper Table 11), one step at batch {rows[0].get('batch')}")
        for col in ("row", "mode", "peak MiB", "delta MiB", "delta / baseline", "paper ratio"):
            tm.add_column(col, justify="left" if col in ("row", "mode") else "right")
        for r in rows:
            ratio = r["delta_mib"] / dense["delta_mib"] if dense and dense["delta_mib"] > 0 else float("nan")
            paper = PAPER_TABLE11_MB.get(r["mode"], float("nan")) / PAPER_TABLE11_MB["dense"]
            tm.add_row(
                TRAIN_MODE_LABELS.get(r["mode"], r["mode"]), r["mode"], f"{r['peak_mem_mib']:.0f}",
                f"{r['delta_mib']:.0f}", f"{ratio:.2f}", f"{paper:.2f}",
            )  # fmt: skip
        console.print(tm)
    console.print(f"model sha256 {result['model_sha256'][:16]}...")


def profile_onnx(
    path: str | Path, batch: int = 1, iters: int = 3, threads: int | None = None, top: int = 12
) -> list[tuple[str, float, float]]:
    """onnxruntime per-op-type profile (``SessionOptions.enable_profiling``) of one exported model.

    Returns ``[(op_type, ms per run, share of all node time)]``, largest first: where a runtime's time goes
    when a throughput target is missed (used for BENCHMARKS.md).
    """
    import numpy as np
    import onnxruntime as ort

    from simplematch.metadata import ModelMeta

    with tempfile.TemporaryDirectory(prefix="smatch-prof-") as tmp:
        opts = ort.SessionOptions()
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "ort")
        if threads:
            opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        meta = ModelMeta.from_props(dict(sess.get_modelmeta().custom_metadata_map), source=str(path))
        x = np.random.default_rng(0).random((batch, 3, meta.img_size, meta.img_size), dtype=np.float32)
        sess.run(None, {meta.input_name: x})  # warm-up, excluded below by skipping the first run's events
        for _ in range(iters):
            sess.run(None, {meta.input_name: x})
        events = json.loads(Path(sess.end_profiling()).read_text())
    per_op: dict[str, float] = {}
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    t_min = runs[1]["ts"] if len(runs) > 1 else 0  # drop the warm-up run
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= t_min:
            op = e.get("args", {}).get("op_name", "?")
            per_op[op] = per_op.get(op, 0.0) + e["dur"] / 1e3
    total = sum(per_op.values()) or 1.0
    ranked = sorted(per_op.items(), key=lambda kv: -kv[1])[:top]
    return [(op, ms / iters, ms / total) for op, ms in ranked]


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        sys.exit(_worker_main(sys.argv[2]))
    print(
        "usage: python -m simplematch.bench --worker SPEC.json (internal: use `smatch bench`)",
        file=sys.stderr,
    )
    sys.exit(2)
