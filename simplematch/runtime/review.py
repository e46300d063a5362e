"""``smatch transfer --review DIR``: a static HTML contact sheet of the transferred keypoints.

One card per result (per target image, and per category when the references hold several): the match
picture of :func:`simplematch.runtime.viz.render_matches` -- the reference that agreed best on the left, the
target on the right, points coloured by confidence, rejected ones crossed out -- with the file name, the
score and how many points were kept. Cards are sorted worst-first (lowest score), so a person checks the
doubtful ones first and stops scrolling when they look right. The page is plain HTML with lazy-loaded JPEGs
under ``img/``: it opens from disk in any browser, no server.
"""

from __future__ import annotations

import html
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np

from simplematch.files import atomic_write_bytes, atomic_write_text
from simplematch.runtime.viz import render_matches

PICTURE_SIZE = (960, 360)  # (width, height) a card's picture is scaled down to fit
PICTURES = "img"
# JPEG, not the PNG of `smatch infer --viz`: a photo contact sheet needs no lossless pixels, and PNG encoding
# took ~80 ms per 960 x 360 picture here (review pages ran 3-4x slower than the transfer itself), JPEG ~1 ms.
JPEG_QUALITY = 90


def picture_name(image_id: int, category_id: int) -> str:
    """The picture of one result, relative to the review folder."""
    return f"{PICTURES}/{image_id:06d}-{category_id}.jpg"


def write_picture(
    folder: Path,
    name: str,
    ref_rgb: np.ndarray,
    ref_kps: np.ndarray,
    trg_rgb: np.ndarray,
    trg_kps: np.ndarray,
    confidence: np.ndarray,
    rejected: np.ndarray,
) -> Path:
    """Render one match picture and write it (atomically) as ``folder / name``."""
    picture = render_matches(
        ref_rgb, trg_rgb, ref_kps, trg_kps, confidence, rejected=rejected, max_size=PICTURE_SIZE
    )
    path = folder / name
    buf = BytesIO()
    picture.save(buf, format="JPEG", quality=JPEG_QUALITY)
    atomic_write_bytes(path, buf.getvalue())
    return path


_STYLE = """
body { font-family: sans-serif; margin: 1em; background: #f4f4f4; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(480px, 1fr)); gap: 12px; }
figure { margin: 0; background: white; padding: 6px; border-radius: 4px; box-shadow: 0 1px 3px #0003; }
figure img { width: 100%; height: auto; display: block; }
figcaption { font-size: 13px; margin-top: 4px; word-break: break-all; }
.missing { color: #a00; font-style: italic; }
"""


def write_index(folder: Path, entries: list[dict[str, Any]], title: str, notes: list[str]) -> Path:
    """``folder/index.html`` listing every entry worst-first. An entry: ``file_name``, ``category``,
    ``score``, ``kept``, ``total``, ``picture`` (relative path) -- a picture not on disk (a result of an
    earlier run without ``--review``) is named as missing instead of shown broken."""
    cards = []
    for e in sorted(entries, key=lambda e: (e["score"], e["file_name"], e["category"])):
        caption = (
            f"{html.escape(e['file_name'])} &middot; {html.escape(e['category'])} &middot; "
            f"score {e['score']:.3f} &middot; kept {e['kept']}/{e['total']}"
        )
        if (folder / e["picture"]).is_file():
            src = html.escape(e["picture"], quote=True)
            body = f'<a href="{src}"><img src="{src}" loading="lazy" alt="{html.escape(e["file_name"])}"></a>'
        else:
            body = '<p class="missing">no picture (transferred by an earlier run without --review)</p>'
        cards.append(f"<figure>{body}<figcaption>{caption}</figcaption></figure>")
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>\n"
        f"<h1>{html.escape(title)}</h1>\n"
        + "".join(f"<p>{html.escape(n)}</p>\n" for n in notes)
        + '<div class="grid">\n'
        + "\n".join(cards)
        + "\n</div></body></html>\n"
    )
    path = folder / "index.html"
    atomic_write_text(path, page)
    return path
