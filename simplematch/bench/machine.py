"""What a number was measured on (device, versions) and how much memory this process holds.

torch-free: the ``--device cuda`` paths ask :mod:`simplematch.bench.cuda` (torch) about the GPU.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from simplematch.bench.options import MIB
from simplematch.errors import SimpleMatchError

TRT_NEEDS_CUDA = "TensorRT engines run on an NVIDIA GPU only (pass --device cuda)"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(device: str) -> tuple[str, dict[str, Any]]:
    """(device description, versions): what a number was measured on, recorded with every result."""
    import psutil

    import simplematch

    versions: dict[str, Any] = {
        "python": platform.python_version(),
        "simplematch": simplematch.__version__,
        "torch": _version("torch"),
        "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu"),
        "onnx": _version("onnx"),
        "timm": _version("timm"),
        "numpy": _version("numpy"),
        "tensorrt": _version("tensorrt"),
        "cpu": _cpu_name(),
        "cpu_cores": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
    }
    desc = f"cpu ({versions['cpu']}, {versions['cpu_cores']} cores)"
    if device == "cuda":
        from simplematch.bench.cuda import gpu_versions

        versions.update(gpu_versions())
        desc = f"cuda ({versions['gpu']})"
    return desc, versions


def check_device(device: str) -> str:
    device = str(device).lower()
    if device not in ("cpu", "cuda"):
        raise SimpleMatchError(f"unknown device {device!r}", "use --device cpu or --device cuda")
    if device == "cuda":
        from simplematch.bench.cuda import cuda_available

        if not cuda_available():
            raise SimpleMatchError("--device cuda but torch sees no CUDA GPU", "use --device cpu")
    return device


@functools.cache  # one import attempt per process: every trt runtime and .engine file asks
def tensorrt_missing() -> str | None:
    try:
        import tensorrt  # noqa: F401 - availability probe only
    except Exception as err:
        first = (str(err).splitlines() or [""])[0][:120]
        return f"tensorrt is not importable ({type(err).__name__}: {first})"
    return None


# --------------------------------------------------------------------------------------------------------
# Memory of this process (read inside the fresh worker processes)
# --------------------------------------------------------------------------------------------------------
def peak_rss_mib() -> float:
    """Peak resident set of this process (VmHWM; ru_maxrss where /proc is unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def current_rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / MIB


def reset_peak_rss() -> bool:
    """Linux: writing 5 to clear_refs resets VmHWM to the current RSS, so a later peak is this phase's."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def gpu_used_mib() -> float | None:
    """GPU memory this process holds per nvidia-smi (onnxruntime / TensorRT do not use torch's allocator)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_gpu_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] == str(os.getpid()) and parts[1].isdigit():
            return float(parts[1])
    return None
