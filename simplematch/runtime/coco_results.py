"""The COCO keypoints file ``smatch transfer`` writes, streamed, and the partial one ``--resume`` continues.

The file is a COCO keypoints dataset (``info``, ``categories``, ``annotations``, ``images``) whose
annotations are also COCO keypoint *results* (``image_id``, ``category_id``, ``keypoints`` [x, y, v] * K,
``score``): CVAT ("COCO Keypoints 1.0") and Label Studio's COCO converter import it as it is, pycocotools'
``COCO(path)`` indexes it and ``loadRes(annotations)`` takes its annotation list. Extra fields per
annotation: ``keypoint_scores`` (the per-point confidence in [0, 1], rejected points included) and
``bbox`` / ``area`` / ``num_keypoints`` of the kept points (what the labelling tools read).

Streaming: the header is written first, then one annotation per line as each target is done (flushed), and
the ``images`` list last, so the annotations never wait in memory. Nothing in the file depends on time or
order of arrival (ids are derived from the target's rank and the category), so an interrupted run resumed
to the end writes the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

import numpy as np

from simplematch.data.records import read_json_file
from simplematch.errors import SimpleMatchError

# Settings in ``info.simplematch`` that must agree for --resume to continue a file (paths may be spelt
# differently from another folder, so the files are compared by hash instead).
RESUME_KEYS = ("version", "refs_sha256", "model_sha256", "references", "confidence", "min_confidence",
               "combine", "vote_alpha")  # fmt: skip
CATEGORY_KEYS = ("id", "name", "supercategory", "keypoints", "skeleton")  # copied from the references' file


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, allow_nan=False)


def output_categories(refs_json: Any, used: list[int]) -> list[dict[str, Any]]:
    """The references' category entries (COCO fields only) for the categories that have a reference;
    ``skeleton`` defaults to ``[]`` (CVAT's importer reads it)."""
    raw = {c["id"]: c for c in refs_json["categories"]}
    out = []
    for cid in used:
        entry = {k: raw[cid][k] for k in CATEGORY_KEYS if k in raw[cid]}
        entry.setdefault("skeleton", [])
        out.append(entry)
    return out


def annotation(
    ann_id: int,
    image_id: int,
    category_id: int,
    kps: np.ndarray,
    confidence: np.ndarray,
    matched: np.ndarray,
    kept: np.ndarray,
) -> dict[str, Any]:
    """One COCO result: ``kps`` (K, 2) target pixels, ``confidence`` (K,), ``matched`` (K,) some reference
    has the point, ``kept`` (K,) matched and confident enough -> v = 2; the others v = 0. Points no
    reference has are (0, 0, 0), the COCO spelling of "not labelled"; a rejected point keeps its predicted
    position (the labelling tools hide v = 0 points, a reviewer can still see where it was)."""
    flat: list[float | int] = []
    for k in range(len(kps)):
        x, y = (round(float(kps[k, 0]), 2), round(float(kps[k, 1]), 2)) if matched[k] else (0, 0)
        flat += [x, y, 2 if kept[k] else 0]
    if kept.any():
        lo, hi = kps[kept].min(axis=0), kps[kept].max(axis=0)
        bbox = [round(float(lo[0]), 2), round(float(lo[1]), 2)]
        bbox += [round(float(hi[0] - lo[0]), 2), round(float(hi[1] - lo[1]), 2)]
    else:
        bbox = [0.0, 0.0, 0.0, 0.0]
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "keypoints": flat,
        "num_keypoints": int(kept.sum()),
        # COCO's one score per result (COCOeval ranks by it): the mean confidence of the matched points
        "score": round(float(confidence[matched].mean()), 4) if matched.any() else 0.0,
        "keypoint_scores": [round(float(c), 4) for c in confidence],
        "bbox": bbox,
        "area": round(bbox[2] * bbox[3], 2),
        "iscrowd": 0,
    }


class ResultsWriter:
    """Writes the file of this module's docstring into an open text file: header now, annotations one per
    line as they come (flushed), images at :meth:`close`."""

    def __init__(self, fh: IO[str], info: dict[str, Any], categories: list[dict[str, Any]]) -> None:
        self.fh = fh
        self.count = 0
        fh.write(f'{{"info": {_dumps(info)},\n"categories": {_dumps(categories)},\n"annotations": [')

    def add(self, ann: dict[str, Any]) -> None:
        self.fh.write(("\n" if self.count == 0 else ",\n") + _dumps(ann))
        self.fh.flush()  # streamed: whatever happens later, this target's result is on disk
        self.count += 1

    def close(self, images: list[dict[str, Any]]) -> None:
        rows = ",\n".join(_dumps(im) for im in sorted(images, key=lambda im: im["id"]))
        self.fh.write(f'\n],\n"images": [\n{rows}\n]}}\n')
        self.fh.flush()


def read_partial(path: Path, settings: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(annotations, images) of an earlier run's file, refused in one line unless it was written by
    ``smatch transfer`` with the same ``settings`` (``info.simplematch``: the ``RESUME_KEYS`` must agree)."""
    fix = "rerun without --resume (add --force to replace the file)"
    data = read_json_file(path, fix)
    ours = data.get("info", {}).get("simplematch") if isinstance(data, dict) else None
    if not isinstance(ours, dict) or not all(
        isinstance(data.get(k), list) for k in ("annotations", "images")
    ):
        raise SimpleMatchError(f"--resume: {path} was not written by smatch transfer", fix)
    for key in RESUME_KEYS:
        if ours.get(key) != settings[key]:
            raise SimpleMatchError(
                f"--resume: {path} was written with {key}={ours.get(key)!r}, this run has {settings[key]!r}",
                f"resume with the same references, model and options, or {fix}",
            )
    return data["annotations"], data["images"]
