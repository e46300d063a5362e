"""One entry point over every dataset reader (torch-free)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from simplematch.config import DATASETS, THRESHOLDS
from simplematch.data.records import PairRecord, normalise_split
from simplematch.errors import SimpleMatchError

# PCK normaliser per dataset: spair/ap10k target bbox, pfpascal image, pfwillow keypoint extent,
# synthetic image.
THRESHOLD_KIND: dict[str, str] = dict(THRESHOLDS)


def load_records(
    dataset: str,
    data_root: str | Path | None,
    split: str,
    *,
    ap10k_split: str = "intra",
    seed: int = 0,
    n_pairs: int | None = None,
    released: bool = False,
    coco: Any = None,
) -> list[PairRecord]:
    """Records of ``split`` (trn/train, val, test). ``n_pairs`` keeps the first n (synthetic: generates n).

    PF-PASCAL uses the CSV keypoints when the CSV has them (val/test) and the .mat keypoints otherwise.
    ``released`` (``smatch eval --released-compat``): the released code's reading quirks, PF-PASCAL
    per-image NaN filtering and PF-WILLOW's swapped direction (docs/recipe.md).
    ``coco``: :class:`simplematch.data.coco_pairs.CocoOptions` for ``dataset="coco"`` (None: defaults).
    """
    return load_records_with_info(
        dataset, data_root, split, ap10k_split=ap10k_split, seed=seed, n_pairs=n_pairs, released=released,
        coco=coco,
    )[0]  # fmt: skip


def load_records_with_info(
    dataset: str,
    data_root: str | Path | None,
    split: str,
    *,
    ap10k_split: str = "intra",
    seed: int = 0,
    n_pairs: int | None = None,
    released: bool = False,
    coco: Any = None,
) -> tuple[list[PairRecord], dict[str, Any]]:
    """:func:`load_records` and what produced the records, to be recorded (COCO: the split, the seed,
    the skipped annotations; other datasets: empty)."""
    if dataset not in DATASETS:
        raise SimpleMatchError(f"unknown dataset '{dataset}'", f"use one of {', '.join(DATASETS)}")
    split = normalise_split(split)
    if dataset == "pfwillow" and split != "test":
        raise SimpleMatchError(
            f"PF-WILLOW has no '{split}' split (it is a test-only benchmark)", "pass --split test"
        )
    if dataset == "synthetic":
        if data_root is not None:
            raise SimpleMatchError(
                f"--data-root {data_root} is not used by the synthetic dataset (it is generated)",
                "drop --data-root, or pick the dataset that lives there with --dataset",
            )
        from simplematch.extras import require

        require("synthetic", "--dataset synthetic")
        from simplematch.data.synthetic import read_synthetic

        return read_synthetic(split, seed=seed, n_pairs=n_pairs), {}
    if data_root is None:
        raise SimpleMatchError(f"dataset '{dataset}' needs a data root", "pass --data-root <dataset folder>")
    root = Path(data_root)
    info: dict[str, Any] = {}
    if dataset == "coco":
        from simplematch.data.coco_pairs import read_coco_pairs

        if not root.exists():
            raise SimpleMatchError(
                f"COCO data root {root} does not exist",
                "pass the COCO keypoints JSON (or a folder of per-split JSONs) as --data-root",
            )
        records, info = read_coco_pairs(root, split, coco)
        return _first(records, n_pairs), info
    if not root.is_dir():
        raise SimpleMatchError(f"data root {root} is not a folder", "pass the dataset folder as --data-root")
    if dataset == "spair":
        from simplematch.data.spair import read_spair

        records = read_spair(root, split)
    elif dataset == "pfpascal":
        from simplematch.data.pfpascal import read_pfpascal

        records = read_pfpascal(root, split, released=released)
    elif dataset == "pfwillow":
        from simplematch.data.pfwillow import read_pfwillow

        records = read_pfwillow(root, split, released=released)
    else:
        from simplematch.data.ap10k import read_ap10k

        records = read_ap10k(root, split, ap10k_split=ap10k_split)
    return _first(records, n_pairs), info


def _first(records: list[PairRecord], n_pairs: int | None) -> list[PairRecord]:
    if n_pairs is None:
        return records
    if n_pairs < 1:
        raise SimpleMatchError(f"n_pairs={n_pairs}", "pass n_pairs >= 1")
    return records[:n_pairs]
