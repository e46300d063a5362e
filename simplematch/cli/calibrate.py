"""``smatch calibrate MODEL``: a confidence that is a probability (registered on the app when
``simplematch.cli`` is imported, like the other commands that live in their own module)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from simplematch.calibration import DEFAULT_ALPHA
from simplematch.cli.app import Dataset, app


@app.command()
def calibrate(
    model: Annotated[Path, typer.Argument(metavar="MODEL", help="Checkpoint folder or exported .onnx file.")],
    out: Annotated[
        Path,
        typer.Option(
            metavar="PATH", help="The calibrated copy: a new folder (checkpoint) or a new .onnx file."
        ),
    ],
    dataset: Annotated[Dataset, typer.Option(help="Annotated pairs the model was not trained on.")],
    data_root: Annotated[
        Path, typer.Option(metavar="DIR", help="Dataset folder (not for synthetic).")
    ] = None,
    split: Annotated[
        str, typer.Option(metavar="<trn|val|test>", help="Split to calibrate on (PF-WILLOW has only test).")
    ] = "val",
    category: Annotated[
        list[str],
        typer.Option(metavar="NAME", help="Only these categories (repeat the option). [default: all]"),
    ] = None,
    alpha: Annotated[
        float, typer.Option(metavar="A", help="'Correct' means error < alpha x PCK threshold.")
    ] = DEFAULT_ALPHA,
    limit: Annotated[
        int, typer.Option(metavar="N", help="A seeded sample of this many pairs. [default: all]")
    ] = None,
    pairs: Annotated[
        int,
        typer.Option(
            metavar="N", help="The first N pairs of the split (synthetic: generate N). [default: 64]"
        ),
    ] = None,
    seed: Annotated[int, typer.Option(metavar="N", help="Seed of --limit and of the synthetic pairs.")] = 0,
    batch_size: Annotated[int, typer.Option(metavar="N", help="Pairs per batch.")] = 8,
    device: Annotated[str, typer.Option(metavar="<auto|cpu|cuda>", help="auto: CUDA when present.")] = "auto",
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out.")] = False,
) -> None:
    """Fit P(match correct at alpha) from the confidence cues on annotated pairs; write a calibrated copy."""
    from simplematch.calibrate import CalibrateRequest, calibrate_model

    request = CalibrateRequest(
        dataset=dataset.value, data_root=data_root, split=split, categories=category or None, alpha=alpha,
        limit=limit, pairs=pairs, seed=seed, batch_size=batch_size, device=device,
    )  # fmt: skip
    res = calibrate_model(model, request, out, force=force)
    cal, q = res["calibration"], res["quality"]
    from rich.console import Console

    Console(highlight=False).print(
        f"calibrated on {cal['pairs']} {cal['dataset']} {cal['split']} pairs ({q['points']} points,"
        f" {100 * q['correct_fraction']:.1f}% correct at alpha {cal['alpha']:g}); on these pairs: AUROC"
        f" {q['auroc']:.3f}, ECE {q['ece']:.3f}, Brier {q['brier']:.3f} -> {res['out']}"
    )
