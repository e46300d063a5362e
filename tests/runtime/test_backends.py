"""Runtime backends (simplematch.runtime.backends): onnxruntime on CPU, the CUDA / TensorRT requests.

ONNX models are the tiny graphs of tests/helpers.py (make_onnx).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from simplematch.errors import SimpleMatchError
from simplematch.runtime import OnnxBackend, load_backend
from simplematch.runtime.backends import TensorRTBackend, engine_sidecar
from tests.helpers import S, make_meta, make_onnx


# ----------------------------------------------------------------------------------------------------------
# Backends
# ----------------------------------------------------------------------------------------------------------
def test_onnx_backend_encodes_and_validates(models: dict[str, Path], tmp_path: Path) -> None:
    be = load_backend(models["conv"], "cpu")
    assert isinstance(be, OnnxBackend) and be.provider == "CPUExecutionProvider"
    assert be.meta.img_size == S
    out = be.encode(np.random.default_rng(0).random((3, 3, S, S), dtype=np.float32))
    assert out.shape == (3, 8, S // 4, S // 4) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    with pytest.raises(SimpleMatchError, match="model input must be"):
        be.encode(np.zeros((1, 3, 16, 16), np.float32))
    # The public match of the Backend protocol: a features-only file says how to get the matching graph.
    from simplematch.runtime.backends import Backend

    assert isinstance(be, Backend) and not be.matches
    kps = np.zeros((1, 1, 2), np.float32)
    with pytest.raises(SimpleMatchError, match="--with-matching"):
        be.match(
            np.zeros((1, 3, S, S), np.float32), np.zeros((1, 3, S, S), np.float32), kps, np.ones((1, 1), bool)
        )

    no_meta = make_onnx(tmp_path / "nometa.onnx", with_meta=False)
    with pytest.raises(SimpleMatchError, match="no simplematch metadata"):
        OnnxBackend(no_meta)
    wrong = make_onnx(tmp_path / "wrong.onnx", input_size=64, meta=make_meta(img_size=S))
    with pytest.raises(SimpleMatchError, match="metadata says img_size=32"):
        OnnxBackend(wrong)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(models["conv"].read_bytes()[:200])
    with pytest.raises(SimpleMatchError, match="cannot load ONNX model"):
        OnnxBackend(corrupt)
    with pytest.raises(SimpleMatchError, match="model not found"):
        OnnxBackend(tmp_path / "missing.onnx")
    with pytest.raises(SimpleMatchError, match="unknown model format"):
        load_backend(tmp_path / "model.pt")
    with pytest.raises(SimpleMatchError, match="unknown device"):
        OnnxBackend(models["conv"], device="tpu")


def test_cuda_request_without_cuda_provider(
    models: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import onnxruntime as ort

    fallback = OnnxBackend(models["conv"], device="cuda", allow_fallback=True)
    if fallback.provider != "CPUExecutionProvider":
        pytest.skip(f"CUDA is usable here ({fallback.provider})")
    # One line on stderr, no Python warning with its source line.
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "warning: CUDA unavailable to onnxruntime; running on CPU (--allow-fallback)"
    )
    assert fallback.encode(np.zeros((1, 3, S, S), np.float32)).shape == (1, 8, 8, 8)
    # Even if the wheel *claims* CUDA, what the session really runs on decides.
    monkeypatch.setattr(
        ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    with pytest.raises(SimpleMatchError, match="onnxruntime-gpu"):
        OnnxBackend(models["conv"], device="cuda")


def test_tensorrt_backend_errors_without_tensorrt(
    models: dict[str, Path], tmp_path: Path, monkeypatch
) -> None:
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not an engine")
    with pytest.raises(SimpleMatchError, match="GPU only"):
        load_backend(engine, "cpu")
    with pytest.raises(SimpleMatchError, match="sidecar"):
        TensorRTBackend(engine)
    engine_sidecar(engine).write_text(make_meta().to_json())
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    with pytest.raises(
        SimpleMatchError, match=r"TensorRT Python package is not installed.*simplematch\[trt\]"
    ):
        load_backend(engine, "cuda")


@pytest.mark.gpu
def test_tensorrt_engine_matches_onnxruntime(models: dict[str, Path], tmp_path: Path) -> None:
    trt = pytest.importorskip("tensorrt")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(models["conv"].read_bytes())
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("image", (1, 3, S, S), (2, 3, S, S), (4, 3, S, S))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    engine = tmp_path / "model.engine"
    engine.write_bytes(bytes(serialized))
    engine_sidecar(engine).write_text(make_meta().to_json())
    be = load_backend(engine, "cuda")
    images = np.random.default_rng(0).random((6, 3, S, S), dtype=np.float32)  # > max batch: chunked
    np.testing.assert_allclose(be.encode(images), OnnxBackend(models["conv"]).encode(images), atol=1e-3)
