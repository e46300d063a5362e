"""What torch says about the GPU: only the ``--device cuda`` paths import this module (it needs torch)."""

from __future__ import annotations

import torch


def cuda_available() -> bool:
    return torch.cuda.is_available()


def gpu_versions() -> dict[str, str | None]:
    """The GPU's name and the CUDA version torch was built with."""
    return {"gpu": torch.cuda.get_device_name(0), "cuda": torch.version.cuda}
