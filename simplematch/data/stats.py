"""Keypoint fusion statistics (paper Table 1): how many keypoints share a feature cell with another one."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from simplematch.data.records import PairRecord
from simplematch.image import to_model_frame
from simplematch.validate import number


def _image_key(rec: PairRecord, side: str) -> str:
    source = rec.src_image if side == "src" else rec.trg_image
    if isinstance(source, (str, Path)):
        return str(Path(source))
    return f"{rec.pair_id}:{side}"  # in-memory / synthetic images are unique to their pair


def keypoint_fusion_stats(
    records: Iterable[PairRecord], img_size: int = 256, map_sizes: tuple[int, ...] = (16, 32, 64)
) -> dict[int | str, int]:
    """``{map_size: #keypoints sharing a cell with another keypoint of the same image, "total": #keypoints}``.

    Each image is counted once: its keypoints are the union (exact duplicates removed) of the keypoints it
    has in any pair, resized to ``img_size`` x ``img_size`` and binned with ``floor(kp / (img_size / map))``.
    ``img_size`` must be an integer of at least the largest map (a cell of one pixel or more): zero or a
    negative size would bin every keypoint into one cell and report a meaningless count.
    """
    number(
        img_size, "--img-size", low=max(map_sizes), integer=True,
        fix=f"pass an input size of at least {max(map_sizes)}, e.g. --img-size 256",
    )  # fmt: skip
    per_image: dict[str, tuple[list[np.ndarray], tuple[int, int]]] = {}
    for rec in records:
        for side in ("src", "trg"):
            key = _image_key(rec, side)
            kps = rec.src_kps if side == "src" else rec.trg_kps
            if key not in per_image:
                per_image[key] = ([], rec.image_size(side))
            per_image[key][0].append(kps)
    result: dict[int | str, int] = {m: 0 for m in map_sizes}
    total = 0
    for kps_list, (w, h) in per_image.values():
        kps = np.unique(np.round(np.concatenate(kps_list), 6), axis=0)
        kps = kps[np.isfinite(kps).all(axis=1)]
        total += len(kps)
        if len(kps) < 2:
            continue
        resized = to_model_frame(kps, (h, w), img_size)
        for m in map_sizes:
            cells = np.floor(resized / (img_size / m)).astype(np.int64)
            _, inverse, counts = np.unique(cells, axis=0, return_inverse=True, return_counts=True)
            result[m] += int((counts[inverse.reshape(-1)] > 1).sum())
    result["total"] = total
    return result


def default_stats_split(dataset: str) -> str:
    """Table 1 counts training keypoints; PF-WILLOW is test-only, so its one split is the default there."""
    return "test" if dataset == "pfwillow" else "trn"
