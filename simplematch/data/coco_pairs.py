"""COCO keypoints -> pair records (torch-free): splits by image, pair enumeration, user pair lists.

``--data-root`` is either one COCO keypoints JSON or a folder holding one JSON per split
(``train.json``/``trn.json``, ``val.json``/``valid.json``, ``test.json``, or Roboflow's
``{train,valid,test}/_annotations.coco.json``).

* One JSON: the split is a seeded partition of the **images** (sorted ids, permuted by ``split_seed``, cut
  at ``split_fractions`` for trn / val / test), so no image is in two splits and the same seed gives the
  same split; or ``pairs`` (a CSV ``split,source,target`` of annotation ids) gives the pairs of each split.
* A pair is two annotations of the same category in different images with at least ``min_common``
  keypoints visible (v > 0) in both; the record keeps only those keypoints, in the category's order.
  Annotations with fewer than ``min_common`` visible keypoints are skipped and counted.
* Enumeration is deterministic: source images by id, their objects in file order, targets in file order.
  ``max_pairs_per_image`` keeps a seeded sample (seed ``(split_seed, image id)``) of each source image's
  pairs; without it, more than :data:`MAX_ALL_PAIRS` pairs are refused.

Thresholds: the target annotation's bbox (x, y, w, h -> [x, y, x + w, y + h]) is on every record, so the
default ``bbox`` threshold is SPair-71k's; ``img`` and ``kps`` work as for every dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simplematch.data.coco import CocoKeypoints, CocoObject, read_coco_keypoints
from simplematch.data.records import PairRecord, csv_rows, normalise_split, read_text_file
from simplematch.errors import SimpleMatchError

SPLITS = ("trn", "val", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
MAX_ALL_PAIRS = 300_000  # beyond this an epoch is unwieldy and memory grows: ask for a bound instead
# One JSON per split: the names the labelling tools and common layouts use, tried in this order.
SPLIT_FILES = {
    "trn": ("train.json", "trn.json", "train/_annotations.coco.json"),
    "val": ("val.json", "valid.json", "valid/_annotations.coco.json", "val/_annotations.coco.json"),
    "test": ("test.json", "test/_annotations.coco.json"),
}


@dataclass(frozen=True)
class CocoOptions:
    """How a COCO file becomes pairs (``smatch train/eval/stats`` flags; config keys ``coco_*``)."""

    images: str | None = None
    min_common: int = 3
    pairs: str | None = None
    split_seed: int = 0
    split_fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    max_pairs_per_image: int | None = None

    @classmethod
    def from_config(cls, cfg: Any) -> CocoOptions:
        """From a :class:`simplematch.config.Config` (its ``coco_*`` keys)."""
        return coco_options({k: getattr(cfg, k) for k in OPTION_KEYS})

    def validate(self) -> CocoOptions:
        if self.min_common < 1:
            raise SimpleMatchError(f"--min-common {self.min_common}", "pass a count >= 1")
        if self.max_pairs_per_image is not None and self.max_pairs_per_image < 1:
            raise SimpleMatchError(f"--max-pairs-per-image {self.max_pairs_per_image}", "pass a count >= 1")
        fr = self.split_fractions
        if len(fr) != 3 or any(not 0 <= f <= 1 for f in fr) or abs(sum(fr) - 1) > 1e-6:
            raise SimpleMatchError(
                f"--split-fractions {','.join(f'{f:g}' for f in fr)} are not three fractions summing to 1",
                "pass trn,val,test fractions, e.g. --split-fractions 0.8,0.1,0.1",
            )
        return self


OPTION_KEYS = ("coco_images", "coco_min_common", "coco_pairs", "coco_split_seed", "coco_split_fractions",
               "coco_max_pairs_per_image")  # fmt: skip


def coco_options(given: dict[str, Any], recorded: dict[str, Any] | None = None) -> CocoOptions:
    """Options from ``coco_*`` keys: ``given`` (flags; ``None`` = not given) over ``recorded`` (a config)."""
    values = {k: (recorded or {}).get(k) for k in OPTION_KEYS}
    values.update({k: v for k, v in given.items() if k in OPTION_KEYS and v is not None})
    fractions = values["coco_split_fractions"]
    if isinstance(fractions, str):
        fractions = parse_fractions(fractions)
    d = CocoOptions()
    return CocoOptions(
        images=str(values["coco_images"]) if values["coco_images"] else None,
        min_common=d.min_common if values["coco_min_common"] is None else int(values["coco_min_common"]),
        pairs=str(values["coco_pairs"]) if values["coco_pairs"] else None,
        split_seed=d.split_seed if values["coco_split_seed"] is None else int(values["coco_split_seed"]),
        split_fractions=tuple(fractions) if fractions else d.split_fractions,
        max_pairs_per_image=values["coco_max_pairs_per_image"],
    ).validate()


def refuse_unused_flags(dataset: str | None, given: dict[str, Any]) -> None:
    """COCO flags with another dataset would be silently ignored: refuse them in one line."""
    from simplematch.config import COCO_FLAGS

    used = [COCO_FLAGS[k] for k in OPTION_KEYS if given.get(k) is not None]
    if used and dataset != "coco":
        raise SimpleMatchError(
            f"{', '.join(used)} only apply to --dataset coco, not {dataset}",
            "drop them, or pass --dataset coco with a COCO keypoints JSON as --data-root",
        )


def parse_fractions(text: str) -> list[float]:
    """``--split-fractions 0.8,0.1,0.1`` -> [0.8, 0.1, 0.1] (checked by :meth:`CocoOptions.validate`)."""
    try:
        values = [float(v) for v in str(text).split(",")]
    except ValueError as err:
        raise SimpleMatchError(
            f"--split-fractions {text!r} is not a comma-separated list of numbers",
            "pass trn,val,test fractions, e.g. --split-fractions 0.8,0.1,0.1",
        ) from err
    CocoOptions(split_fractions=tuple(values)).validate()
    return values


def partition_images(image_ids: Sequence[int], seed: int, fractions: Sequence[float]) -> dict[str, list[int]]:
    """Seeded partition of ``image_ids`` into trn / val / test (each list sorted); counts by rounding."""
    ids = np.array(sorted(set(int(i) for i in image_ids)), dtype=np.int64)
    perm = ids[np.random.default_rng(seed).permutation(len(ids))]
    n_trn = int(round(fractions[0] * len(ids)))
    n_val = min(int(round(fractions[1] * len(ids))), len(ids) - n_trn)
    parts = (perm[:n_trn], perm[n_trn : n_trn + n_val], perm[n_trn + n_val :])
    return {s: sorted(int(i) for i in p) for s, p in zip(SPLITS, parts, strict=True)}


def read_coco_pairs(
    data_root: str | Path, split: str, options: CocoOptions | None = None
) -> tuple[list[PairRecord], dict[str, Any]]:
    """The pair records of ``split`` and what produced them (recorded by train / eval / stats)."""
    opts = (options or CocoOptions()).validate()
    split = normalise_split(split)
    root = Path(data_root)
    images = Path(opts.images) if opts.images else None
    if root.is_dir():
        if opts.pairs:
            raise SimpleMatchError(
                "--pairs lists annotation ids of one COCO file, but --data-root is a folder of split files",
                "pass the COCO JSON as --data-root with --pairs, or drop --pairs",
            )
        source = _split_file(root, split)
        coco = read_coco_keypoints(source, images, min_visible=opts.min_common)
        chosen = list(coco.objects)
        mode = "file per split"
    else:
        source = root
        coco = read_coco_keypoints(source, images, min_visible=opts.min_common)
        mode = "pairs file" if opts.pairs else "seeded image partition"
        chosen = []
    info: dict[str, Any] = {
        "source": str(source), "split": split, "mode": mode, "images_folder": opts.images,
        "min_common": opts.min_common, "pairs_file": opts.pairs, "split_seed": opts.split_seed,
        "split_fractions": list(opts.split_fractions), "max_pairs_per_image": opts.max_pairs_per_image,
        "skipped_annotations": coco.skipped, "skipped_pairs": 0,
    }  # fmt: skip
    if opts.pairs:
        records, info["skipped_pairs"] = _listed_pairs(coco, Path(opts.pairs), split, opts.min_common)
    else:
        if mode == "seeded image partition":
            parts = partition_images(
                [o.image_id for o in coco.objects], opts.split_seed, opts.split_fractions
            )
            keep = set(parts[split])
            chosen = [o for o in coco.objects if o.image_id in keep]
            info["split_images"] = {s: len(v) for s, v in parts.items()}
        records = _enumerate(coco, chosen, opts)
    # The split's images (those of its objects; with --pairs, those of its pairs): the held-out check.
    used = {o.image_id for o in chosen} if not opts.pairs else {
        int(r.meta[k]) for r in records for k in ("src_image_id", "trg_image_id")}  # fmt: skip
    info["image_ids"] = sorted(used)
    info["pairs"] = len(records)
    if not records:
        raise SimpleMatchError(
            f"{source}: split '{split}' holds no pairs ({mode}; {coco.skipped} annotation(s) skipped with"
            f" fewer than {opts.min_common} visible keypoints)",
            "add images to this split (--split-fractions), lower --min-common, or list pairs with --pairs",
        )
    return records, info


def split_image_ids(data_root: str | Path, split: str, options: CocoOptions) -> list[int]:
    """The image ids of ``split`` of one COCO file, without building its pairs (the held-out check).

    A folder of per-split files gives none (its files hold different images by construction).
    """
    root = Path(data_root)
    if root.is_dir():
        return []
    split = normalise_split(split)
    images = Path(options.images) if options.images else None
    coco = read_coco_keypoints(root, images, min_visible=options.min_common, check_images=False)
    if options.pairs is None:
        return partition_images(
            [o.image_id for o in coco.objects], options.split_seed, options.split_fractions
        )[split]
    records, _ = _listed_pairs(coco, Path(options.pairs), split, options.min_common)
    return sorted({int(r.meta[k]) for r in records for k in ("src_image_id", "trg_image_id")})


def _split_file(root: Path, split: str) -> Path:
    for name in SPLIT_FILES[split]:
        if (root / name).is_file():
            return root / name
    raise SimpleMatchError(
        f"{root} holds no COCO file for split '{split}' (looked for {', '.join(SPLIT_FILES[split])})",
        "pass one COCO JSON as --data-root (split by image), or name the per-split files as listed",
    )


def _record(coco: CocoKeypoints, a: CocoObject, b: CocoObject, common: np.ndarray) -> PairRecord:
    cat = coco.categories[a.category_id]
    ia, ib = coco.images[a.image_id], coco.images[b.image_id]
    return PairRecord(
        src_image=ia.path,
        trg_image=ib.path,
        src_kps=a.keypoints[common, :2],
        trg_kps=b.keypoints[common, :2],
        category=cat.name,
        pair_id=f"{a.id}-{b.id}",
        src_bbox=_corners(a.bbox),
        trg_bbox=_corners(b.bbox),
        src_size=(ia.width, ia.height),
        trg_size=(ib.width, ib.height),
        dataset="coco",
        meta={
            "keypoint_names": [cat.keypoint_names[k] for k in np.flatnonzero(common)],
            "src_annotation": a.id, "trg_annotation": b.id,
            "src_image_id": a.image_id, "trg_image_id": b.image_id,
        },
    )  # fmt: skip


def _corners(bbox: tuple[float, float, float, float]) -> np.ndarray:
    x, y, w, h = bbox
    return np.array([x, y, x + w, y + h], dtype=np.float64)


def _enumerate(coco: CocoKeypoints, objects: list[CocoObject], opts: CocoOptions) -> list[PairRecord]:
    """Every eligible pair among ``objects``, or a seeded sample of each source image's (see module doc)."""
    by_cat: dict[int, list[int]] = {}
    for i, o in enumerate(objects):
        by_cat.setdefault(o.category_id, []).append(i)
    vis = {c: np.stack([objects[i].visible for i in idx]).astype(np.int32) for c, idx in by_cat.items()}
    img_of = {c: np.array([objects[i].image_id for i in idx]) for c, idx in by_cat.items()}
    pos = {i: (c, j) for c, idx in by_cat.items() for j, i in enumerate(idx)}
    per_image: dict[int, list[int]] = {}
    for i, o in enumerate(objects):
        per_image.setdefault(o.image_id, []).append(i)
    records: list[PairRecord] = []
    for image_id in sorted(per_image):
        cand: list[tuple[int, int]] = []
        for i in per_image[image_id]:
            c, j = pos[i]
            ok = (vis[c] @ vis[c][j] >= opts.min_common) & (img_of[c] != image_id)
            cand.extend((i, by_cat[c][t]) for t in np.flatnonzero(ok))
        if opts.max_pairs_per_image is not None and len(cand) > opts.max_pairs_per_image:
            rng = np.random.default_rng([opts.split_seed, image_id])
            keep = np.sort(rng.choice(len(cand), opts.max_pairs_per_image, replace=False))
            cand = [cand[k] for k in keep]
        if opts.max_pairs_per_image is None and len(records) + len(cand) > MAX_ALL_PAIRS:
            raise SimpleMatchError(
                f"more than {MAX_ALL_PAIRS} pairs in this split (every pair of objects of a category)",
                "bound them with --max-pairs-per-image N (a seeded sample per source image, recorded)",
            )
        for a, b in cand:
            oa, ob = objects[a], objects[b]
            records.append(_record(coco, oa, ob, oa.visible & ob.visible))
    return records


def _listed_pairs(
    coco: CocoKeypoints, path: Path, split: str, min_common: int
) -> tuple[list[PairRecord], int]:
    """``--pairs`` CSV (header ``split,source,target``; annotation ids): this split's pairs, in file order.

    A listed pair with fewer than ``min_common`` common visible keypoints (or an annotation skipped for
    too few visible ones) is skipped and counted; an unknown id or a malformed line is refused.
    """
    fix = "write the pairs file as CSV lines split,source,target (trn|val|test, two annotation ids)"
    rows = csv_rows(read_text_file(path, fix), path, fix)
    if not rows or [c.strip().lower() for c in rows[0]] != ["split", "source", "target"]:
        raise SimpleMatchError(f"{path}: the first line must be the header split,source,target", fix)
    kept = {o.id: o for o in coco.objects}
    every: set[int] | None = None  # all annotation ids, skipped ones included: read only when needed
    records, skipped = [], 0
    for line, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        if len(row) != 3:
            raise SimpleMatchError(f"{path} line {line}: expected 3 columns, got {len(row)}", fix)
        try:
            row_split = normalise_split(row[0].strip())
            ids = int(row[1]), int(row[2])
        except (SimpleMatchError, ValueError) as err:
            raise SimpleMatchError(f"{path} line {line}: bad split or annotation id {row}", fix) from err
        if row_split != split:
            continue
        if (ids[0] not in kept or ids[1] not in kept) and every is None:
            every = {
                o.id for o in read_coco_keypoints(coco.source, min_visible=0, check_images=False).objects
            }
        for aid in ids:
            if aid not in kept and aid not in (every or ()):
                raise SimpleMatchError(f"{path} line {line}: annotation {aid} is not in {coco.source}", fix)
        if ids[0] not in kept or ids[1] not in kept:
            skipped += 1
            continue
        a, b = kept[ids[0]], kept[ids[1]]
        if a.category_id != b.category_id or a.image_id == b.image_id:
            raise SimpleMatchError(
                f"{path} line {line}: annotations {a.id} and {b.id} are not of one category in two images",
                fix,
            )
        common = a.visible & b.visible
        if int(common.sum()) < min_common:
            skipped += 1
            continue
        records.append(_record(coco, a, b, common))
    return records, skipped
