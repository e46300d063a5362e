"""Torch-free image loading and preprocessing shared by training, PyTorch evaluation and the runtime.

One function turns a file into the model's input, so the PyTorch path and the onnxruntime/TensorRT path see
bit-identical pixels: RGB, square resize with Pillow's bilinear filter, float32 in [0, 1], CHW.
ImageNet normalisation is *not* done here: it lives inside the model (and so inside the exported graph).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from simplematch.errors import SimpleMatchError, first_line

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESAMPLE = Image.Resampling.BILINEAR


def to_rgb_uint8(img: Image.Image) -> np.ndarray:
    """Any Pillow mode (L, LA, P, RGBA, I;16, I, F, CMYK...) -> (H, W, 3) uint8 RGB.

    16-bit and float images are scaled by their own range (no clipping of 16-bit data to 255); alpha is
    composited onto black so transparent regions do not leak undefined colour values.
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        arr = np.round(arr).astype(np.uint8)
        return np.repeat(arr[:, :, None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(black, rgba)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def load_image(path: str | Path, *, exif_orientation: bool = True) -> np.ndarray:
    """Read an image file -> (H, W, 3) uint8 RGB. Missing, truncated, oversized or non-image files raise
    one line.

    ``exif_orientation``: apply the EXIF Orientation tag (phone photos), so the pixels -- and keypoints
    given in them -- are in the frame a viewer displays. The benchmark readers pass ``False``: their
    annotations are in the stored frame.
    """
    path = Path(path)
    if not path.is_file():
        raise SimpleMatchError(f"image not found: {path}", "check the path")
    try:
        with Image.open(path) as img:
            img.load()  # force decoding now: truncated files fail here, not later
            shown = ImageOps.exif_transpose(img) if exif_orientation else img
            arr = to_rgb_uint8(shown)
    except Image.DecompressionBombError as err:  # Pillow's guard against decompression bombs
        raise SimpleMatchError(
            f"image {path} is too large to decode safely ({first_line(err)})",
            f"downscale it below {2 * Image.MAX_IMAGE_PIXELS // 1_000_000} megapixels",
        ) from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise SimpleMatchError(
            f"cannot read image {path} ({type(err).__name__}: {err})", "re-export it as PNG or JPEG"
        ) from err
    if arr.shape[0] < 2 or arr.shape[1] < 2:
        raise SimpleMatchError(
            f"image {path} is {arr.shape[1]}x{arr.shape[0]} px", "use an image of at least 2x2 px"
        )
    return arr


def resize_square(img: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (3, size, size) float32 in [0, 1]; aspect ratio is not kept (as the paper)."""
    pil = Image.fromarray(img)
    if pil.size != (size, size):
        pil = pil.resize((size, size), RESAMPLE)
    return np.ascontiguousarray(np.asarray(pil, dtype=np.float32).transpose(2, 0, 1) / 255.0)


def scale_factors(hw: tuple[int, int], size: int) -> tuple[float, float]:
    """(sx, sy): multiply original-image pixels by these to get model-frame pixels."""
    h, w = hw
    return size / w, size / h


def to_model_frame(kps: np.ndarray, hw: tuple[int, int], size: int) -> np.ndarray:
    sx, sy = scale_factors(hw, size)
    return np.asarray(kps, dtype=np.float64) * np.array([sx, sy])


def to_image_frame(kps: np.ndarray, hw: tuple[int, int], size: int) -> np.ndarray:
    sx, sy = scale_factors(hw, size)
    return np.asarray(kps, dtype=np.float64) / np.array([sx, sy])
