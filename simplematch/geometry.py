"""Feature-map geometry shared by the PyTorch and the numpy matching (torch-free, array-agnostic).

The functions here use only arithmetic and comparisons, so the same code serves ``torch.Tensor`` and
``numpy.ndarray`` (and plain numbers): written once instead of once per array library.
"""

from __future__ import annotations

from typing import Any

# The fine head is at exactly 1/4 of the input (paper Fig. 3): an S x S image gives an (S/4) x (S/4) map.
FEATURE_STRIDE = 4


def feature_side(img_size: int) -> int:
    """Side of the fine feature map of an ``img_size`` x ``img_size`` input."""
    return img_size // FEATURE_STRIDE


def window_size(window: int, h: int, w: int) -> tuple[int, int]:
    """(ky, kx): ``window`` <= 0 or >= the side means the whole axis."""
    return (h if window <= 0 or window >= h else window), (w if window <= 0 or window >= w else window)


def cells_to_pixels(cells: Any, stride: float, coord: str = "corner") -> Any:
    """Cell-unit positions -> pixels: ``i * s`` (corner, released) or ``(i + 0.5) * s`` (center)."""
    if coord == "center":
        return (cells + 0.5) * stride
    if coord != "corner":
        raise ValueError(f"unknown coord convention {coord!r}")
    return cells * stride
