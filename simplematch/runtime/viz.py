"""Match visualisation with Pillow only: source | target side by side, one line per match.

Both images are scaled to a common height (the taller one's, so nothing is shrunk below its own size),
then the whole picture is scaled down so that it fits ``max_size`` (a 4000 px photo pair stays a readable
PNG). Colour is the match's confidence (red 0 -> yellow -> green 1, a legend says so) when one is given,
else hue ``i / N``. Each match is numbered at both ends (the index of the table / JSON row). A rejected
match draws no line and no target: its source point is crossed out. More than ``max_points`` matches are
subsampled evenly (keeping their original numbers) and a note says how many are shown.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from simplematch.files import atomic_write_bytes

MAX_SIZE = (2400, 1200)  # (width, height) the picture is scaled down to fit
MAX_POINTS = 150  # more matches than this are subsampled: beyond it lines and numbers become unreadable


def match_colors(n: int) -> list[tuple[int, int, int]]:
    """``n`` distinct saturated colours evenly spaced on the HSV wheel."""
    return [
        tuple(int(round(c * 255)) for c in colorsys.hsv_to_rgb(i / max(n, 1), 0.9, 1.0)) for i in range(n)
    ]  # type: ignore[misc]


def confidence_color(c: float) -> tuple[int, int, int]:
    """Confidence in [0, 1] -> red (0) through yellow (0.5) to green (1): hue 0 -> 1/3."""
    c = float(np.clip(c, 0.0, 1.0)) if np.isfinite(c) else 0.0
    return tuple(int(round(v * 255)) for v in colorsys.hsv_to_rgb(c / 3.0, 0.95, 1.0))  # type: ignore[return-value]


def canvas_size(
    src_hw: tuple[int, int], trg_hw: tuple[int, int], max_size: tuple[int, int] = MAX_SIZE
) -> tuple[int, int]:
    """(width, height) of the side-by-side picture for images of (h, w) ``src_hw`` and ``trg_hw``."""
    height = max(src_hw[0], trg_hw[0])
    widths = [max(1, round(w * height / h)) for h, w in (src_hw, trg_hw)]
    scale = min(1.0, max_size[0] / sum(widths), max_size[1] / height)
    if scale < 1.0:
        height = max(1, round(height * scale))
        widths = [max(1, round(w * height / h)) for h, w in (src_hw, trg_hw)]
    return sum(widths), height


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()  # tiny bitmap font: still legible, just small


def shown_indices(n: int, max_points: int = MAX_POINTS) -> np.ndarray:
    """Which of ``n`` matches are drawn: all, or ``max_points`` evenly spaced ones."""
    if n <= max_points:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_points).round().astype(int))


def render_matches(
    src_img: np.ndarray,
    trg_img: np.ndarray,
    src_kps: np.ndarray,
    trg_kps: np.ndarray,
    confidence: Sequence[float] | np.ndarray | None = None,
    *,
    rejected: Sequence[bool] | np.ndarray | None = None,
    max_size: tuple[int, int] = MAX_SIZE,
    max_points: int = MAX_POINTS,
) -> Image.Image:
    """(H, W, 3) uint8 images and (N, 2) pixel keypoints in each image -> RGB picture (see module doc)."""
    src_hw, trg_hw = src_img.shape[:2], trg_img.shape[:2]
    width, height = canvas_size(src_hw, trg_hw, max_size)
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
    n = len(src_pts)
    rej = np.zeros(n, bool) if rejected is None else np.asarray(rejected, bool).reshape(n)
    if confidence is not None:
        conf = np.asarray(confidence, np.float64).reshape(n)
        colors = [confidence_color(c) for c in conf]
    else:
        colors = match_colors(n)
    draw = ImageDraw.Draw(canvas)
    radius = max(3, height // 90)
    line_w = max(1, height // 300)
    font = _font(max(11, height // 36))
    show = shown_indices(n, max_points)
    label = dict(fill=(255, 255, 255), font=font, stroke_width=2, stroke_fill=(0, 0, 0))
    for i in show:
        if not rej[i] and np.isfinite(trg_pts[i]).all():
            draw.line([tuple(src_pts[i]), tuple(trg_pts[i])], fill=colors[i], width=line_w)
    for i in show:
        (sx, sy), color = src_pts[i], colors[i]
        ends = [(sx, sy)] if rej[i] or not np.isfinite(trg_pts[i]).all() else [(sx, sy), tuple(trg_pts[i])]
        for x, y in ends:
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=color, outline=(0, 0, 0))
            draw.text((x + radius + 1, y - 2 * radius), str(int(i)), **label)
        if len(ends) == 1:  # rejected: a cross over the source point, no target
            r = 2 * radius
            for d in ((-r, -r, r, r), (-r, r, r, -r)):
                draw.line([(sx + d[0], sy + d[1]), (sx + d[2], sy + d[3])], fill=(0, 0, 0), width=line_w + 2)
                draw.line(
                    [(sx + d[0], sy + d[1]), (sx + d[2], sy + d[3])], fill=(255, 255, 255), width=line_w
                )
    notes = []
    if confidence is not None:
        notes.append("colour = confidence: red 0, yellow 0.5, green 1")
    if rej.any():
        notes.append(f"x = rejected ({int(rej.sum())})")
    if len(show) < n:
        notes.append(f"showing {len(show)} of {n} matches (evenly subsampled)")
    if notes:
        text = "; ".join(notes)
        top = height - 4 - (draw.textbbox((0, 0), text, font=font)[3])
        draw.text((4, top), text, **label)
    return canvas


def png_bytes(image: Image.Image) -> bytes:
    buf = BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def save_matches_png(path: str | Path, image: Image.Image) -> None:
    """Write the picture as PNG atomically (a killed run never leaves half a file)."""
    atomic_write_bytes(Path(path), png_bytes(image))
