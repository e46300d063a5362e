"""TensorRT engine bookkeeping without TensorRT: the engine-environment record and its mismatch check.

The TensorRT execution provider itself (``--device tensorrt``) needs an NVIDIA GPU, onnxruntime-gpu and
TensorRT: ``test_tensorrt_ep_runs_and_caches`` is marked ``gpu`` and skips without ``tensorrt``; CI does not
exercise it (scripts/gpu_check.sh runs it on a GPU machine).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import simplematch.runtime.backends as backends
from simplematch.errors import SimpleMatchError
from simplematch.metadata import ModelMeta

HERE = {"tensorrt": "10.3.0", "gpu": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9"}


def _meta() -> ModelMeta:
    return ModelMeta(version="0", backbone="resnet18", img_size=64, stride=4.0, window=15, beta=0.02,
                     coord="corner", mean=[0.0] * 3, std=[1.0] * 3, precision="fp32", opset=18,
                     checkpoint_sha256="")  # fmt: skip


def test_mismatch_rules():
    assert backends.engine_env_mismatch(HERE, HERE) is None
    other_gpu_same_arch = {**HERE, "gpu": "NVIDIA L40S"}  # same sm_89: the engine runs
    assert backends.engine_env_mismatch(HERE, other_gpu_same_arch) is None
    why = backends.engine_env_mismatch(HERE, {**HERE, "compute_capability": "9.0", "gpu": "NVIDIA H200"})
    assert why and "compute capability 8.9" in why and "9.0" in why and "NVIDIA H200" in why
    why = backends.engine_env_mismatch(HERE, {**HERE, "tensorrt": "10.9.0"})
    assert why and "TensorRT 10.3.0" in why and "10.9.0" in why
    assert (
        backends.engine_env_mismatch(
            HERE, {"tensorrt": "unknown", "gpu": "?", "compute_capability": "unknown"}
        )
        is None
    )


def test_native_engine_with_a_foreign_sidecar_is_refused_before_tensorrt_loads(tmp_path, monkeypatch):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not an engine")
    props = _meta().to_props()
    props[backends.ENGINE_ENV_KEY] = json.dumps(HERE)
    backends.engine_sidecar(engine).write_text(json.dumps(props))
    monkeypatch.setattr(backends, "current_engine_env", lambda: {**HERE, "compute_capability": "9.0"})
    with pytest.raises(
        SimpleMatchError, match="does not fit this machine: built with compute capability 8.9"
    ) as e:
        backends.TensorRTBackend(engine, device="cuda")
    assert "\n" not in str(e.value) and "rebuild" in str(e.value)


def test_trt_ep_cache_record_mismatch_is_refused(tmp_path, monkeypatch):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"x")
    cache = backends.trt_cache_dir(model)
    cache.mkdir()
    (cache / backends.ENGINE_ENV_FILE).write_text(json.dumps(HERE))
    monkeypatch.setattr(backends, "current_engine_env", lambda: {**HERE, "tensorrt": "10.9.0"})
    with pytest.raises(SimpleMatchError, match="TensorRT 10.3.0 .* TensorRT 10.9.0") as e:
        backends.trt_ep_provider(model, fp16=True)
    assert f"delete {cache}" in str(e.value)
    monkeypatch.setattr(backends, "current_engine_env", lambda: dict(HERE))
    name, opts = backends.trt_ep_provider(model, fp16=True)
    assert name == "TensorrtExecutionProvider" and opts["trt_fp16_enable"] is True
    assert opts["trt_engine_cache_enable"] and opts["trt_engine_cache_path"] == str(cache)


def test_tensorrt_device_without_the_provider_is_one_line_and_leaves_nothing(tmp_path, tiny_onnx):
    """On a machine without the TensorRT EP (this one), --device tensorrt is refused, not silently CPU."""
    path = tmp_path / "model.onnx"  # a real export, in a folder of its own: the engine cache goes beside it
    shutil.copy(tiny_onnx, path)
    # onnxruntime-gpu lists the TensorRT EP as available even without TensorRT's libraries; the session
    # then falls back, which is the case this test is for. Only a real TensorRT install can make it run.
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed: the EP may really run here")
    with pytest.raises(SimpleMatchError, match="TensorRT requested but") as e:
        backends.OnnxBackend(path, device="tensorrt")
    assert "\n" not in str(e.value)
    assert not backends.trt_cache_dir(Path(path)).exists()


@pytest.mark.gpu
def test_tensorrt_ep_runs_and_caches(tmp_path):
    pytest.importorskip("tensorrt")
    import torch

    from simplematch.checkpoint import save_checkpoint
    from simplematch.config import Config
    from simplematch.export import export_checkpoint
    from simplematch.model import SimpleMatch

    torch.manual_seed(0)
    cfg = Config(backbone="resnet18", img_size=64, align_dim=16, finetune="full")
    save_checkpoint(SimpleMatch(cfg), cfg, tmp_path / "ck")
    path = Path(export_checkpoint(tmp_path / "ck")["path"])
    x = np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)
    ref = backends.OnnxBackend(path).encode(x)
    trt = backends.OnnxBackend(path, device="tensorrt")
    assert trt.provider == "TensorrtExecutionProvider"
    assert np.abs(trt.encode(x) - ref).max() <= 1e-3
    record = json.loads((backends.trt_cache_dir(path) / backends.ENGINE_ENV_FILE).read_text())
    assert record["compute_capability"] != "unknown"
