"""PCK@0.1 of ``smatch transfer`` with 1, 3 and 5 references on PF-WILLOW's COCO conversion.

    python scripts/transfer_report.py MODEL.onnx WILLOW_ROOT [--splits 10] [--json out.json]

Leave-references-out, per class: each split shuffles the class's images (seeded), the first 5 are the
reference pool and the last 5 the targets; 1, 3 and 5 references are the first 1, 3, 5 of the pool, so the
three rows score the same targets. Every combination method of ``smatch transfer`` is scored, and the
relative-position prior (each reference keypoint at its relative position in the target, averaged over the
references) as the floor. PCK uses PF-WILLOW's ``kps`` threshold: alpha = 0.1 of the larger side of the
target's valid keypoints' extent, original pixels, ``d < alpha * threshold``; per-target mean (the paper's).

The matching and the combination are the command's own functions (:func:`load_references`,
:func:`transfer_keypoints`); each image is encoded once for the whole report.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from willow_to_coco import convert

from simplematch.config import TRANSFER_COMBINES
from simplematch.data.coco import read_coco_keypoints
from simplematch.data.records import pck_threshold
from simplematch.metrics import correct_points
from simplematch.runtime.matcher import Matcher
from simplematch.runtime.transfer import load_references, transfer_keypoints

ALPHA = 0.1
COUNTS = (1, 3, 5)
POOL = 5


def _pck(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray, hw: tuple[int, int]) -> float:
    thr = pck_threshold({"trg_kps": truth, "trg_size": (hw[1], hw[0])}, "kps", valid=valid)
    return float(correct_points(pred, truth, valid, thr, [ALPHA])[..., 0][valid].mean())


def _prior(refs, target_hw: tuple[int, int], n_kps: int) -> np.ndarray:
    """Mean relative position of each keypoint over the references that have it."""
    acc, count = np.zeros((n_kps, 2)), np.zeros(n_kps)
    for ref in refs:
        h, w = ref.features.hw
        rel = ref.kps / [w, h]
        acc[ref.usable] += rel[ref.usable]
        count += ref.usable
    return acc / np.maximum(count, 1)[:, None] * [target_hw[1], target_hw[0]]


def report(model: Path, willow: Path, splits: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "willow.json"
        convert(willow, out)
        coco = read_coco_keypoints(out)
        matcher = Matcher(model, batch_size=8)
        groups, _ = load_references(matcher, coco)  # every image of PF-WILLOW encoded once
    methods = [*TRANSFER_COMBINES, "prior"]
    scores = {m: {n: [] for n in COUNTS} for m in methods}
    for cid, objects in groups.items():
        for split in range(splits):
            order = np.random.default_rng(1000 * cid + split).permutation(len(objects))
            pool, targets = [objects[i] for i in order[:POOL]], [objects[i] for i in order[POOL:]]
            for tgt in targets:
                valid = tgt.usable
                for n in COUNTS:
                    refs = pool[:n]
                    for m in TRANSFER_COMBINES:
                        res = transfer_keypoints(matcher, refs, tgt.features, combine=m)
                        scores[m][n].append(_pck(res.kps, tgt.kps, valid, tgt.features.hw))
                    prior = _prior(refs, tgt.features.hw, len(tgt.kps))
                    scores["prior"][n].append(_pck(prior, tgt.kps, valid, tgt.features.hw))
    table = {m: {n: 100.0 * float(np.mean(v)) for n, v in by_n.items()} for m, by_n in scores.items()}
    per_split = len(next(iter(scores["vote"].values())))
    return {"model": str(model), "alpha": ALPHA,
            "threshold": "kps (PF-WILLOW), original pixels, d < alpha*thr", "splits_per_class": splits,
            "targets_scored_per_row": per_split, "classes": len(groups), "pck": table}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("willow", type=Path)
    parser.add_argument("--splits", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    res = report(args.model, args.willow, args.splits)
    n, classes = res["targets_scored_per_row"], res["classes"]
    print(f"PCK@{ALPHA} (kps threshold), {n} targets per row, {classes} classes")
    print("| references | " + " | ".join(res["pck"]) + " |")
    print("|---|" + "---|" * len(res["pck"]))
    for n in COUNTS:
        print(f"| {n} | " + " | ".join(f"{res['pck'][m][n]:.1f}" for m in res["pck"]) + " |")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
