"""The ``smatch`` command line. Commands are thin wrappers over library functions; heavy imports (torch,
onnx, onnxruntime) happen inside each command so ``smatch --help`` is instant.

User errors (:class:`SimpleMatchError`) print one line and exit 2; ``--debug`` (anywhere on the line)
shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from typer.exceptions import TyperException

from simplematch.cli.coco_flags import (
    Images,
    MaxPairsPerImage,
    MinCommon,
    Pairs,
    SplitFractions,
    SplitSeed,
    coco_flags,
    given,
)
from simplematch.cli.serve import serve as serve_command
from simplematch.config import (
    AP10K_SPLITS,
    CONFIDENCE_CUES,
    DATASETS,
    DEFAULT_ALPHAS,
    DEFAULT_CONFIDENCE,
    DEFAULT_PRESET,
    EXPORT_FORMATS,
    FRAMES,
    OFFICIAL_FAMILIES,
    PRESETS,
    SPLITS,
    THRESHOLD_KINDS,
    Config,
)
from simplematch.errors import SimpleMatchError

app = typer.Typer(
    name="smatch",
    help="SimpleMatch semantic correspondence: train, eval, export, infer, transfer, calibrate, serve, bench."
    " --debug shows tracebacks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    """A typer choice type from a config Literal's values (member name = value, e.g. ``cross-species``)."""
    return Enum(name, [(v, v) for v in values], type=str)


Dataset = _choices("Dataset", DATASETS)
Ap10kSplit = _choices("Ap10kSplit", AP10K_SPLITS)


Frame = _choices("Frame", FRAMES)
Threshold = _choices("Threshold", THRESHOLD_KINDS)
ExportFormat = _choices("ExportFormat", EXPORT_FORMATS)
# A plain string, not a choice type: an unknown cue gets the library's one-line message (check_confidence).
ConfidenceOption = Annotated[
    str,
    typer.Option(metavar="CUE", help=f"Confidence cue: {' | '.join(CONFIDENCE_CUES)} (docs/confidence.md)."),
]
Family = _choices("Family", OFFICIAL_FAMILIES)
# Metavars name what a value is (typer would print the Python type: <int>, <list[float]>, <path>).
SPLIT_METAVAR = f"<{'|'.join(SPLITS)}>"
SPLIT_HELP = "Benchmark split (train and validation are accepted for trn and val)."
DEVICE_METAVAR = "<auto|cpu|cuda>"
INFER_TABLE_ROWS = 20  # `smatch infer` prints this many keypoints; --out has them all


def _preset_default(key: str) -> str:
    """The default of a `train` flag: the --config / --preset value, shown for the default preset."""
    import dataclasses

    field = next(f for f in dataclasses.fields(Config) if f.name == key)
    value = PRESETS[DEFAULT_PRESET].get(key, field.default)
    return f"[default: the preset's; {DEFAULT_PRESET}: {value}]"


def _console():
    from rich.console import Console

    return Console(stderr=False, highlight=False)


def _is_main_process() -> bool:
    """Rank 0 under torchrun (read from the environment: torch-free, valid before the group exists)."""
    import os

    return int(os.environ.get("RANK", "0")) == 0


def _cleanup_distributed() -> None:
    """Leave the process group (if a command joined one) so torchrun workers exit without warnings."""
    if "torch" in sys.modules:
        from simplematch import distributed

        distributed.cleanup()


# ------------------------------------------------------------------------------------------------------
@app.command()
def train(
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            metavar="DIR",
            help="Output folder (checkpoint, config, metrics). Required unless --resume.",
        ),
    ] = None,
    preset: Annotated[
        str,
        typer.Option(metavar="NAME", help=f"Preset (see `smatch presets`). [default: {DEFAULT_PRESET}]"),
    ] = None,
    dataset: Annotated[
        Dataset, typer.Option(help=f"Training benchmark. {_preset_default('dataset')}")
    ] = None,
    data_root: Annotated[
        Path,
        typer.Option(
            metavar="PATH",
            help="Benchmark root in its official layout, or a COCO keypoints JSON (coco); none: synthetic.",
        ),
    ] = None,
    backbone: Annotated[
        str, typer.Option(metavar="NAME", help=f"timm model name. {_preset_default('backbone')}")
    ] = None,
    weights: Annotated[
        Path,
        typer.Option(
            metavar="FILE",
            help="Local pretrained backbone file (never downloaded). [default: none, random init]",
        ),
    ] = None,
    init: Annotated[
        Path,
        typer.Option(
            metavar="DIR",
            help="Start from this run's (or `smatch convert` output's) whole model: weights only, its"
            " architecture checked; without --preset/--config its config is the starting one.",
        ),
    ] = None,
    img_size: Annotated[
        int,
        typer.Option(
            metavar="PX",
            help="Square input side in pixels, divisible by 4 (ViT: also by the patch)."
            f" {_preset_default('img_size')}",
        ),
    ] = None,
    window: Annotated[
        int,
        typer.Option(
            metavar="K",
            help="Window size k of the fine head, in feature cells (0 = whole map)."
            f" [default: the preset's; {DEFAULT_PRESET}: {PRESETS[DEFAULT_PRESET]['windows'][-1]}]",
        ),
    ] = None,
    batch_size: Annotated[
        int, typer.Option(metavar="N", help=f"Pairs per optimisation step. {_preset_default('batch_size')}")
    ] = None,
    epochs: Annotated[
        int, typer.Option(metavar="N", help=f"Passes over the training pairs. {_preset_default('epochs')}")
    ] = None,
    max_steps: Annotated[
        int,
        typer.Option(
            metavar="N",
            help="Stop after N optimisation steps, before the epochs end."
            f" [default: the preset's; {DEFAULT_PRESET}: none, demo_cpu: {PRESETS['demo_cpu']['max_steps']}]",
        ),
    ] = None,
    lr: Annotated[
        float, typer.Option(metavar="RATE", help=f"Initial learning rate. {_preset_default('lr')}")
    ] = None,
    seed: Annotated[
        int, typer.Option(metavar="N", help=f"Seed of initialisation and sampling. {_preset_default('seed')}")
    ] = None,
    device: Annotated[
        str, typer.Option(metavar=DEVICE_METAVAR, help="auto: CUDA when present. [default: auto]")
    ] = None,
    ap10k_split: Annotated[
        Ap10kSplit, typer.Option(help="AP-10K only: which benchmark split to train on. [default: intra]")
    ] = None,
    amp: Annotated[
        bool,
        typer.Option(
            "--amp", help="Mixed precision (CUDA only). Off by default: the released recipe trains in fp32."
        ),
    ] = False,
    resume: Annotated[
        Path,
        typer.Option(
            metavar="DIR",
            help="Continue the run in this folder with its saved config (--max-steps = new total).",
        ),
    ] = None,
    config: Annotated[
        Path,
        typer.Option(
            "--config",
            metavar="FILE",
            help="Start from this config.json (e.g. a previous run's); flags override it.",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace the run already in --out (its checkpoints and metrics).")
    ] = False,
    images: Images = None,
    min_common: MinCommon = None,
    pairs: Pairs = None,
    split_seed: SplitSeed = None,
    split_fractions: SplitFractions = None,
    max_pairs_per_image: MaxPairsPerImage = None,
) -> None:
    """Train SimpleMatch (PyTorch). Writes model.safetensors, config.json, metrics.jsonl, best.json.

    Ctrl-C (SIGINT) or SIGTERM saves a resumable checkpoint and exits with code 130 / 143. Under
    `torchrun --nproc_per_node N -m simplematch.cli train ...` it trains with DDP (gloo on CPU, nccl on CUDA).
    """
    from simplematch.extras import require

    require("train", "`smatch train`")
    from simplematch.train import plan_from_flags
    from simplematch.train import train as run_train

    cfg, out = plan_from_flags(
        out=out, resume=resume, preset=preset, config=config, window=window, max_steps=max_steps,
        device=device, force=force, dataset=dataset, data_root=data_root, backbone=backbone, weights=weights,
        img_size=img_size, batch_size=batch_size, epochs=epochs, lr=lr, seed=seed, ap10k_split=ap10k_split,
        amp=amp, init=init,
        **coco_flags(images, min_common, pairs, split_seed, split_fractions, max_pairs_per_image),
    )  # fmt: skip
    main_rank = _is_main_process()
    console = _console()
    if main_rank:
        console.print(f"training {cfg.backbone} @ {cfg.img_size} on {cfg.dataset} -> {out}", soft_wrap=True)
    try:
        res = run_train(cfg, out, resume=resume is not None, replace=force, console=console)
    finally:
        _cleanup_distributed()
    if res.status == "interrupted":
        from simplematch import signals

        signum = getattr(res, "signum", None) or 2  # 2: SIGINT
        if main_rank:
            print(
                f"{signals.message(signum)} at step {res.step}; resume with: smatch train --resume {out}",
                file=sys.stderr,
            )
        raise typer.Exit(signals.exit_code(signum))
    best = res.best or {}
    if main_rank:
        pck = best.get("pck", {}).get("0.1", float("nan"))
        console.print(
            f"done: {res.step} steps in {res.seconds:.0f}s; best val PCK@0.1 {pck:.2f}"
            f" at step {best.get('step')} -> {out / 'model.safetensors'}",
            soft_wrap=True,
        )


# ------------------------------------------------------------------------------------------------------
@app.command("eval")
def eval_cmd(
    model: Annotated[
        Path,
        typer.Argument(
            metavar="MODEL", help="Checkpoint folder (PyTorch) or MODEL.onnx / MODEL.engine (runtime)."
        ),
    ],
    dataset: Annotated[Dataset, typer.Option(help="Benchmark to score on.")] = Dataset.pfwillow,
    data_root: Annotated[
        Path,
        typer.Option(
            metavar="PATH",
            help="Benchmark root (none for synthetic), or a COCO keypoints JSON (coco; default: the file a"
            " COCO run was trained on).",
        ),
    ] = None,
    split: Annotated[str, typer.Option(metavar=SPLIT_METAVAR, help=SPLIT_HELP)] = "test",
    alpha: Annotated[
        list[float],
        typer.Option(
            metavar="A",
            help="PCK threshold as a fraction of the benchmark's threshold; repeat for several."
            f" [default: {' '.join(map(str, DEFAULT_ALPHAS))}]",
        ),
    ] = None,
    frame: Annotated[
        Frame, typer.Option(help="Compare in the resized model frame or original pixels.")
    ] = Frame.resized,
    batch_size: Annotated[int, typer.Option(metavar="N", help="Images per forward pass.")] = 8,
    device: Annotated[
        str, typer.Option(metavar=DEVICE_METAVAR, help="auto: CUDA when present (runtime models: cpu).")
    ] = "auto",
    window: Annotated[
        int,
        typer.Option(
            min=0,
            metavar="K",
            help="Override the fine window size (paper Table 7); 0 = whole map. [default: the model's]",
        ),
    ] = None,
    ap10k_split: Annotated[
        Ap10kSplit, typer.Option(help="AP-10K only: which benchmark split.")
    ] = Ap10kSplit.intra,
    limit: Annotated[
        int,
        typer.Option(
            min=1,
            metavar="N",
            help="Evaluate N pairs sampled across categories (seeded by --seed). [default: all pairs]",
        ),
    ] = None,
    seed: Annotated[
        int, typer.Option(metavar="N", help="Seed of the synthetic split and of the --limit sample.")
    ] = 0,
    json_out: Annotated[
        Path, typer.Option("--json", metavar="FILE", help="Write the result JSON here (PCK in percent).")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite existing --json / --predictions files.")
    ] = False,
    threshold: Annotated[
        Threshold,
        typer.Option(
            help="PCK threshold kind (default: the benchmark's; PF-WILLOW kps). released: the released code's"
            " PF-WILLOW threshold (keypoint extent after -1 padding, resized frame). Recorded in the JSON."
        ),
    ] = None,
    released_compat: Annotated[
        bool,
        typer.Option(
            "--released-compat",
            help="Score as the authors' released code, to check a converted checkpoint against published"
            " numbers: PF-WILLOW released threshold and direction, PF-PASCAL per-image NaN filtering, d <="
            " threshold (docs/recipe.md).",
        ),
    ] = False,
    confidence: ConfidenceOption = DEFAULT_CONFIDENCE,
    min_confidence: Annotated[
        float,
        typer.Option(
            metavar="C", help="Also report precision and the fraction kept at this confidence (0-1)."
        ),
    ] = None,
    predictions: Annotated[
        Path, typer.Option(metavar="FILE", help="Write one JSON line per pair here (.jsonl).")
    ] = None,
    plots: Annotated[
        Path,
        typer.Option(
            metavar="DIR",
            help="Write PCK-alpha, per-category, precision-coverage, worst-pairs PNGs here"
            " (needs simplematch[plots]).",
        ),
    ] = None,
    images: Images = None,
    min_common: MinCommon = None,
    pairs: Pairs = None,
    split_seed: SplitSeed = None,
    split_fractions: SplitFractions = None,
    max_pairs_per_image: MaxPairsPerImage = None,
) -> None:
    """PCK on SPair-71k, PF-PASCAL, PF-WILLOW, AP-10K, synthetic or COCO keypoints pairs, with PyTorch or
    the runtime."""
    from simplematch.evaluation import EvalOutputs, EvalRequest, print_result, run_evaluation

    request = EvalRequest(
        dataset=dataset.value, data_root=data_root, split=split, alphas=alpha, frame=frame.value,
        batch_size=batch_size, device=device, window=window, ap10k_split=ap10k_split.value, limit=limit,
        seed=seed, threshold=threshold.value if threshold else None, released_compat=released_compat,
        confidence=confidence, min_confidence=min_confidence,
        coco=given(coco_flags(images, min_common, pairs, split_seed, split_fractions, max_pairs_per_image)),
    )  # fmt: skip
    outputs = EvalOutputs(json=json_out, predictions=predictions, plots=plots, force=force)
    try:
        run_evaluation(
            model, request, outputs, main_process=_is_main_process(),
            show=lambda res: print_result(res, _console()),
        )  # fmt: skip
    finally:
        _cleanup_distributed()


# ------------------------------------------------------------------------------------------------------
@app.command()
def stats(
    dataset: Annotated[Dataset, typer.Option(help="Benchmark to count.")],
    data_root: Annotated[
        Path,
        typer.Option(metavar="PATH", help="Benchmark root (none for synthetic), or a COCO keypoints JSON."),
    ] = None,
    split: Annotated[
        str,
        typer.Option(
            metavar=SPLIT_METAVAR, help=SPLIT_HELP + " [default: trn; pfwillow: test, its only split]"
        ),
    ] = None,
    img_size: Annotated[
        int, typer.Option(metavar="PX", help="Input side the keypoints are resized to.")
    ] = 256,
    images: Images = None,
    min_common: MinCommon = None,
    pairs: Pairs = None,
    split_seed: SplitSeed = None,
    split_fractions: SplitFractions = None,
    max_pairs_per_image: MaxPairsPerImage = None,
) -> None:
    """Paper Table 1: keypoints that share a feature cell with another keypoint at 16/32/64 maps."""
    from rich.table import Table

    from simplematch.data.coco_pairs import coco_options, refuse_unused_flags
    from simplematch.data.load import load_records_with_info
    from simplematch.data.stats import default_stats_split, keypoint_fusion_stats

    split = split or default_stats_split(dataset.value)
    coco = coco_flags(images, min_common, pairs, split_seed, split_fractions, max_pairs_per_image)
    refuse_unused_flags(dataset.value, coco)
    records, data = load_records_with_info(
        dataset.value, str(data_root) if data_root else None, split, coco=coco_options(coco)
    )
    if data:
        skipped, least = data["skipped_annotations"], data["min_common"]
        _console().print(
            f"{data['pairs']} pairs; {skipped} annotation(s) skipped, fewer than {least} visible keypoints",
            soft_wrap=True,
        )
    res = keypoint_fusion_stats(records, img_size=img_size)
    table = Table(title=f"keypoint fusion, {dataset.value} {split}, input {img_size}")
    sizes = [k for k in res if k != "total"]
    for k in sizes:
        table.add_column(f"{k}x{k}", justify="right")
    table.add_column("total", justify="right")
    table.add_row(*[str(res[k]) for k in sizes], str(res["total"]))
    _console().print(table)


@app.command()
def presets(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print every preset fully resolved (all config keys) as JSON.")
    ] = False,
) -> None:
    """List the configuration presets (the authors' released configs; see docs/recipe.md)."""
    from simplematch.config import PAPER_TEXT_DIFFERS, PRESETS, resolved_presets

    if as_json:
        import json

        typer.echo(json.dumps(resolved_presets(), indent=2, sort_keys=True))
        return
    for name, values in PRESETS.items():
        note = f"  [{PAPER_TEXT_DIFFERS[name]}]" if name in PAPER_TEXT_DIFFERS else ""
        typer.echo(f"{name}: " + ", ".join(f"{k}={v}" for k, v in values.items()) + note)


# ------------------------------------------------------------------------------------------------------
@app.command()
def export(
    checkpoint: Annotated[
        Path,
        typer.Argument(
            metavar="CHECKPOINT", help="Checkpoint folder made by `smatch train` / `smatch convert`."
        ),
    ],
    fmt: Annotated[
        ExportFormat, typer.Option("--format", help="onnx, or trt (TensorRT: NOT exercised by CI).")
    ] = ExportFormat.onnx,
    out: Annotated[
        Path,
        typer.Option(
            metavar="FILE", help="Output. [default: CHECKPOINT/model[.match|.int8|.fp16].onnx or .engine]"
        ),
    ] = None,
    fp16: Annotated[bool, typer.Option("--fp16", help="float16 weights/activations, float32 I/O.")] = False,
    batch: Annotated[
        str, typer.Option(metavar="N|dynamic", help="Static batch size N, or 'dynamic'.")
    ] = "dynamic",
    opset: Annotated[
        int,
        typer.Option(
            metavar="N", help="ONNX opset, 18 up to what the installed onnx knows (17 and lower refused)."
        ),
    ] = 18,
    check: Annotated[bool, typer.Option("--check/--no-check", help="Parity check against PyTorch.")] = True,
    check_data: Annotated[
        Path,
        typer.Option(
            metavar="DIR",
            help="Folder of real images for the check (e.g. PF-WILLOW). [default: bundled photos]",
        ),
    ] = None,
    with_matching: Annotated[
        bool,
        typer.Option(
            "--with-matching", help="One graph: images + source keypoints -> target keypoints + cues."
        ),
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output file.")] = False,
    int8: Annotated[
        bool, typer.Option("--int8", help="Static INT8 (QDQ, per-channel), gated vs fp32.")
    ] = False,
    calib_data: Annotated[
        Path, typer.Option(metavar="DIR", help="--int8: folder of real calibration images.")
    ] = None,
    calib_method: Annotated[
        str, typer.Option(metavar="<minmax|percentile|entropy>", help="--int8: calibration method.")
    ] = "minmax",
    int8_min_agreement: Annotated[
        float,
        typer.Option(
            metavar="FRACTION",
            help="--int8: least keypoint agreement with fp32 (within one cell), 0-1. [default: 0.9]",
        ),
    ] = None,
    img_size: Annotated[
        int,
        typer.Option(
            metavar="PX",
            help="Export at this input size (ViT position table resampled once). [default: the trained size]",
        ),
    ] = None,
) -> None:
    """Export to ONNX or a TensorRT engine, with metadata and a built-in parity check.

    The TensorRT path is written against the TensorRT 10/11 Python API but is NOT exercised by this
    repository's CI (TensorRT cannot be installed there); it needs an NVIDIA GPU and `simplematch[trt]`.
    """
    from simplematch.export import export_checkpoint
    from simplematch.extras import require

    require("train", "`smatch export`")

    if batch != "dynamic" and not batch.isdigit():
        raise SimpleMatchError(f"--batch {batch!r} is invalid", "pass a positive integer or 'dynamic'")
    res = export_checkpoint(
        checkpoint, fmt=fmt.value, out=out, fp16=fp16, batch=None if batch == "dynamic" else int(batch),
        opset=opset, check=check, check_data=check_data, with_matching=with_matching, force=force,
        int8=int8, calib_data=calib_data, calib_method=calib_method, int8_min_agreement=int8_min_agreement,
        img_size=img_size,
    )  # fmt: skip
    _print_export(res)


def _print_export(res: dict) -> None:
    from rich.table import Table

    table = Table(title=f"exported {res['path']} ({res['format']}, {res['precision']})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("seconds", "size_mib"):
        if key in res:
            table.add_row(key, f"{res[key]:.2f}")
    for key, value in (res.get("parity") or {}).items():
        table.add_row(key, f"{value:.3g}" if isinstance(value, float) else str(value))
    _console().print(table)


@app.command()
def infer(
    src: Annotated[Path, typer.Argument(metavar="SRC", help="Source image (omit with --pairs).")] = None,
    tgt: Annotated[Path, typer.Argument(metavar="TGT", help="Target image (omit with --pairs).")] = None,
    kps: Annotated[
        Path,
        typer.Option(
            metavar="FILE",
            help='JSON: [[x, y], ...] or {"keypoints": [[x, y], ...]} in source-image pixels, inside the'
            " image (0 <= x <= width - 1, 0 <= y <= height - 1); or an infer --out JSON (its targets become"
            " the sources).",
        ),
    ] = None,
    model: Annotated[
        Path, typer.Option(metavar="FILE", help="Exported .onnx or .engine. [default: runs/demo/model.onnx]")
    ] = None,
    out: Annotated[
        Path,
        typer.Option(
            metavar="FILE",
            help="Write every keypoint to this JSON (.jsonl with --pairs); the table shows 20.",
        ),
    ] = None,
    viz: Annotated[
        Path, typer.Option(metavar="FILE", help="Write a side-by-side match picture (PNG) here.")
    ] = None,
    device: Annotated[
        str,
        typer.Option(
            metavar="<cpu|cuda|tensorrt|tensorrt-fp16>",
            help="GPU: onnxruntime-gpu; tensorrt: its TensorRT EP.",
        ),
    ] = "cpu",
    allow_fallback: Annotated[bool, typer.Option(help="Run on CPU when CUDA is unavailable.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing --out / --viz files.")] = False,
    pairs: Annotated[
        Path,
        typer.Option(
            metavar="FILE",
            help="Many pairs; needs --out FILE.jsonl. CSV with the header src,tgt,kps (optional truth; kps:"
            ' a keypoint JSON file) or JSONL lines {"src": ..., "tgt": ... or [...], "kps": FILE or'
            " [[x, y], ...]}. Relative paths are relative to the pairs file's folder.",
        ),
    ] = None,
    confidence: ConfidenceOption = DEFAULT_CONFIDENCE,
    min_confidence: Annotated[
        float,
        typer.Option(
            metavar="C", help="Reject matches below this confidence, 0-1 (target null, rejected true)."
        ),
    ] = None,
    truth: Annotated[
        Path,
        typer.Option(metavar="FILE", help="True target keypoints (same format as --kps): per-point errors."),
    ] = None,
) -> None:
    """Match keypoints from SRC into TGT with the torch-free runtime (numpy + onnxruntime / TensorRT)."""
    if pairs is not None:
        return _infer_pairs(pairs, src, tgt, kps, model, out, viz, truth, device, allow_fallback, confidence,
                            min_confidence, force)  # fmt: skip
    from rich.table import Table

    from simplematch.runtime.infer import run_infer

    if src is None or tgt is None or kps is None:
        raise SimpleMatchError("infer needs SRC, TGT and --kps", "or pass --pairs FILE for many pairs")
    res = run_infer(
        src, tgt, kps, model=model, out=out, viz=viz, device=device, allow_fallback=allow_fallback,
        confidence=confidence, min_confidence=min_confidence, truth=truth, force=force,
    )  # fmt: skip
    table = Table(title=f"{src} -> {tgt} ({res['provider']}), confidence {res['confidence']}")
    cols = ["#", "source x", "source y", "target x", "target y", "score", "confidence"]
    cols += ["error px", "error / thr"] if truth is not None else []
    for col in cols:
        table.add_column(col, justify="right")
    shown = res["keypoints"][:INFER_TABLE_ROWS]  # the console is for reading; --out holds every row
    for i, k in enumerate(shown):
        target = ["rejected", ""] if k["target"] is None else [f"{v:.1f}" for v in k["target"]]
        row = [
            str(i),
            *[f"{v:.1f}" for v in k["source"]],
            *target,
            f"{k['score']:.3f}",
            f"{k['confidence']:.3f}",
        ]
        if truth is not None:
            row += [f"{k['error_px']:.1f}", f"{k['error_rel']:.3f}"]
        table.add_row(*row)
    _console().print(table)
    if len(res["keypoints"]) > len(shown):
        more = len(res["keypoints"]) - len(shown)
        where = f"in {out}" if out is not None else "with --out FILE"
        _console().print(
            f"... {more} more keypoints ({len(res['keypoints'])} in all) {where}", soft_wrap=True
        )
    t = res["timing_ms"]
    _console().print(
        f"preprocess {t['preprocess']:.1f} ms, encode {t['encode']:.1f} ms, match {t['match']:.1f} ms"
    )


def _infer_pairs(
    pairs, src, tgt, kps, model, out, viz, truth, device, allow_fallback, confidence, min_conf, force
):
    from simplematch.progress import progress_bar
    from simplematch.runtime.infer import run_infer_pairs

    if src is not None or tgt is not None or kps is not None or viz is not None or truth is not None:
        raise SimpleMatchError(
            "--pairs takes no SRC / TGT / --kps / --viz / --truth",
            "put them in the pairs file (truth column)",
        )
    if out is None:
        raise SimpleMatchError("--pairs needs --out FILE.jsonl", "pass e.g. --out matches.jsonl")
    console = _console()
    with progress_bar(console) as bar:
        task = bar.add_task("pairs", total=None)

        def skipped(f: dict) -> None:
            console.print(f"skipped line {f['line']} ({f['src']} -> {f['tgt']}): {f['error']}")

        summary = run_infer_pairs(
            pairs, out, model=model, device=device, allow_fallback=allow_fallback, confidence=confidence,
            min_confidence=min_conf, on_failure=skipped, force=force,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )  # fmt: skip
    s = summary
    console.print(f"{s['written']} of {s['pairs']} pairs written to {s['out']}, {s['failed']} failed")
    if summary["failed"]:
        raise typer.Exit(code=1)


@app.command()
def convert(
    checkpoint: Annotated[
        Path,
        typer.Argument(
            metavar="CHECKPOINT", help="The authors' best_model.pth (or ours with --to-official)."
        ),
    ],
    family: Annotated[Family, typer.Option(help="Model family of the file.")],
    out: Annotated[
        Path, typer.Option(metavar="PATH", help="Output folder (or .pth file with --to-official).")
    ],
    img_size: Annotated[
        int,
        typer.Option(
            metavar="PX",
            help="Input size the model was trained at (required to import; one of the family's released"
            " sizes unless --any-img-size).",
        ),
    ] = None,
    any_img_size: Annotated[
        bool,
        typer.Option(
            "--any-img-size",
            help="Import at an --img-size no released config of the family uses (recorded in config.json).",
        ),
    ] = False,
    backbone_weights: Annotated[
        Path, typer.Option(metavar="FILE", help="Official backbone file (required for DINOv2).")
    ] = None,
    to_official: Annotated[
        bool, typer.Option("--to-official", help="Write our checkpoint in their layout.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out (file or run).")] = False,
) -> None:
    """Import the authors' released checkpoints (strict key accounting), or write ours in their layout."""
    from simplematch.extras import require

    require("train", "`smatch convert`")
    from simplematch.official import run_convert

    run_convert(checkpoint, family.value, out, img_size=img_size, backbone_weights=backbone_weights,
                to_official=to_official, any_img_size=any_img_size, replace=force,
                console=_console())  # fmt: skip


@app.command()
def demo(
    out: Annotated[Path, typer.Option(metavar="DIR", help="Output folder.")] = Path("runs/demo"),
    willow: Annotated[
        Path,
        typer.Option(
            metavar="DIR",
            help="PF-WILLOW root for the real-data evaluations. [default: none, those steps are skipped]",
        ),
    ] = None,
    max_steps: Annotated[
        int,
        typer.Option(
            metavar="N",
            help=f"Training length in steps. [default: demo_cpu's {PRESETS['demo_cpu']['max_steps']}]",
        ),
    ] = None,
    bench_iters: Annotated[int, typer.Option(min=1, metavar="N", help="Iterations per benchmark cell.")] = 5,
    force: Annotated[bool, typer.Option("--force", help="Replace an earlier demo in --out.")] = False,
) -> None:
    """The whole pipeline on embedded data: train demo_cpu, eval, export, runtime eval, infer, bench, report.

    Writes everything (checkpoint, exports, JSON results, report.md) under --out.
    """
    from simplematch import validate
    from simplematch.extras import require

    require("train", "`smatch demo`")
    from simplematch.demo import run_demo

    # The demo's first steps take minutes: fail before them.
    validate.output_dir(out, "--out", inputs=[willow], force=force, what="demo")
    run_demo(
        out, willow=willow, max_steps=max_steps, bench_iters=bench_iters, force=force, console=_console()
    )


@app.command()
def bench(
    checkpoint: Annotated[
        Path, typer.Option(metavar="DIR", help="Checkpoint folder. [default: a random-init model]")
    ] = None,
    model: Annotated[
        list[Path], typer.Option("--model", metavar="FILE", help="An .onnx / .engine (repeatable).")
    ] = None,
    runtime: Annotated[
        list[str],
        typer.Option(
            metavar="LIST",
            help="Comma-separated or repeated: torch, torch-amp, onnx, onnx-fp16, onnx-int8, trt, trt-fp16,"
            " none. [default: torch,onnx,onnx-fp16,trt; with --model: none]",
        ),
    ] = None,
    batch: Annotated[
        list[str],
        typer.Option(metavar="LIST", help="Batch sizes, comma-separated or repeated. [default: 1,8]"),
    ] = None,
    warmup: Annotated[int, typer.Option(metavar="N", help="Untimed iterations per cell.")] = 2,
    iters: Annotated[int, typer.Option(metavar="N", help="Timed iterations per cell.")] = 10,
    repeats: Annotated[int, typer.Option(metavar="N", help="Fresh worker processes per cell (medians).")] = 1,
    json_out: Annotated[
        Path, typer.Option("--json", metavar="FILE", help="Write the result JSON here (atomically).")
    ] = None,
    train_memory: Annotated[bool, typer.Option("--train-memory", help="Also training-step memory.")] = False,
    preset: Annotated[
        str, typer.Option(metavar="NAME", help="Preset of the random-init model. [default: demo_cpu]")
    ] = None,
    backbone: Annotated[
        str, typer.Option(metavar="NAME", help="Override the preset's timm backbone.")
    ] = None,
    img_size: Annotated[int, typer.Option(metavar="PX", help="Override the preset's input size.")] = None,
    device: Annotated[
        str, typer.Option(metavar="<cpu|cuda>", help="Where torch and onnxruntime run.")
    ] = "cpu",
    threads: Annotated[
        int,
        typer.Option(
            metavar="N", help="CPU threads for torch and onnxruntime alike. [default: the libraries']"
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing --json file.")] = False,
) -> None:
    """Throughput, latency, peak memory and matching share per runtime (each in a fresh process)."""
    from simplematch.bench import parse_batches, print_bench, run_bench, split_values

    console = _console()
    res = run_bench(
        checkpoint=checkpoint, models=model or [], runtimes=split_values(runtime) or None,
        batches=parse_batches(batch), warmup=warmup, iters=iters, repeats=repeats, train_memory=train_memory,
        preset=preset, overrides={"backbone": backbone, "img_size": img_size}, device=device,
        json_path=json_out, threads=threads, force=force, log=lambda msg: console.print(msg),
    )  # fmt: skip
    print_bench(res, console)


app.command("serve")(serve_command)  # in its own module (simplematch/cli/serve.py)


# ------------------------------------------------------------------------------------------------------
def _version_callback(value: bool) -> None:
    if value:
        import simplematch

        typer.echo(f"smatch (simplematch) {simplematch.__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """SimpleMatch semantic correspondence: train, eval, export, infer, bench. --debug shows tracebacks."""


def _one_line_usage_error(err: TyperException) -> str:
    # Usage errors (unknown option, invalid choice, missing argument) get the same one-line form.
    ctx = getattr(err, "ctx", None)
    hint = f". Fix: see `{ctx.command_path} --help`" if ctx is not None else ""
    message = " ".join(err.format_message().split()).replace("Value error, ", "").rstrip(".")
    return f"error: {message}{hint}"


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the app, turning user errors into one line and exit code 2.

    The machine pushing back is one line too: a signal (130 / 143, after the command cleaned up), a full
    disk or a read-only folder, memory running out; a closed stdout ends the command quietly.
    """
    from simplematch import outputs, quiet, signals
    from simplematch.extras import missing_module_error

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    quiet.configure(debug)
    signals.install()
    try:
        rc = _run(args)
        outputs.flush_stdout()
        return rc
    except SimpleMatchError as err:
        if debug:
            raise
        return _fail(str(err), err.exit_code)
    except ModuleNotFoundError as err:
        # An optional extra that this install lacks (e.g. torch in a runtime-only install): name it.
        user_error = missing_module_error(err)
        if debug or user_error is None:
            raise
        return _fail(str(user_error), user_error.exit_code)
    except typer.Exit as err:
        return int(getattr(err, "exit_code", 0) or 0)
    except (typer.Abort, KeyboardInterrupt) as err:
        signum = signals.signum_of(err)
        _fail(signals.message(signum), 0)
        return signals.exit_code(signum)
    except TyperException as err:  # typer's (vendored click's) usage errors all derive from it
        if debug:
            raise
        if type(err).__name__ == "NoArgsIsHelpError":  # bare `smatch`: the help text is the answer
            err.show()
            return 2
        return _fail(_one_line_usage_error(err), 2)
    except BrokenPipeError:
        outputs.stdout_closed()  # the reader left (`| head`): quiet, as a pipeline's other tools are
        return 141  # 128 + SIGPIPE, what a shell reports for them
    except OSError as err:
        one = outputs.write_error(err, "to standard output" if _is_stdout(err) else None)
        if debug or one is None:
            raise
        if _is_stdout(err):
            outputs.stdout_closed()  # nothing more can be written there
        return _fail(f"error: {one}", one.exit_code)
    except MemoryError:
        if debug:
            raise
        return _fail("error: out of memory. Fix: lower --img-size or --batch-size, or free memory", 2)


def _run(args: list[str]) -> int:
    """The command, without typer's own handling of Ctrl-C and closed pipes (main() does both)."""
    command = typer.main.get_command(app)
    with command.make_context("smatch", args) as ctx:
        rc = command.invoke(ctx)
    return rc if isinstance(rc, int) else 0


def _is_stdout(err: OSError) -> bool:
    """The write that failed was to standard output (``> /dev/full``, a full disk behind ``> file``)."""
    if err.filename is not None:
        return False
    try:
        os.write(sys.stdout.fileno(), b"")  # a device that refuses every write (/dev/full) says so here
    except (OSError, ValueError):
        return True
    # Otherwise: was stdout the file being written, in the frames of the failed print (click's echo holds
    # it as ``file``, rich's Console as ``self.file``)?
    streams = {id(sys.stdout), id(sys.__stdout__)}
    tb = err.__traceback__
    while tb is not None:
        local = tb.tb_frame.f_locals
        owner = local.get("self")
        if id(local.get("file")) in streams or (
            type(owner).__name__ == "Console" and id(getattr(owner, "file", None)) in streams
        ):
            return True
        tb = tb.tb_next
    return False


def _fail(message: str, code: int) -> int:
    """One line on stderr (prefixed ``error: `` unless it already is) and the exit code."""
    line = message if message.startswith(("error: ", "interrupted")) else f"error: {message}"
    with contextlib.suppress(OSError):
        print(line, file=sys.stderr, flush=True)
    return code
