"""The measurements of a :class:`~simplematch.bench.plan.Plan`: every cell runs ``repeats`` fresh worker
processes and keeps the per-field median."""

from __future__ import annotations

import functools
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from simplematch.bench import report
from simplematch.bench.options import TRAIN_MODES
from simplematch.bench.plan import BenchOptions, Log, Plan, Target
from simplematch.bench.worker import run_worker
from simplematch.errors import SimpleMatchError


def measure_inference(plan: Plan, opts: BenchOptions, workdir: Path, say: Log) -> list[dict[str, Any]]:
    """One result row per target x batch; a target whose worker fails is skipped from that batch on."""
    rows = []
    for target in plan.targets:
        for b in opts.batches:
            spec, label = _infer_spec(target, b, opts), f"{target.label} batch {b}"
            line = functools.partial(report.cell_line, target.label, b)
            runs, error = _repeat(spec, workdir, label, opts.repeats, say, line)
            if error and target.user_file:
                raise SimpleMatchError(error)
            if not runs:
                plan.skip(target.label, error)
                break
            rows.append(report.result_row(target.label, b, _median_result(runs)))
    return rows


def measure_train_memory(plan: Plan, opts: BenchOptions, workdir: Path, say: Log) -> list[dict[str, Any]]:
    """One row per Table 11 mode, at the largest batch; any worker failure is an error."""
    assert plan.ckpt_dir is not None
    batch, rows = max(opts.batches), []
    for mode in TRAIN_MODES:
        spec = dict(executor="train-memory", mode=mode, path=str(plan.ckpt_dir), batch=batch,
                    device=opts.device, num_kps=opts.num_kps, threads=opts.threads)  # fmt: skip
        line = functools.partial(report.train_line, mode, batch)
        runs, error = _repeat(spec, workdir, f"train-memory {mode}", opts.repeats, say, line)
        if error:
            raise SimpleMatchError(error)
        rows.append(report.train_row(mode, batch, _median_result(runs)))
    return rows


def _infer_spec(target: Target, batch: int, opts: BenchOptions) -> dict[str, Any]:
    return dict(executor=target.executor.name, path=str(target.path), batch=batch, warmup=opts.warmup,
                iters=opts.iters, device=opts.device, num_kps=opts.num_kps, threads=opts.threads)  # fmt: skip


def _repeat(
    spec: dict[str, Any],
    workdir: Path,
    label: str,
    repeats: int,
    say: Log,
    line: Callable[[int, int, dict], str],
) -> tuple[list[dict[str, Any]], str | None]:
    """(results, first user error) of up to ``repeats`` fresh workers, each logged: it stops at that error."""
    runs = []
    for r in range(repeats):
        res = run_worker(spec, workdir, label)
        if "error" in res:
            return runs, res["error"]
        runs.append(res)
        say(line(r, repeats, res))
    return runs, None


def _median(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(statistics.median(vals)) if vals else None


def _median_result(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [k for k, v in runs[0].items() if isinstance(v, int | float) and not isinstance(v, bool)]
    merged = dict(runs[0])
    merged.update({k: _median([r.get(k) for r in runs]) for k in keys})
    return merged
