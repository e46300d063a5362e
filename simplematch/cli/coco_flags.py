"""The COCO keypoints flags shared by ``smatch train``, ``eval`` and ``stats`` (``--dataset coco``).

Typer has no option groups, so each command lists them; the types and help texts are written once here.
Their values become the ``coco_*`` config keys (:data:`simplematch.config.COCO_FLAGS`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

Images = Annotated[
    Path,
    typer.Option(
        "--images",
        metavar="DIR",
        help="coco: folder of the images. [default: file_name relative to the JSON's folder]",
    ),
]
MinCommon = Annotated[
    int,
    typer.Option(
        "--min-common",
        metavar="N",
        help="coco: least keypoints visible in both objects of a pair. [default: 3]",
    ),
]
Pairs = Annotated[
    Path,
    typer.Option(
        "--pairs",
        metavar="FILE",
        help="coco: CSV split,source,target of annotation ids (instead of the split).",
    ),
]
SplitSeed = Annotated[
    int,
    typer.Option("--split-seed", metavar="N", help="coco: seed of the partition of the images. [default: 0]"),
]
SplitFractions = Annotated[
    str,
    typer.Option(
        "--split-fractions",
        metavar="TRN,VAL,TEST",
        help="coco: trn,val,test fractions of the images. [default: 0.8,0.1,0.1]",
    ),
]
MaxPairsPerImage = Annotated[
    int,
    typer.Option(
        "--max-pairs-per-image",
        min=1,
        metavar="N",
        help="coco: keep a seeded sample of N pairs per source image. [default: all]",
    ),
]


def coco_flags(
    images: Path | None,
    min_common: int | None,
    pairs: Path | None,
    split_seed: int | None,
    split_fractions: str | None,
    max_pairs_per_image: int | None,
) -> dict[str, Any]:
    """The flags as config keys (``None``: not given)."""
    return {
        "coco_images": str(images) if images is not None else None,
        "coco_min_common": min_common,
        "coco_pairs": str(pairs) if pairs is not None else None,
        "coco_split_seed": split_seed,
        "coco_split_fractions": split_fractions,
        "coco_max_pairs_per_image": max_pairs_per_image,
    }


def given(flags: dict[str, Any]) -> dict[str, Any] | None:
    """Only the flags the user gave; ``None`` when none was (the request of an evaluation without COCO
    flags is then the one the library's callers, e.g. the demo, build)."""
    return {k: v for k, v in flags.items() if v is not None} or None
