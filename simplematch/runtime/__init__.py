"""Torch-free runtime: exported SimpleMatch models on onnxruntime (CPU/CUDA) or TensorRT.

Imports numpy, Pillow and onnxruntime only (TensorRT and cuda-python lazily, inside the TensorRT backend);
``tests/runtime/test_torch_free.py`` checks that importing it never pulls in torch.
"""

from simplematch.runtime.backends import Backend, OnnxBackend, TensorRTBackend, load_backend
from simplematch.runtime.matcher import Features, Matcher, MatchResult, Prepared

__all__ = [
    "Backend",
    "Features",
    "MatchResult",
    "Matcher",
    "OnnxBackend",
    "Prepared",
    "TensorRTBackend",
    "load_backend",
]
