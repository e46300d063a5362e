"""The one resource guard (beside :mod:`simplematch.validate`, the one validation layer): memory, pixels,
devices.

Every command that builds a model or decodes images asks here *before* allocating, so a size that cannot
fit is refused in one line naming the number and the fix, instead of the kernel killing the process
minutes later or an allocator traceback. Torch-free at import (torch is imported only to probe CUDA).

* :func:`check_memory`: a lower bound of one forward (or training) step of a config, against what the
  device has free. The bound is deliberately low (it only catches sizes that cannot possibly fit).
* :func:`check_pixels`: an image's pixel count against :data:`PIXEL_BUDGET` and the free RAM, read from
  the file header before anything is decoded.
* :func:`probe_device`: ``auto`` / ``cpu`` / ``cuda[:i]`` resolved once; a missing GPU is one line.
"""

from __future__ import annotations

import functools
from typing import Any

from simplematch.errors import SimpleMatchError
from simplematch.geometry import feature_side

GIB = 2**30
# Largest image decoded, in pixels: above every phone and DSLR photo (200 MP sensors bin to 50 MP files),
# below Pillow's own decompression-bomb error (2 x Image.MAX_IMAGE_PIXELS = 179 MP), so the user meets
# this one line rather than Pillow's warning or error.
PIXEL_BUDGET = 150_000_000
# Bytes per pixel while one image is decoded and prepared: the decoded RGB (3), the RGB copy Pillow's
# convert / EXIF transpose makes (3), the numpy array (3) and the resize's horizontal pass over the full
# height (small): 12 is a safe round figure.
DECODE_BYTES_PER_PIXEL = 12


def memory_lower_bound(cfg: Any, batch: int, *, training: bool) -> int:
    """Bytes that one step of ``cfg`` needs at the very least: the two input images and the two fine
    feature maps (float32), twice when training (activations + gradients), plus a ViT's resampled position
    table. The true need is several times larger; this only catches sizes that cannot possibly fit."""
    s = int(cfg.img_size)
    # Channels of the 1/4 map: the decoder width, or a lower bound of it (ResNet: align_dim; ViT: 384, the
    # width of ViT-S, the smallest timm ViT the presets use).
    channels = cfg.decoder_dim or (cfg.align_dim if cfg.family == "resnet" else 384)
    per_image = 3 * s * s + channels * feature_side(s) ** 2
    need = 2 * batch * per_image * 4 * (2 if training else 1)
    if cfg.family == "vit":
        need += (s // 14 + 1) ** 2 * 384 * 4  # the position table at its finest patch (14 px)
    return need


@functools.cache
def probe_device(device: str) -> str:
    """``device`` resolved (``auto`` -> ``cuda`` or ``cpu``) and known to exist; probed once per process.

    A CUDA device that torch cannot use (no NVIDIA driver, a CPU-only torch build, an index beyond the
    GPUs present) is refused in one line instead of a traceback from the first CUDA call."""
    name = str(device).strip().lower()
    if name in ("cpu", "mps"):
        return name
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not name.startswith("cuda"):
        raise SimpleMatchError(f"--device {device!r} is not a device", "pass auto, cpu or cuda[:N]")
    if not torch.cuda.is_available():
        raise SimpleMatchError(
            f"--device {device} was requested but torch sees no GPU (no NVIDIA driver, or a CPU-only torch)",
            "pass --device cpu (or auto), or install a CUDA build of torch on a machine with a GPU",
        )
    index = name.partition(":")[2]
    count = torch.cuda.device_count()
    if index and (not index.isdigit() or int(index) >= count):
        raise SimpleMatchError(
            f"--device {device}: this machine has {count} GPU(s)", f"pass cuda:0 to cuda:{count - 1}"
        )
    return name


def available_memory(device: str) -> tuple[int, str]:
    """(bytes available now, where: the device and its total size) on ``device`` (``cpu`` or ``cuda[:i]``).

    The message names the total, not the free amount, so it reads the same from run to run. The address
    space limit (``ulimit -v``) counts as well: it is what a process really may allocate."""
    device = probe_device(device)
    if device.startswith("cuda"):
        import torch

        free, total = torch.cuda.mem_get_info(torch.device(device))
        return int(free), f"{device} ({total / GIB:.0f} GiB)"
    import psutil

    mem = psutil.virtual_memory()
    have, what = int(mem.available), f"RAM ({mem.total / GIB:.0f} GiB)"
    limit = _address_space_limit()
    if limit is not None and limit < have:
        have, what = limit, f"the process memory limit (ulimit -v, {limit / GIB:.1f} GiB)"
    return have, what


def _address_space_limit() -> int | None:
    """``RLIMIT_AS`` minus what the process already maps, or None (no limit, or not POSIX)."""
    try:
        import resource

        import psutil
    except ImportError:  # Windows has no ``resource``
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    return max(0, soft - psutil.Process().memory_info().vms)


def check_memory(cfg: Any, batch: int, device: str, *, training: bool, fix: str | None = None) -> None:
    """Refuse up front a size that cannot fit (instead of the kernel killing the process minutes later)."""
    need = memory_lower_bound(cfg, batch, training=training)
    have, what = available_memory(device)
    if need > have:
        raise SimpleMatchError(
            f"img_size {cfg.img_size} with batch {batch} needs at least {need / GIB:.1f} GiB,"
            f" more than is free in {what}",
            fix or "lower --img-size or --batch-size",
        )


def check_pixels(path: Any, width: int, height: int) -> None:
    """Refuse an image above :data:`PIXEL_BUDGET` or too large to decode in the free RAM."""
    pixels = int(width) * int(height)
    if pixels > PIXEL_BUDGET:
        raise SimpleMatchError(
            f"image {path} is {width}x{height} ({pixels / 1e6:.0f} MP), above the"
            f" {PIXEL_BUDGET / 1e6:.0f} MP that smatch decodes",
            f"downscale it below {PIXEL_BUDGET / 1e6:.0f} megapixels (the model sees it at a few hundred px)",
        )
    need = pixels * DECODE_BYTES_PER_PIXEL
    have, what = available_memory("cpu")
    if need > have:
        raise SimpleMatchError(
            f"image {path} is {width}x{height}: decoding it needs about {need / GIB:.1f} GiB, more than is"
            f" free in {what}",
            "downscale the image or free memory",
        )
