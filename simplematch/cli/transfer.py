"""``smatch transfer``: keypoints of annotated reference images to every image of a folder (COCO out)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from simplematch.cli.app import ConfidenceOption, _choices, _console, app
from simplematch.config import DEFAULT_CONFIDENCE, DEFAULT_TRANSFER_COMBINE, TRANSFER_COMBINES

Combine = _choices("Combine", TRANSFER_COMBINES)


@app.command()
def transfer(
    refs: Annotated[
        Path,
        typer.Option(
            metavar="FILE",
            help="COCO keypoints JSON of the annotated reference image(s) (CVAT / Label Studio export).",
        ),
    ],
    targets: Annotated[
        Path,
        typer.Option(metavar="DIR", help="Folder of the images to annotate (searched recursively, sorted)."),
    ],
    out: Annotated[
        Path,
        typer.Option(metavar="FILE", help="COCO keypoints file to write (.json): results + images list."),
    ],
    model: Annotated[
        Path, typer.Option(metavar="FILE", help="Exported .onnx or .engine. [default: runs/demo/model.onnx]")
    ] = None,
    images: Annotated[
        Path,
        typer.Option(
            metavar="DIR", help="Folder of the reference images. [default: file_name relative to --refs]"
        ),
    ] = None,
    review: Annotated[
        Path,
        typer.Option(
            metavar="DIR",
            help="Write a static HTML contact sheet here (one match picture per target, worst first).",
        ),
    ] = None,
    combine: Annotated[
        Combine, typer.Option(help="How several references' matches of a keypoint are combined.")
    ] = Combine(DEFAULT_TRANSFER_COMBINE),
    confidence: ConfidenceOption = DEFAULT_CONFIDENCE,
    min_confidence: Annotated[
        float,
        typer.Option(
            metavar="C",
            help="Points below this confidence (0-1) get v = 0 (their confidence stays in the file).",
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(metavar="N", help="Target images per encoder batch.")] = 8,
    device: Annotated[
        str, typer.Option(metavar="<cpu|cuda|tensorrt|tensorrt-fp16>", help="Where the model runs.")
    ] = "cpu",
    allow_fallback: Annotated[bool, typer.Option(help="Run on CPU when CUDA is unavailable.")] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the --out file of an interrupted run (same options).")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing --out file / --review folder.")
    ] = False,
) -> None:
    """Transfer the keypoints of reference images to every image of a folder (torch-free runtime).

    Ctrl-C (SIGINT/SIGTERM) writes a valid file with the targets done so far and exits 130; --resume
    continues it. An unreadable image is reported and skipped (exit 1 at the end).
    """
    from simplematch.progress import progress_bar
    from simplematch.runtime.transfer import run_transfer

    console = _console()
    bar = progress_bar(console)
    task = bar.add_task("targets", total=None)

    def progress(done: int, total: int) -> None:
        if not bar.live.is_started:  # started by the first target: a refused run prints its one line only
            bar.start()
        bar.update(task, completed=done, total=total)

    try:
        summary = run_transfer(
            refs, targets, out, model, images=images, review_dir=review, combine=combine.value,
            confidence=confidence, min_confidence=min_confidence, batch_size=batch_size, device=device,
            allow_fallback=allow_fallback, resume=resume, force=force, progress=progress,
            on_failure=lambda f: console.print(f"skipped {f['file']}: {f['error']}"),
        )  # fmt: skip
    finally:
        if bar.live.is_started:
            bar.stop()
    s = summary
    rate = f", {s['images_per_s']:.2f} images/s" if s["images_per_s"] else ""
    console.print(
        f"{s['done']} of {s['targets']} targets in {s['out']} ({s['written']} this run{rate},"
        f" {s['failed']} unreadable, {s['excluded']} reference images in the folder left out)"
    )
    if s["review"]:
        console.print(f"review page: {s['review']}")
    if s["interrupted"]:
        console.print(
            "interrupted: the file holds the targets done so far; continue with the same command and --resume"
        )
        raise typer.Exit(code=130)
    if s["failed"]:
        raise typer.Exit(code=1)
