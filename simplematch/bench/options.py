"""What ``smatch bench`` can be asked for: runtimes, Table 11 modes, result keys, and option parsing."""

from __future__ import annotations

import re
from collections.abc import Iterable

from simplematch.errors import SimpleMatchError

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
TRAIN_KEYS = ("peak_mem_mib", "delta_mib", "baseline_mib")  # a train_memory row, before its "batch"
NUM_KPS = 30  # keypoints per pair for the matching share (SPair-like queries)
MODEL_SUFFIXES = (".onnx", ".engine", ".plan")
ENGINE_SUFFIXES = (".engine", ".plan")  # TensorRT engines; every other --model is an .onnx
MIB = 2**20


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
