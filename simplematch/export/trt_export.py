"""Build a serialized TensorRT engine from the exported ONNX (``smatch export --format trt``).

NOT EXERCISED BY THIS REPOSITORY'S CI: TensorRT cannot be installed on the CI machines (no NVIDIA GPU,
and PyPI only carries stubs that download from NVIDIA). The code follows the TensorRT 10.x / 11.x Python
API documentation; its tests run only where ``tensorrt`` imports and a GPU is present.

Engine: explicit batch, one optimisation profile (batch min/opt/max), a timing cache kept next to the
final engine. The network is always *strongly typed*, built from the ONNX of the requested precision
(``--fp16`` exports the float16 ONNX first, LayerNorm/softmax kept in float32): the same code path on
10.x (where the flag opts in) and 11.x (where weak typing and ``BuilderFlag.FP16`` are gone), and the
engine computes in exactly the precision that the ONNX parity check measured. TF32 is switched off for
fp32 engines: it is on by default on Ampere+ GPUs and alone exceeds the 1e-4 fp32 parity limit.
Writes ``model.engine`` and ``model.engine.json`` (the same metadata as the ONNX file, plus the
TensorRT parity numbers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx

from simplematch.errors import SimpleMatchError
from simplematch.files import atomic_path, atomic_write_text
from simplematch.metadata import ModelMeta

TRT_MISSING = SimpleMatchError(
    "TensorRT is not installed (the Python package `tensorrt` cannot be imported)",
    "on a machine with an NVIDIA GPU and driver run `pip install 'simplematch[trt]'`"
    " (TensorRT 10+ from NVIDIA), or use --format onnx",
)


def import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except Exception as err:  # ImportError, or the PyPI stub failing to load its libraries
        raise SimpleMatchError(TRT_MISSING.problem, TRT_MISSING.fix) from err  # a fresh error per call
    return trt


def read_meta(onnx_path: Path) -> ModelMeta:
    model = onnx.load(str(onnx_path), load_external_data=False)
    return ModelMeta.from_props({p.key: p.value for p in model.metadata_props}, source=str(onnx_path))


def build_engine(
    onnx_path: Path,
    out: Path,
    *,
    fp16: bool,
    batch: int | None,
    max_batch: int = 32,
    workspace_gib: float = 4.0,
    timing_cache: Path | None = None,
) -> dict[str, Any]:
    """Build ``out`` (+ ``out.json`` sidecar) from ``onnx_path`` (already exported in the wanted precision).

    ``timing_cache`` (default ``out.timing.cache``) is read if present and updated after the build, so a
    rebuild of the same model on the same GPU skips most kernel timing.
    """
    trt = import_tensorrt()
    meta = read_meta(onnx_path)
    if fp16 != (meta.precision == "fp16"):
        raise SimpleMatchError(
            f"{onnx_path} is {meta.precision} but a {'fp16' if fp16 else 'fp32'} engine was asked for",
            "export the ONNX with the same --fp16 setting",
        )
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if flag is None else 1 << int(flag))  # explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise SimpleMatchError(
            f"TensorRT cannot parse {onnx_path}: {errors}", "re-export with a newer --opset"
        )
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
    if not fp16 and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    s = meta.img_size
    lo, opt, hi = (batch, batch, batch) if batch else (1, min(8, max_batch), max_batch)
    profile = builder.create_optimization_profile()
    profile.set_shape(meta.input_name, (lo, 3, s, s), (opt, 3, s, s), (hi, 3, s, s))
    config.add_optimization_profile(profile)
    cache_path = Path(timing_cache) if timing_cache else out.with_suffix(out.suffix + ".timing.cache")
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    # A cache from another TensorRT version or GPU is ignored rather than failing the build.
    config.set_timing_cache(cache, ignore_mismatch=True)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise SimpleMatchError(
            "TensorRT failed to build the engine (see the log above)", "check GPU memory and driver"
        )
    with atomic_path(out) as tmp:
        tmp.write_bytes(bytes(serialized))
    write_sidecar(onnx_path, out, precision=meta.precision)
    try:
        with atomic_path(cache_path) as tmp:
            tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    except (OSError, SimpleMatchError):
        pass  # the cache only speeds up rebuilds; failing to save it must not fail the export
    return {"tensorrt": trt.__version__, "profile": [lo, opt, hi], "strongly_typed": flag is not None}


def write_sidecar(
    onnx_path: Path, engine: Path, *, precision: str, parity: dict[str, Any] | None = None
) -> Path:
    """``engine.json``: the ONNX file's metadata, with the engine's precision and (if given) its parity."""
    import json

    from simplematch.runtime.backends import ENGINE_ENV_KEY, current_engine_env

    meta = read_meta(onnx_path)
    meta.precision = precision
    if parity is not None:
        meta.parity = parity
    side = engine.with_suffix(engine.suffix + ".json")
    props = meta.to_props()
    # What the engine is tied to (TensorRT version, GPU, compute capability): the runtime refuses a mismatch.
    props[ENGINE_ENV_KEY] = json.dumps(current_engine_env(), sort_keys=True)
    atomic_write_text(side, json.dumps(props, indent=2, sort_keys=True) + "\n")
    return side
