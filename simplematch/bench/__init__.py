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

Modules: :mod:`~simplematch.bench.plan` (options, refusals, model, targets), :mod:`~.executors` (one per
way of measuring, run inside the worker), :mod:`~.worker` (the fresh process), :mod:`~.measure` (repeats
and medians), :mod:`~.report` (JSON document, progress lines, tables), :mod:`~.run` (the orchestrator).

No module of this package imports torch or onnxruntime at import time: the CLI stays fast and runtime
workers stay torch-free.
"""

from __future__ import annotations

from simplematch.bench.executors import table11_predict
from simplematch.bench.machine import TRT_NEEDS_CUDA, environment, tensorrt_missing
from simplematch.bench.options import (
    DEFAULT_PRESET,
    DEFAULT_RUNTIMES,
    MODEL_SUFFIXES,
    NUM_KPS,
    PAPER_TABLE11_MB,
    RESULT_KEYS,
    RUNTIMES,
    TRAIN_MODE_LABELS,
    TRAIN_MODES,
    parse_batches,
    split_values,
)
from simplematch.bench.plan import fixed_batch
from simplematch.bench.profile import profile_onnx
from simplematch.bench.report import print_bench
from simplematch.bench.run import run_bench

__all__ = [
    "DEFAULT_PRESET",
    "DEFAULT_RUNTIMES",
    "MODEL_SUFFIXES",
    "NUM_KPS",
    "PAPER_TABLE11_MB",
    "RESULT_KEYS",
    "RUNTIMES",
    "TRAIN_MODES",
    "TRAIN_MODE_LABELS",
    "TRT_NEEDS_CUDA",
    "environment",
    "fixed_batch",
    "parse_batches",
    "print_bench",
    "profile_onnx",
    "run_bench",
    "split_values",
    "table11_predict",
    "tensorrt_missing",
]
