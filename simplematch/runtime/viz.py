"""Match visualisation with Pillow only: source | target side by side, one coloured line per match.

Both images are scaled to a common height (the taller one's, so nothing is shrunk below its own size);
match i gets hue ``i / N`` on the HSV wheel, a circle at both ends and its score printed next to the target
point in white with a dark outline, so it stays readable on any background.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from simplematch.io import atomic_write_bytes


def match_colors(n: int) -> list[tuple[int, int, int]]:
    """``n`` distinct saturated colours evenly spaced on the HSV wheel."""
    return [
        tuple(int(round(c * 255)) for c in colorsys.hsv_to_rgb(i / max(n, 1), 0.9, 1.0)) for i in range(n)
    ]  # type: ignore[misc]


def canvas_size(src_hw: tuple[int, int], trg_hw: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of the side-by-side picture for images of (h, w) ``src_hw`` and ``trg_hw``."""
    height = max(src_hw[0], trg_hw[0])
    widths = [max(1, round(w * height / h)) for h, w in (src_hw, trg_hw)]
    return sum(widths), height


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()  # tiny bitmap font: still legible, just small


def render_matches(
    src_img: np.ndarray,
    trg_img: np.ndarray,
    src_kps: np.ndarray,
    trg_kps: np.ndarray,
    scores: Sequence[float] | np.ndarray | None = None,
) -> Image.Image:
    """(H, W, 3) uint8 images and (N, 2) pixel keypoints in each image -> RGB picture (see module doc)."""
    src_hw, trg_hw = src_img.shape[:2], trg_img.shape[:2]
    width, height = canvas_size(src_hw, trg_hw)
    src_w = max(1, round(src_hw[1] * height / src_hw[0]))
    canvas = Image.new("RGB", (width, height))
    canvas.paste(Image.fromarray(src_img).resize((src_w, height), Image.Resampling.BILINEAR), (0, 0))
    canvas.paste(
        Image.fromarray(trg_img).resize((width - src_w, height), Image.Resampling.BILINEAR), (src_w, 0)
    )
    # Keypoints follow their image's scaling; target points also shift right by the source's width.
    s_scale = np.array([src_w / src_hw[1], height / src_hw[0]])
    t_scale = np.array([(width - src_w) / trg_hw[1], height / trg_hw[0]])
    src_pts = np.asarray(src_kps, dtype=np.float64).reshape(-1, 2) * s_scale
    trg_pts = np.asarray(trg_kps, dtype=np.float64).reshape(-1, 2) * t_scale + np.array([src_w, 0.0])
    draw = ImageDraw.Draw(canvas)
    radius = max(3, height // 90)
    line_w = max(1, height // 300)
    font = _font(max(12, height // 30))
    colors = match_colors(len(src_pts))
    for (sx, sy), (tx, ty), color in zip(src_pts, trg_pts, colors, strict=True):
        draw.line([(sx, sy), (tx, ty)], fill=color, width=line_w)
    for i, ((sx, sy), (tx, ty), color) in enumerate(zip(src_pts, trg_pts, colors, strict=True)):
        for x, y in ((sx, sy), (tx, ty)):
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=color, outline=(0, 0, 0))
        if scores is not None:
            draw.text(
                (tx + radius + 2, ty - radius),
                f"{float(scores[i]):.2f}",
                fill=(255, 255, 255),
                font=font,
                stroke_width=2,
                stroke_fill=(0, 0, 0),
            )
    return canvas


def png_bytes(image: Image.Image) -> bytes:
    buf = BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def save_matches_png(path: str | Path, image: Image.Image) -> None:
    """Write the picture as PNG atomically (a killed run never leaves half a file)."""
    atomic_write_bytes(Path(path), png_bytes(image))
