"""What ``smatch bench`` runs: the options checked (every refusal happens here, before any measurement),
the model resolved (checkpoint, random-init preset, or ``--model`` files) and one target per runtime.

A runtime that cannot run here (TensorRT absent, CUDA absent, failed export) becomes a ``skipped`` entry
with its reason instead of a target.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simplematch import validate
from simplematch.bench.executors import Executor, for_model_file, for_runtime
from simplematch.bench.machine import check_device
from simplematch.bench.options import (
    DEFAULT_PRESET,
    DEFAULT_RUNTIMES,
    ENGINE_SUFFIXES,
    MODEL_SUFFIXES,
    RUNTIMES,
)
from simplematch.errors import SimpleMatchError, first_line

Log = Callable[[str], None]


@dataclass(frozen=True)
class BenchOptions:
    """The checked options of one ``smatch bench`` run."""

    runtimes: list[str]  # runtimes to export / run from the checkpoint (not the --model files)
    models: list[Path]
    batches: list[int]
    warmup: int
    iters: int
    repeats: int
    train_memory: bool
    preset: str | None
    overrides: dict[str, Any]  # the random-init overrides actually given (no None values)
    checkpoint: Path | None
    device: str
    json_file: Path | None
    num_kps: int
    threads: int | None


@dataclass(frozen=True)
class Target:
    """One model to time at every batch size."""

    label: str  # the "runtime" of its result rows
    executor: Executor
    path: Path
    user_file: bool  # a --model file: its worker errors are the user's, not a skip


@dataclass
class Plan:
    ckpt_dir: Path | None
    model_sha: str
    targets: list[Target] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def skip(self, runtime: str, reason: str) -> None:
        self.skipped.append({"runtime": runtime, "reason": reason})


# --------------------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------------------
def check_options(
    *,
    checkpoint: str | Path | None,
    models: Sequence[str | Path],
    runtimes: Sequence[str] | None,
    batches: Sequence[int],
    warmup: int,
    iters: int,
    repeats: int,
    train_memory: bool,
    preset: str | None,
    overrides: dict[str, Any] | None,
    device: str,
    json_path: str | Path | None,
    num_kps: int,
    threads: int | None,
    force: bool,
) -> BenchOptions:
    """The options of :func:`simplematch.bench.run_bench`, checked in the order their refusals are met."""
    runtimes = _checkpoint_runtimes(runtimes, models, checkpoint)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    _refuse_random_init_options(checkpoint, preset, given)
    runtimes, batches = _check_runs(runtimes, batches, models, train_memory)
    _check_counts(warmup, iters, repeats, threads, num_kps)
    if runtimes or train_memory or checkpoint is not None:
        from simplematch.extras import require

        require("train", "benchmarking a checkpoint or the torch/export runtimes (only --model runs without)")
    device = check_device(device)
    json_file = validate.output_file(json_path, "--json", suffixes=(".json",), inputs=models, force=force)
    model_files = [_check_model_file(Path(m), batches) for m in models]
    ckpt = _check_checkpoint(Path(checkpoint)) if checkpoint is not None else None
    return BenchOptions(
        runtimes=runtimes, models=model_files, batches=batches, warmup=warmup, iters=iters, repeats=repeats,
        train_memory=train_memory, preset=preset, overrides=given, checkpoint=ckpt, device=device,
        json_file=json_file, num_kps=num_kps, threads=threads,
    )  # fmt: skip


def _checkpoint_runtimes(
    runtimes: Sequence[str] | None, models: Sequence[str | Path], checkpoint: str | Path | None
) -> list[str]:
    """The runtimes that run from the checkpoint: the default set unless only --model files are given."""
    runtimes = list(runtimes) if runtimes is not None else ([] if models else list(DEFAULT_RUNTIMES))
    runtimes = [r for r in runtimes if r != "none"]  # `--runtime none`: only --model files / --train-memory
    if not (models and checkpoint is None):
        return runtimes
    # With only --model files, `--runtime onnx|trt` names the engine that runs them, which each file's
    # suffix already decides. Any other runtime would export its own model from a checkpoint.
    kinds = {"trt" if Path(m).suffix.lower() in ENGINE_SUFFIXES else "onnx" for m in models}
    foreign = [r for r in runtimes if r not in kinds]
    if foreign:
        raise SimpleMatchError(
            f"--runtime {', '.join(foreign)} exports a model from a checkpoint, and none was given",
            "pass --checkpoint DIR, or drop --runtime to benchmark the --model files alone",
        )
    return []


def _refuse_random_init_options(checkpoint: str | Path | None, preset: str | None, given: dict) -> None:
    if checkpoint is not None and (preset is not None or given):
        flags = ["--preset"] * (preset is not None) + [f"--{k.replace('_', '-')}" for k in given]
        raise SimpleMatchError(
            f"{', '.join(flags)} describe the random-init model, and --checkpoint {checkpoint} is measured as"
            " saved",
            "drop them to measure the checkpoint, or drop --checkpoint to measure that random-init model",
        )


def _check_runs(
    runtimes: list[str], batches: Sequence[int], models: Sequence[str | Path], train_memory: bool
) -> tuple[list[str], list[int]]:
    """(runtimes, batch sizes) without duplicates; refuses an empty run and unknown names."""
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
    unique = list(dict.fromkeys(int(b) for b in batches))
    if not unique or any(b < 1 for b in unique):
        raise SimpleMatchError(f"batch sizes {unique} are invalid", "pass positive integers, e.g. --batch 1")
    return list(dict.fromkeys(runtimes)), unique


def _check_counts(warmup: int, iters: int, repeats: int, threads: int | None, num_kps: int) -> None:
    if warmup < 0 or iters < 1 or repeats < 1:
        raise SimpleMatchError("--warmup must be >= 0, --iters and --repeats >= 1", "pass e.g. --iters 10")
    if threads is not None and threads < 1:
        raise SimpleMatchError(f"--threads {threads} is invalid", "pass a positive thread count")
    if num_kps < 1:
        raise SimpleMatchError("the number of keypoints must be >= 1", "use the default 30")


def _check_model_file(path: Path, batches: Sequence[int]) -> Path:
    if not path.is_file():
        raise SimpleMatchError(f"--model {path} not found", "pass an existing .onnx or .engine file")
    if path.suffix.lower() not in MODEL_SUFFIXES:
        raise SimpleMatchError(
            f"--model {path} is not .onnx/.engine", "pass a model written by `smatch export`"
        )
    _check_fixed_batch(path, batches)
    return path


def _check_checkpoint(ckpt: Path) -> Path:
    from simplematch import validate

    return validate.checkpoint_dir(ckpt)


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


# --------------------------------------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------------------------------------
def make_plan(opts: BenchOptions, workdir: Path, say: Log) -> Plan:
    """The model every runtime measures, its exports under ``workdir``, and what is skipped and why."""
    from simplematch.files import sha256_file

    ckpt_dir = _resolve_checkpoint(opts, workdir, say)
    if ckpt_dir is not None:
        sha = sha256_file(ckpt_dir / "model.safetensors")
    else:
        sha = ",".join(sha256_file(m) for m in opts.models)
    plan = Plan(ckpt_dir=ckpt_dir, model_sha=sha)
    for rt in opts.runtimes:
        _add_runtime(plan, rt, opts.device, workdir, say)
    for m in opts.models:
        label, executor = f"model:{m.name}", for_model_file(m)
        reason = executor.available(opts.device)
        if reason:
            plan.skip(label, reason)
        else:
            plan.targets.append(Target(label, executor, m, user_file=True))
    return plan


def _resolve_checkpoint(opts: BenchOptions, workdir: Path, say: Log) -> Path | None:
    """The checkpoint the runtimes export from: the given one, or a random-init model (None: only files)."""
    if opts.checkpoint is not None:
        return opts.checkpoint
    if not (opts.runtimes or opts.train_memory):
        return None
    from simplematch.bench.random_model import build_random_checkpoint

    say(f"building a randomly initialised model from preset {opts.preset}")
    preset = opts.preset or DEFAULT_PRESET
    return build_random_checkpoint(preset, opts.overrides, workdir / "ckpt", opts.batches, opts.device)


def _add_runtime(plan: Plan, runtime: str, device: str, workdir: Path, say: Log) -> None:
    executor = for_runtime(runtime)
    reason = executor.available(device)
    if reason:
        plan.skip(runtime, reason)
        return
    assert plan.ckpt_dir is not None
    if runtime in ("torch", "torch-amp"):
        plan.targets.append(Target(runtime, executor, plan.ckpt_dir, user_file=False))
        return
    try:
        path = _export(runtime, plan.ckpt_dir, workdir, say)
    except SimpleMatchError as err:
        plan.skip(runtime, f"export failed: {err}")
        return
    plan.targets.append(Target(runtime, executor, path, user_file=False))


def _export(runtime: str, ckpt_dir: Path, workdir: Path, say: Log) -> Path:
    """``smatch export`` of the checkpoint for ``runtime``, parity check on."""
    from simplematch.export import export_checkpoint

    fmt = "trt" if runtime.startswith("trt") else "onnx"
    fp16, int8 = runtime.endswith("-fp16"), runtime == "onnx-int8"
    suffix = ".int8" if int8 else ".fp16" if fp16 else ""
    out = workdir / f"model{suffix}.{'onnx' if fmt == 'onnx' else 'engine'}"
    say(f"exporting {runtime} (parity check on)")
    if int8:
        export_checkpoint(ckpt_dir, out=out, **_int8_bench_options(workdir))
    else:
        export_checkpoint(ckpt_dir, fmt=fmt, out=out, fp16=fp16, batch=None, check=True)
    return out


def _int8_bench_options(workdir: Path) -> dict[str, Any]:
    """``onnx-int8`` for throughput: calibrated on the export's bundled photos copied under ``workdir``
    (speed does not depend on what the ranges were calibrated on) and with the accuracy gate off -- a
    random-init model's flat similarity maps make agreement meaningless; ``smatch export --int8`` is where
    accuracy is gated."""
    import shutil

    from simplematch.export.parity import PARITY_IMAGES

    calib = workdir / "calib"
    shutil.copytree(PARITY_IMAGES, calib, dirs_exist_ok=True)
    return {"int8": True, "calib_data": calib, "int8_min_agreement": 0.0}
