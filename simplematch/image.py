"""Torch-free image loading and preprocessing shared by training, PyTorch evaluation and the runtime.

One function turns a file into the model's input, so the PyTorch path and the onnxruntime/TensorRT path see
bit-identical pixels: RGB, square resize with OpenCV-style bilinear interpolation (the released code's
``cv2.resize``: half-pixel centres, two taps, NO antialiasing, uint8 result), float32 in [0, 1], CHW.
ImageNet normalisation is *not* done here: it lives inside the model (and so inside the exported graph).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from simplematch.errors import SimpleMatchError, first_line

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


class ImageTooLargeError(SimpleMatchError):
    """An image whose pixel count is over the decoder's budget (a service answers 413, not 422)."""


def load_image(path: str | Path, *, exif_orientation: bool = True) -> np.ndarray:
    """Read an image file -> (H, W, 3) uint8 RGB. Missing, truncated, oversized or non-image files raise
    one line.

    ``exif_orientation``: apply the EXIF Orientation tag (phone photos), so the pixels -- and keypoints
    given in them -- are in the frame a viewer displays. The benchmark readers pass ``False``: their
    annotations are in the stored frame.
    """
    path = Path(path)
    if path.is_dir():
        raise SimpleMatchError(f"{path} is a folder, not an image file", "pass the path of one image file")
    if not path.is_file():
        raise SimpleMatchError(f"image not found: {path}", "check the path")
    return _decode(path, str(path), exif_orientation=exif_orientation, max_pixels=None)


def decode_image(data: bytes, name: str, *, max_pixels: int | None = None) -> np.ndarray:
    """Image bytes (an upload) -> (H, W, 3) uint8 RGB, with the rules of :func:`load_image` (EXIF
    orientation applied). ``max_pixels``: refuse a larger image from its header, before decoding it
    (:class:`ImageTooLargeError`); Pillow's own decompression-bomb guard still applies above it."""
    return _decode(io.BytesIO(data), name, exif_orientation=True, max_pixels=max_pixels)


def _decode(source: Path | io.BytesIO, name: str, *, exif_orientation: bool, max_pixels: int | None):
    try:
        with Image.open(source) as img:
            if max_pixels is not None and img.width * img.height > max_pixels:
                raise ImageTooLargeError(
                    f"image {name} is {img.width}x{img.height} px, over the {max_pixels / 1e6:g}-megapixel"
                    " limit",
                    f"downscale it below {max_pixels / 1e6:g} megapixels",
                )
            img.load()  # force decoding now: truncated files fail here, not later
            shown = ImageOps.exif_transpose(img) if exif_orientation else img
            arr = to_rgb_uint8(shown)
    except Image.DecompressionBombError as err:  # Pillow's guard against decompression bombs
        raise ImageTooLargeError(
            f"image {name} is too large to decode safely ({first_line(err)})",
            f"downscale it below {2 * Image.MAX_IMAGE_PIXELS // 1_000_000} megapixels",
        ) from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise SimpleMatchError(
            f"cannot read image {name} ({type(err).__name__}: {err})", "re-export it as PNG or JPEG"
        ) from err
    if arr.shape[0] < 2 or arr.shape[1] < 2:
        raise SimpleMatchError(
            f"image {name} is {arr.shape[1]}x{arr.shape[0]} px", "use an image of at least 2x2 px"
        )
    return arr


_COEF_BITS = 11  # OpenCV's INTER_RESIZE_COEF_BITS: weights are integers summing to 2048


def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV INTER_LINEAR taps and fixed-point weights: ``x = (i + 0.5) * n_in / n_out - 0.5`` (float32),
    edges clamped as cv2 does (x < 0 -> pixel 0; x >= n_in - 1 -> pixel n_in - 1, weight 0)."""
    x = ((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5).astype(np.float32)
    i0 = np.floor(x).astype(np.intp)
    frac = x - i0
    frac[i0 < 0] = 0.0
    i0[i0 < 0] = 0
    edge = i0 >= n_in - 1
    frac[edge], i0[edge] = 0.0, n_in - 1
    w0 = np.rint((1.0 - frac) * (1 << _COEF_BITS)).astype(np.int64)
    return i0, np.minimum(i0 + 1, n_in - 1), w0, (1 << _COEF_BITS) - w0


def resize_bilinear(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """(H, W, C) uint8 -> (height, width, C) uint8, as ``cv2.resize(img, (width, height))`` (INTER_LINEAR).

    The released code resizes with OpenCV, which samples two taps per axis at any scale (no antialiasing,
    unlike Pillow, which widens its filter when shrinking). Written in numpy because the torch-free runtime
    has no OpenCV (base dependencies: numpy, Pillow, scipy; scipy.ndimage.zoom samples other positions).
    It follows OpenCV's fixed-point arithmetic (11-bit weights, the vectorised vertical pass's rounding), so
    it equals cv2 on all but ~0.1 % of pixels, and those by one grey level (tests/test_recipe.py).
    """
    if img.ndim != 3 or img.dtype != np.uint8:
        raise SimpleMatchError(
            f"resize needs an (H, W, C) uint8 image, got {img.shape} {img.dtype}", "pass RGB uint8 pixels"
        )
    h, w = img.shape[:2]
    if (w, h) == (width, height):
        return img
    y0, y1, b0, b1 = _linear_taps(h, height)
    x0, x1, a0, a1 = _linear_taps(w, width)
    src = img.astype(np.int64)
    rows = src[:, x0] * a0[None, :, None] + src[:, x1] * a1[None, :, None]  # horizontal pass, x 2048
    b0, b1 = b0[:, None, None], b1[:, None, None]
    out = (((b0 * (rows[y0] >> 4)) >> 16) + ((b1 * (rows[y1] >> 4)) >> 16) + 2) >> 2  # vertical, SIMD rule
    return np.clip(out, 0, 255).astype(np.uint8)


def resize_square(img: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (3, size, size) float32 in [0, 1]; aspect ratio is not kept (as the paper).

    The one resize of training, evaluation and the runtime: :func:`resize_bilinear` (released interpolation).
    """
    out = resize_bilinear(np.asarray(img), size, size)
    return np.ascontiguousarray(out.astype(np.float32).transpose(2, 0, 1) / 255.0)


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
