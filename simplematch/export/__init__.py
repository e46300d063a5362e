"""``smatch export``: checkpoint folder -> ONNX (fp32 / fp16 / int8) or TensorRT engine, with a parity check.

The logic lives in :mod:`simplematch.export.pipeline`; this package only names the public entry points.
"""

from simplematch.export.pipeline import SUFFIXES, check_output_path, default_output, export_checkpoint

__all__ = ["SUFFIXES", "check_output_path", "default_output", "export_checkpoint"]
