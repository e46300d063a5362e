"""Third-party noise (onnxruntime's native log, Pillow / torch / timm warnings) stays away from the user
unless ``--debug``: the user sees the cause in one line from smatch, not pages of library output.

Warnings issued by simplematch itself still show. :func:`onnxruntime_severity` is what the runtime
passes to onnxruntime's default logger (which, unlike a session's logger, reports the failed loading of
CUDA / TensorRT provider libraries).
"""

from __future__ import annotations

import warnings

_debug = False


def configure(debug: bool) -> None:
    """Called once by the CLI: hide warnings raised from outside simplematch unless ``debug``."""
    global _debug
    _debug = debug
    if not debug:
        # ``module`` is matched against the module the warning is attributed to.
        warnings.filterwarnings("ignore", module=r"(?!simplematch)")


def debug() -> bool:
    return _debug


def onnxruntime_severity() -> int:
    """onnxruntime's log severity: 2 (warnings) with --debug, else 4 (fatal only)."""
    return 2 if _debug else 4
