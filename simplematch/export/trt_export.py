"""Build a serialized TensorRT engine from the exported ONNX (``smatch export --format trt``).

NOT EXERCISED BY THIS REPOSITORY'S CI: TensorRT cannot be installed on the CI machines (no NVIDIA GPU,
and PyPI only carries stubs that download from NVIDIA). The code follows the TensorRT 10.x / 11.x Python
API documentation; its tests run only where ``tensorrt`` imports and a GPU is present.

Engine: explicit batch, one optimisation profile (batch min/opt/max), a timing cache kept next to the
engine, fp16 through the mechanism the installed major version supports (the FP16 builder flag on 10.x;
a strongly typed network built from the fp16 ONNX on 11.x, where weak typing is gone). Writes
``model.engine`` and ``model.engine.json`` (the same metadata as the ONNX file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx

from simplematch.errors import SimpleMatchError
from simplematch.io import atomic_path, atomic_write_text
from simplematch.metadata import ModelMeta

TRT_MISSING = SimpleMatchError(
    "TensorRT is not installed (the Python package `tensorrt` cannot be imported)",
    "on a machine with an NVIDIA GPU and driver run `pip install 'simplematch[trt]'` (TensorRT 10+ from NVIDIA),"
    " or use --format onnx",
)


def import_tensorrt() -> Any:
    try:
        import tensorrt as trt  # noqa: PLC0415 - optional, lazy
    except Exception as err:  # ImportError, or the PyPI stub failing to load its libraries
        raise TRT_MISSING from err
    return trt


def build_engine(
    onnx_path: Path,
    out: Path,
    *,
    fp16: bool,
    batch: int | None,
    max_batch: int = 32,
    workspace_gib: float = 4.0,
) -> dict[str, Any]:
    """Build ``out`` (+ ``out.json`` sidecar, + ``out.timing.cache``) from ``onnx_path``."""
    trt = import_tensorrt()
    model = onnx.load(str(onnx_path))
    props = {p.key: p.value for p in model.metadata_props}
    meta = ModelMeta.from_props(props, source=str(onnx_path))
    major = int(trt.__version__.split(".")[0])
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = fp16 and major >= 11
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)  # explicit batch is the only mode in TensorRT 10+
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise SimpleMatchError(f"TensorRT cannot parse {onnx_path}: {errors}", "re-export with a newer --opset")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
    if fp16 and not strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
    s = meta.img_size
    lo, opt, hi = (batch, batch, batch) if batch else (1, min(8, max_batch), max_batch)
    profile = builder.create_optimization_profile()
    profile.set_shape(meta.input_name, (lo, 3, s, s), (opt, 3, s, s), (hi, 3, s, s))
    config.add_optimization_profile(profile)
    cache_path = out.with_suffix(out.suffix + ".timing.cache")
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise SimpleMatchError("TensorRT failed to build the engine (see the log above)", "check GPU memory and driver")
    with atomic_path(out) as tmp:
        tmp.write_bytes(bytes(serialized))
        meta.precision = "fp16" if fp16 else "fp32"
        atomic_write_text(out.with_suffix(out.suffix + ".json"), meta.to_json() + "\n")
    with atomic_path(cache_path) as tmp:
        tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    return {"tensorrt": trt.__version__, "profile": [lo, opt, hi], "strongly_typed": strongly_typed}

