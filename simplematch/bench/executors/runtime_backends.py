"""The torch-free runtime: an exported ``.onnx`` on onnxruntime, an ``.engine`` on TensorRT.

Both run through :mod:`simplematch.runtime` (what ``smatch infer`` uses), so a worker here never imports
torch and its peak memory is what the runtime-only install really costs.
"""

from __future__ import annotations

from typing import Any

from simplematch.bench.executors.base import Session, measure_inference
from simplematch.bench.machine import TRT_NEEDS_CUDA, gpu_used_mib, peak_rss_mib, tensorrt_missing


class OnnxRuntimeExecutor:
    name = "onnxruntime"

    def available(self, device: str) -> str | None:
        return None  # onnxruntime is a base dependency

    def run(self, spec: dict[str, Any]) -> dict[str, Any]:
        return measure_inference(_session(spec), spec)


class TensorRTExecutor(OnnxRuntimeExecutor):
    name = "tensorrt"

    def available(self, device: str) -> str | None:
        return tensorrt_missing() or (None if device == "cuda" else TRT_NEEDS_CUDA)


def _session(spec: dict[str, Any]) -> Session:
    from simplematch import calibration
    from simplematch.confidence import confidence_cues
    from simplematch.runtime.backends import OnnxBackend, load_backend
    from simplematch.runtime.matching import match_keypoints

    device = spec["device"]
    if spec.get("threads") and str(spec["path"]).lower().endswith(".onnx"):
        backend = OnnxBackend(spec["path"], device=device, threads=int(spec["threads"]))
    else:
        backend = load_backend(spec["path"], device=device)
    meta = backend.meta
    # The whole match of the Matcher: keypoints, cues and the calibrated confidence. A model without a
    # calibration applies a neutral one, so the share counts what a calibrated model costs.
    cal = calibration.from_config(meta.config) or calibration.Calibration(
        coef=(0.0,) * len(calibration.FEATURES), intercept=0.0
    )

    def match(src: Any, trg: Any, kps: Any) -> Any:
        m = match_keypoints(src, trg, kps, meta.img_size, meta.window, meta.beta, meta.coord)
        raw = {k: v for k, v in m._asdict().items() if k != "pred"}
        return calibration.with_calibrated(confidence_cues(m, meta.img_size), raw, meta.img_size, cal)

    return Session(
        encode=backend.encode,
        match=match,
        img_size=meta.img_size,
        provider=backend.provider,
        # onnxruntime / TensorRT do not use torch's allocator: nvidia-smi is what sees their GPU memory.
        peak_mem_mib=(lambda: gpu_used_mib() or 0.0) if device == "cuda" else peak_rss_mib,
    )
