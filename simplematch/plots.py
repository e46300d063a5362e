"""``smatch eval --plots DIR``: PNG figures of an evaluation, from the per-pair predictions.

* ``pck_alpha.png``: PCK (per-image mean) against alpha over 0.01 ... 0.30, the form of the paper's Figure 4;
* ``per_category.png``: PCK per category at each evaluated alpha (bars);
* ``precision_coverage.png``: precision (PCK over kept points at alpha = 0.1) against the fraction of
  points kept, for every confidence cue, the default one drawn thick;
* ``worst_pairs.png``: the pairs with the lowest PCK@0.1 as match pictures (colour = confidence, the
  ground truth target as white rings);
* ``reliability.png``: the reliability diagram of the default confidence (fraction correct at alpha = 0.1
  per confidence bin, 15 bins, against the diagonal of a calibrated probability), with its ECE.

matplotlib is an optional extra (``pip install "simplematch[plots]"``): it is imported only here, and
:func:`check_plots` says which extra is missing before the evaluation starts. Every file is rendered in
memory and written atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np

from simplematch.files import atomic_write_bytes
from simplematch.metrics import (
    CONFIDENCE_ALPHA,
    PairPrediction,
    correct_mask,
    precision_coverage,
)

CURVE_ALPHAS = tuple(round(0.01 * i, 2) for i in range(1, 31))  # 0.01 ... 0.30
WORST = 6  # pairs in the gallery
FILES = ("pck_alpha.png", "per_category.png", "precision_coverage.png", "worst_pairs.png", "reliability.png")


def check_plots(out_dir: str | Path, *, force: bool = False) -> Path:
    """Before any work: matplotlib importable and ``out_dir`` usable (an earlier plots folder only with
    ``force``); a one-line error otherwise."""
    from simplematch import validate
    from simplematch.extras import require

    require("plots", "--plots")
    return validate.output_dir(out_dir, "--plots", force=force, what="plots folder")


def pck_curve(preds: Sequence[PairPrediction], alphas: Sequence[float] = CURVE_ALPHAS) -> np.ndarray:
    """(A,) per-image mean PCK in percent at each alpha (pairs without valid keypoints skipped)."""
    rows = [correct_mask(p, alphas).sum(0) / p.valid.sum() for p in preds if np.asarray(p.valid).any()]
    return np.mean(rows, axis=0) * 100.0 if rows else np.full(len(alphas), np.nan)


def _png(fig: Any) -> bytes:
    buf = BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _pair_picture(p: PairPrediction, record: Any, frame: str, img_size: int, confidence: str) -> np.ndarray:
    from PIL import Image, ImageDraw

    from simplematch.runtime.viz import render_matches

    src, trg = record.load("src"), record.load("trg")
    if frame == "resized":  # the predictions live in the S x S model frame: draw on the resized images
        src, trg = (np.asarray(Image.fromarray(im).resize((img_size, img_size))) for im in (src, trg))
    pic = render_matches(src, trg, p.src_kps, p.pred, p.cues[confidence])
    # Ground-truth targets as white rings, in the target half of the picture.
    sw = round(src.shape[1] * pic.height / src.shape[0])
    scale = np.array([(pic.width - sw) / trg.shape[1], pic.height / trg.shape[0]])
    draw = ImageDraw.Draw(pic)
    r = max(4, pic.height // 60)
    for (x, y), v in zip(np.asarray(p.gt) * scale + [sw, 0], p.valid, strict=True):
        if v:
            draw.ellipse([x - r, y - r, x + r, y + r], outline=(255, 255, 255), width=2)
    return np.asarray(pic)


def _badness(p: PairPrediction) -> tuple[float, float]:
    """Lowest PCK@0.1 first; among equal PCK the larger mean error (in thresholds) first."""
    v = np.asarray(p.valid, bool)
    err = np.linalg.norm(np.asarray(p.pred) - np.asarray(p.gt), axis=-1)[v].mean() / p.threshold
    return float(correct_mask(p, [CONFIDENCE_ALPHA])[:, 0].sum() / v.sum()), -float(err)


def _worst_pairs_png(
    plt: Any, res: dict[str, Any], preds: Sequence[PairPrediction], records: Sequence[Any], img_size: int,
    confidence: str,
) -> bytes | None:  # fmt: skip
    """The gallery: the ``WORST`` pairs by :func:`_badness` as match pictures, one per row."""
    worst = sorted((p for p in preds if np.asarray(p.valid).any()), key=_badness)[:WORST]
    if not worst:
        return None
    fig, axes = plt.subplots(len(worst), 1, figsize=(8, 3.2 * len(worst)), squeeze=False)
    for ax, p in zip(axes[:, 0], worst, strict=True):
        ax.imshow(_pair_picture(p, records[p.index], res["frame"], img_size, confidence))
        k = correct_mask(p, [CONFIDENCE_ALPHA])[:, 0].sum()
        ax.set_title(
            f"pair {p.pair_id} ({p.category}): {k}/{int(p.valid.sum())} correct at alpha 0.1", fontsize=9
        )
        ax.axis("off")
    data = _png(fig)
    plt.close(fig)
    return data


def _reliability_png(plt: Any, conf: dict[str, Any], title: str) -> bytes:
    """Bars: fraction correct per confidence bin (width = bin); the diagonal is a perfect probability."""
    rows = [r for r in conf.get("reliability", []) if r["count"]]
    name = conf["default"]
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.bar([r["lo"] for r in rows], [r["accuracy"] for r in rows], [r["hi"] - r["lo"] for r in rows],
           align="edge", alpha=0.6, edgecolor="k", label="fraction correct")  # fmt: skip
    ax.plot([r["confidence"] for r in rows], [r["accuracy"] for r in rows], "o", ms=3, label="bin mean")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="calibrated")
    for r in rows:
        ax.annotate(str(r["count"]), (r["lo"] + 0.005, 0.01), fontsize=6)
    ece = conf.get("ece", {}).get(name)
    ece_text = f", ECE {ece:.3f}" if ece is not None else ""
    ax.set(
        xlabel=f"confidence '{name}'", ylabel=f"fraction correct at alpha {CONFIDENCE_ALPHA:g}",
        title=f"reliability{ece_text}\n{title}", xlim=(0, 1), ylim=(0, 1),
    )  # fmt: skip
    ax.legend(fontsize=7, loc="upper left")
    data = _png(fig)
    plt.close(fig)
    return data


def write_plots(
    res: dict[str, Any],
    preds: Sequence[PairPrediction],
    records: Sequence[Any],
    out_dir: str | Path,
    *,
    img_size: int,
    confidence: str,
) -> list[Path]:
    """Render the figures of the module doc into ``out_dir``; returns the written paths."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    out = Path(out_dir)  # created by the atomic writer
    title = f"{res['dataset']} {res['split']} ({res['pairs']} pairs, threshold {res['threshold']})"
    figs: dict[str, bytes] = {}

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(CURVE_ALPHAS, pck_curve(preds), marker="o", ms=3)
    ax.set(xlabel="alpha", ylabel="PCK (%)", title=f"PCK-alpha, {title}", xlim=(0, 0.31), ylim=(0, 100))
    ax.grid(alpha=0.3)
    figs["pck_alpha.png"] = _png(fig)
    plt.close(fig)

    cats = sorted(res["per_category"])
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(cats) + 2), 4))
    keys = list(res["pck"])
    width = 0.8 / max(len(keys), 1)
    for j, a in enumerate(keys):
        vals = [res["per_category"][c]["pck"][a] or 0.0 for c in cats]
        ax.bar(np.arange(len(cats)) + j * width, vals, width, label=f"PCK@{a}")
    ax.set_xticks(np.arange(len(cats)) + width * (len(keys) - 1) / 2, cats, rotation=30, ha="right")
    ax.set(ylabel="PCK (%)", title=f"per category, {title}", ylim=(0, 100))
    ax.legend()
    figs["per_category.png"] = _png(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    ok = np.concatenate([correct_mask(p, [CONFIDENCE_ALPHA])[:, 0][p.valid] for p in preds])
    for name in preds[0].cues if preds else []:
        conf = np.concatenate([np.asarray(p.cues[name])[p.valid] for p in preds])
        rows = precision_coverage(conf, ok, coverages=np.linspace(1.0, 0.02, 50))
        auroc = res["confidence"]["auroc"].get(name)
        label = f"{name} (AUROC {auroc:.3f})" if auroc is not None else name
        ax.plot(
            [r["coverage"] for r in rows], [r["precision"] for r in rows], label=label,
            lw=2.5 if name == confidence else 1.0,
        )  # fmt: skip
    ax.set(
        xlabel="fraction of points kept", ylabel=f"precision = PCK@{CONFIDENCE_ALPHA:g} of kept (%)",
        title=f"precision-coverage, {title}", xlim=(0, 1), ylim=(0, 100),
    )  # fmt: skip
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    figs["precision_coverage.png"] = _png(fig)
    plt.close(fig)

    figs["reliability.png"] = _reliability_png(plt, res["confidence"], title)
    worst = _worst_pairs_png(plt, res, preds, records, img_size, confidence)
    if worst is not None:
        figs["worst_pairs.png"] = worst

    written = []
    for name, data in figs.items():
        atomic_write_bytes(out / name, data)
        written.append(out / name)
    return written
