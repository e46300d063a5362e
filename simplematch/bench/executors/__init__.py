"""One executor per way of measuring; the worker process finds its executor by name in :data:`EXECUTORS`.

Every module here imports torch / onnxruntime / TensorRT inside the functions that run them, so this
registry loads in the runtime-only install and a runtime worker never imports torch.
"""

from __future__ import annotations

from pathlib import Path

from simplematch.bench.executors.base import Executor, Session, measure_inference
from simplematch.bench.executors.runtime_backends import OnnxRuntimeExecutor, TensorRTExecutor
from simplematch.bench.executors.torch_eager import TorchExecutor
from simplematch.bench.executors.train_memory import TrainMemoryExecutor, table11_predict
from simplematch.bench.options import ENGINE_SUFFIXES

EXECUTORS: dict[str, Executor] = {
    e.name: e
    for e in (
        TorchExecutor(),
        TorchExecutor(amp=True),
        OnnxRuntimeExecutor(),
        TensorRTExecutor(),
        TrainMemoryExecutor(),
    )  # fmt: skip
}


def for_runtime(runtime: str) -> Executor:
    """The executor of a ``--runtime`` (see RUNTIMES): torch runs the checkpoint, the rest its export."""
    if runtime in ("torch", "torch-amp"):
        return EXECUTORS[runtime]
    return EXECUTORS["tensorrt" if runtime.startswith("trt") else "onnxruntime"]


def for_model_file(path: Path) -> Executor:
    """The executor of a ``--model`` file, which its suffix decides."""
    return EXECUTORS["tensorrt" if path.suffix.lower() in ENGINE_SUFFIXES else "onnxruntime"]


__all__ = ["EXECUTORS", "Executor", "Session", "for_model_file", "for_runtime", "measure_inference",
           "table11_predict"]  # fmt: skip
