"""Which optional extra provides each heavy dependency, and the one-line error when it is missing.

The base install (``pip install simplematch``) is the torch-free runtime. Commands that need more check
with :func:`require` before any work; :func:`missing_module_error` turns a ``ModuleNotFoundError`` that
escapes from deeper code into the same one line. Torch-free: this module imports nothing heavy.
"""

from __future__ import annotations

import importlib.util

from simplematch.errors import SimpleMatchError

# extra -> the modules it brings that the package imports directly (pyproject.toml declares them).
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "synthetic": ("skimage",),  # first: the smallest extra that brings scikit-image
    "train": ("torch", "torchvision", "timm", "safetensors", "albumentations", "cv2", "skimage", "onnx",
              "onnxscript"),
    "trt": ("tensorrt",),
    "plots": ("matplotlib",),
    "serve": ("fastapi", "uvicorn", "python_multipart"),
}  # fmt: skip
# The first (smallest) extra that lists a module is the one to name in the fix.
MODULE_EXTRA: dict[str, str] = {}
for _extra, _modules in EXTRA_MODULES.items():
    for _module in _modules:
        MODULE_EXTRA.setdefault(_module, _extra)
MODULE_EXTRA["onnx_ir"] = "train"  # arrives with onnxscript; named here for deep imports of the exporter
MODULE_EXTRA["cuda"] = "trt"  # cuda-python
for _module in ("starlette", "pydantic", "multipart"):  # arrive with [serve]; imported by the service
    MODULE_EXTRA[_module] = "serve"


def install_hint(extra: str) -> str:
    return f"pip install 'simplematch[{extra}]'"


def _absent(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):  # a broken parent package counts as absent
        return True


def require(extra: str, what: str, modules: tuple[str, ...] | None = None) -> None:
    """Raise the one-line error when a module of ``extra`` is not installed; ``what`` names the feature."""
    missing = [m for m in (modules or EXTRA_MODULES[extra]) if _absent(m)]
    if missing:
        raise SimpleMatchError(
            f"{what} needs the [{extra}] extra ({', '.join(missing)} not installed)", install_hint(extra)
        )


def missing_module_error(err: ModuleNotFoundError) -> SimpleMatchError | None:
    """The one-line error for a missing optional dependency, or ``None`` if ``err`` is something else."""
    root = (err.name or "").split(".")[0]
    extra = MODULE_EXTRA.get(root)
    if extra is None:
        return None
    return SimpleMatchError(
        f"this command needs the [{extra}] extra ({root} is not installed)", install_hint(extra)
    )


def check_onnxruntime_install() -> None:
    """Refuse an environment holding both onnxruntime wheels: they overwrite each other's files, so which
    providers work depends on install order (a silent CPU fallback, or a broken import)."""
    import importlib.metadata as md

    present = []
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            md.version(dist)
        except md.PackageNotFoundError:
            continue
        present.append(dist)
    if len(present) == 2:
        raise SimpleMatchError(
            "onnxruntime and onnxruntime-gpu are both installed; they share one module and break each other",
            "pip uninstall -y onnxruntime onnxruntime-gpu, then pip install simplematch",
        )
    if not present:
        raise SimpleMatchError(
            "onnxruntime is not installed (the runtime needs it)",
            "pip install simplematch (it takes the right one)",
        )
