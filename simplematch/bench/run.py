"""``run_bench``: plan, measure, report."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from simplematch.bench import report
from simplematch.bench.machine import environment
from simplematch.bench.measure import measure_inference, measure_train_memory
from simplematch.bench.options import NUM_KPS
from simplematch.bench.plan import Log, check_options, make_plan


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
    opts = check_options(
        checkpoint=checkpoint, models=models, runtimes=runtimes, batches=batches, warmup=warmup, iters=iters,
        repeats=repeats, train_memory=train_memory, preset=preset, overrides=overrides, device=device,
        json_path=json_path, num_kps=num_kps, threads=threads, force=force,
    )  # fmt: skip
    desc, versions = environment(opts.device)
    versions["threads"] = threads or "default"
    with tempfile.TemporaryDirectory(prefix="smatch-bench-") as tmp_name:
        workdir = Path(tmp_name)
        plan = make_plan(opts, workdir, say)
        results = measure_inference(plan, opts, workdir, say)
        train_rows = measure_train_memory(plan, opts, workdir, say) if opts.train_memory else None
    doc = report.bench_document(desc, versions, plan.model_sha, results, plan.skipped, train_rows)
    if opts.json_file is not None:
        report.write_json(opts.json_file, doc)
    return doc
