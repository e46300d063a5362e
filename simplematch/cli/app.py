"""The ``smatch`` command line. Commands are thin wrappers over library functions; heavy imports (torch,
onnx, onnxruntime) happen inside each command so ``smatch --help`` is instant.

User errors (:class:`SimpleMatchError`) print one line and exit 2; ``--debug`` (anywhere on the line)
shows the traceback instead.
"""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from simplematch.errors import SimpleMatchError

app = typer.Typer(
    name="smatch",
    help="SimpleMatch semantic correspondence: train, eval, export, infer, bench. --debug shows tracebacks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


class Dataset(str, Enum):
    spair = "spair"
    pfpascal = "pfpascal"
    pfwillow = "pfwillow"
    ap10k = "ap10k"
    synthetic = "synthetic"


class Frame(str, Enum):
    resized = "resized"
    original = "original"


class Ap10kSplit(str, Enum):
    intra = "intra"
    cross_species = "cross-species"
    cross_family = "cross-family"


def _console():  # noqa: ANN202 - rich is imported lazily
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


def _write_json(path: Path | None, data: dict) -> None:
    if path is not None:
        from simplematch.io import atomic_write_text

        atomic_write_text(Path(path), json.dumps(data, indent=2) + "\n")


# ------------------------------------------------------------------------------------------------------
@app.command()
def train(
    out: Annotated[Path, typer.Option("--out", help="Output folder (checkpoint, config, metrics).")] = None,
    preset: Annotated[str, typer.Option(help="Preset name (see `smatch presets`).")] = None,
    dataset: Annotated[Dataset, typer.Option()] = None,
    data_root: Annotated[Path, typer.Option(help="Benchmark root in its official layout.")] = None,
    backbone: Annotated[str, typer.Option(help="timm model name.")] = None,
    weights: Annotated[Path, typer.Option(help="Local pretrained backbone file (never downloaded).")] = None,
    img_size: Annotated[int, typer.Option()] = None,
    window: Annotated[int, typer.Option(help="Window size k of the fine head (0 = whole map).")] = None,
    batch_size: Annotated[int, typer.Option()] = None,
    epochs: Annotated[int, typer.Option()] = None,
    max_steps: Annotated[int, typer.Option(help="Stop after N optimisation steps.")] = None,
    lr: Annotated[float, typer.Option()] = None,
    seed: Annotated[int, typer.Option()] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = None,
    ap10k_split: Annotated[Ap10kSplit, typer.Option()] = None,
    resume: Annotated[
        Path,
        typer.Option(help="Continue the run in this folder with its saved config (--max-steps = new total)."),
    ] = None,
    config: Annotated[
        Path,
        typer.Option(
            "--config", help="Start from this config.json (e.g. a previous run's); flags override it."
        ),
    ] = None,
) -> None:
    """Train SimpleMatch (PyTorch). Writes model.safetensors, config.json, metrics.jsonl, best.json.

    Ctrl-C (SIGINT/SIGTERM) saves a resumable checkpoint and exits with code 130. Under
    `torchrun --nproc_per_node N -m simplematch.cli train ...` it trains with DDP (gloo on CPU, nccl on CUDA).
    """
    import dataclasses

    from simplematch.config import Config, resolve_config

    if resume is not None:
        # The saved config *is* the run: other settings would silently change it half-way.
        given = {
            "--out": out, "--preset": preset, "--dataset": dataset, "--data-root": data_root,
            "--backbone": backbone, "--weights": weights, "--img-size": img_size, "--window": window,
            "--batch-size": batch_size, "--epochs": epochs, "--lr": lr, "--seed": seed,
            "--ap10k-split": ap10k_split, "--config": config,
        }  # fmt: skip
        clash = [flag for flag, value in given.items() if value is not None]
        if clash:
            raise SimpleMatchError(
                f"--resume continues a run with its saved config; {', '.join(clash)} cannot be changed",
                "drop those options (only --max-steps and --device may be given with --resume)",
            )
        if not Path(resume).is_dir():
            raise SimpleMatchError(
                f"run folder not found: {resume}", "pass the --out folder of an earlier `smatch train`"
            )
        cfg = Config.load(Path(resume) / "config.json")
        changes = {"max_steps": max_steps, "device": device}
        cfg = dataclasses.replace(cfg, **{k: v for k, v in changes.items() if v is not None})
        cfg.validate()
        out = Path(resume)
    else:
        if out is None:
            raise SimpleMatchError("no output folder given", "pass --out DIR (or --resume DIR)")
        overrides = dict(
            dataset=dataset.value if dataset else None,
            data_root=str(data_root) if data_root else None,
            backbone=backbone,
            weights=str(weights) if weights else None,
            img_size=img_size,
            batch_size=batch_size,
            epochs=epochs,
            max_steps=max_steps,
            lr=lr,
            seed=seed,
            device=device,
            ap10k_split=ap10k_split.value if ap10k_split else None,
        )
        if config is not None:
            if preset is not None:
                raise SimpleMatchError("--config and --preset both given", "pass one of them")
            base = Config.load(config)
            given = {k: v for k, v in overrides.items() if v is not None}
            cfg = Config.from_dict({**base.to_dict(), **given}, source=str(config))
        else:
            cfg = resolve_config(preset, overrides)
        if window is not None:
            cfg.windows = [*cfg.windows[:-1], window]
            cfg.validate()
    from simplematch.io import check_writable_dir
    from simplematch.train import train as run_train

    check_writable_dir(out)
    main_rank = _is_main_process()
    console = _console()
    if main_rank:
        console.print(f"training {cfg.backbone} @ {cfg.img_size} on {cfg.dataset} -> {out}", soft_wrap=True)
    try:
        res = run_train(cfg, out, resume=resume is not None, console=console)
    finally:
        _cleanup_distributed()
    if res.status == "interrupted":
        if main_rank:
            console.print(
                f"interrupted at step {res.step}; resume with: smatch train --resume {out}", soft_wrap=True
            )
        raise typer.Exit(130)
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
        Path, typer.Argument(help="Checkpoint folder (PyTorch) or MODEL.onnx / MODEL.engine (runtime).")
    ],
    dataset: Annotated[Dataset, typer.Option()] = Dataset.pfwillow,
    data_root: Annotated[Path, typer.Option(help="Benchmark root (not needed for synthetic).")] = None,
    split: Annotated[str, typer.Option()] = "test",
    alpha: Annotated[list[float], typer.Option(help="PCK thresholds (repeat the option).")] = None,
    frame: Annotated[
        Frame, typer.Option(help="Compare in the resized model frame or original pixels.")
    ] = Frame.resized,
    batch_size: Annotated[int, typer.Option()] = 8,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    window: Annotated[int, typer.Option(help="Override the fine window size (paper Table 7).")] = None,
    ap10k_split: Annotated[Ap10kSplit, typer.Option()] = Ap10kSplit.intra,
    limit: Annotated[
        int, typer.Option(help="Evaluate N pairs sampled across categories (seeded by --seed).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic split and of the --limit sample.")] = 0,
    json_out: Annotated[Path, typer.Option("--json", help="Write the result JSON here.")] = None,
    confidence: Annotated[
        str,
        typer.Option(
            help="Confidence cue: peak_cos | peak_mass | ratio | cycle | mass_cycle | ratio_cycle |"
            " mass_ratio_cycle (docs/confidence.md)."
        ),
    ] = "mass_ratio_cycle",  # = simplematch.runtime.matching.DEFAULT_CONFIDENCE (a test pins it)
    min_confidence: Annotated[
        float, typer.Option(help="Also report precision and the fraction kept at this confidence.")
    ] = None,
    predictions: Annotated[Path, typer.Option(help="Write one JSON line per pair here (.jsonl).")] = None,
    plots: Annotated[
        Path, typer.Option(help="Write PCK-alpha, per-category, precision-coverage, worst-pairs PNGs here.")
    ] = None,
) -> None:
    """PCK on SPair-71k, PF-PASCAL, PF-WILLOW, AP-10K or synthetic pairs, with PyTorch or the runtime."""
    from simplematch.cli.evaluation import print_result, run_eval
    from simplematch.data import load_records

    alphas = tuple(alpha) if alpha else (0.05, 0.1, 0.15)
    if json_out is not None:
        from simplematch.io import check_output_file

        check_output_file(json_out, "--json")  # before the (slow) evaluation, not after it
    records = load_records(
        dataset.value, str(data_root) if data_root else None, split, ap10k_split=ap10k_split.value, seed=seed
    )  # noqa: E501
    try:
        res = run_eval(
            model, records, limit=limit, seed=seed, predictions_out=predictions, dataset=dataset.value,
            split=split, alphas=alphas, frame=frame.value, batch_size=batch_size, device=device,
            window=window, confidence=confidence, min_confidence=min_confidence, plots_out=plots,
        )  # fmt: skip
    finally:
        _cleanup_distributed()
    if _is_main_process():  # under torchrun every rank holds the gathered totals; one prints and writes
        print_result(res, _console())
        _write_json(json_out, res)


# ------------------------------------------------------------------------------------------------------
@app.command()
def stats(
    dataset: Annotated[Dataset, typer.Option()],
    data_root: Annotated[Path, typer.Option()] = None,
    split: Annotated[str, typer.Option()] = "trn",
    img_size: Annotated[int, typer.Option()] = 256,
) -> None:
    """Paper Table 1: keypoints that share a feature cell with another keypoint at 16/32/64 maps."""
    from rich.table import Table

    from simplematch.data import load_records
    from simplematch.data.stats import keypoint_fusion_stats

    records = load_records(dataset.value, str(data_root) if data_root else None, split)
    res = keypoint_fusion_stats(records, img_size=img_size)
    table = Table(title=f"keypoint fusion, {dataset.value} {split}, input {img_size}")
    sizes = [k for k in res if k != "total"]
    for k in sizes:
        table.add_column(f"{k}x{k}", justify="right")
    table.add_column("total", justify="right")
    table.add_row(*[str(res[k]) for k in sizes], str(res["total"]))
    _console().print(table)


@app.command()
def presets() -> None:
    """List the configuration presets (paper hyperparameters)."""
    from simplematch.config import PRESETS

    for name, values in PRESETS.items():
        typer.echo(f"{name}: " + ", ".join(f"{k}={v}" for k, v in values.items()))


# ------------------------------------------------------------------------------------------------------
class ExportFormat(str, Enum):
    onnx = "onnx"
    trt = "trt"


@app.command()
def export(
    checkpoint: Annotated[
        Path, typer.Argument(help="Checkpoint folder made by `smatch train` / `smatch convert`.")
    ],
    fmt: Annotated[
        ExportFormat, typer.Option("--format", help="onnx, or trt (TensorRT: NOT exercised by CI).")
    ] = ExportFormat.onnx,  # noqa: E501
    out: Annotated[Path, typer.Option(help="Output file (default: next to the checkpoint).")] = None,
    fp16: Annotated[bool, typer.Option("--fp16", help="float16 weights/activations, float32 I/O.")] = False,
    batch: Annotated[str, typer.Option(help="Static batch size N, or 'dynamic'.")] = "dynamic",
    opset: Annotated[int, typer.Option(help="ONNX opset (>= 17).")] = 18,
    check: Annotated[bool, typer.Option("--check/--no-check", help="Parity check against PyTorch.")] = True,
    check_data: Annotated[
        Path, typer.Option(help="Folder of real images for the check (e.g. PF-WILLOW).")
    ] = None,
) -> None:
    """Export to ONNX or a TensorRT engine, with metadata and a built-in parity check.

    The TensorRT path is written against the TensorRT 10/11 Python API but is NOT exercised by this
    repository's CI (TensorRT cannot be installed there); it needs an NVIDIA GPU and `simplematch[trt]`.
    """
    from simplematch.export import export_checkpoint

    if batch != "dynamic" and not batch.isdigit():
        raise SimpleMatchError(f"--batch {batch!r} is invalid", "pass a positive integer or 'dynamic'")
    if not Path(checkpoint).is_dir():
        raise SimpleMatchError(
            f"checkpoint folder not found: {checkpoint}", "pass a folder made by `smatch train`"
        )
    res = export_checkpoint(
        checkpoint, fmt=fmt.value, out=out, fp16=fp16, batch=None if batch == "dynamic" else int(batch),
        opset=opset, check=check, check_data=check_data,
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
    src: Annotated[Path, typer.Argument(help="Source image (omit with --pairs).")] = None,
    tgt: Annotated[Path, typer.Argument(help="Target image (omit with --pairs).")] = None,
    kps: Annotated[
        Path,
        typer.Option(
            help='JSON: [[x, y], ...] or {"keypoints": [[x, y], ...]} in source pixels, or an infer --out'
            " JSON (its targets become the sources)."
        ),
    ] = None,
    model: Annotated[
        Path, typer.Option(help="Exported .onnx or .engine (default: runs/demo/model.onnx).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Write the result JSON here (.jsonl with --pairs).")] = None,
    viz: Annotated[Path, typer.Option(help="Write a side-by-side match picture (PNG) here.")] = None,
    device: Annotated[str, typer.Option(help="cpu | cuda (cuda needs onnxruntime-gpu or TensorRT).")] = "cpu",
    allow_fallback: Annotated[bool, typer.Option(help="Run on CPU when CUDA is unavailable.")] = False,
    pairs: Annotated[
        Path, typer.Option(help="CSV (src,tgt,kps) or JSONL of many pairs; needs --out FILE.jsonl.")
    ] = None,
    confidence: Annotated[
        str,
        typer.Option(
            help="Confidence cue: peak_cos | peak_mass | ratio | cycle | mass_cycle | ratio_cycle |"
            " mass_ratio_cycle (docs/confidence.md)."
        ),
    ] = "mass_ratio_cycle",  # = simplematch.runtime.matching.DEFAULT_CONFIDENCE (a test pins it)
    min_confidence: Annotated[
        float, typer.Option(help="Reject matches below this confidence (target null, rejected true).")
    ] = None,
    truth: Annotated[
        Path, typer.Option(help="True target keypoints (same format as --kps): per-point errors.")
    ] = None,
) -> None:
    """Match keypoints from SRC into TGT with the torch-free runtime (numpy + onnxruntime / TensorRT)."""
    if pairs is not None:
        return _infer_pairs(pairs, src, tgt, kps, model, out, viz, truth, device, allow_fallback, confidence,
                            min_confidence)  # fmt: skip
    from rich.table import Table

    from simplematch.runtime.infer import run_infer

    if src is None or tgt is None or kps is None:
        raise SimpleMatchError("infer needs SRC, TGT and --kps", "or pass --pairs FILE for many pairs")
    res = run_infer(
        src, tgt, kps, model=model, out=out, viz=viz, device=device, allow_fallback=allow_fallback,
        confidence=confidence, min_confidence=min_confidence, truth=truth,
    )  # fmt: skip
    table = Table(title=f"{src} -> {tgt} ({res['provider']}), confidence {res['confidence']}")
    cols = ["#", "source x", "source y", "target x", "target y", "score", "confidence"]
    cols += ["error px", "error / thr"] if truth is not None else []
    for col in cols:
        table.add_column(col, justify="right")
    for i, k in enumerate(res["keypoints"]):
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
    t = res["timing_ms"]
    _console().print(
        f"preprocess {t['preprocess']:.1f} ms, encode {t['encode']:.1f} ms, match {t['match']:.1f} ms"
    )


def _infer_pairs(pairs, src, tgt, kps, model, out, viz, truth, device, allow_fallback, confidence, min_conf):  # noqa: ANN001, ANN202, E501
    from rich.progress import Progress

    from simplematch.runtime.infer import run_infer_pairs

    if src is not None or tgt is not None or kps is not None or viz is not None or truth is not None:
        raise SimpleMatchError(
            "--pairs takes no SRC / TGT / --kps / --viz / --truth",
            "put them in the pairs file (truth column)",
        )
    if out is None:
        raise SimpleMatchError("--pairs needs --out FILE.jsonl", "pass e.g. --out matches.jsonl")
    console = _console()
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("pairs", total=None)

        def skipped(f: dict) -> None:
            console.print(f"skipped line {f['line']} ({f['src']} -> {f['tgt']}): {f['error']}")

        summary = run_infer_pairs(
            pairs, out, model=model, device=device, allow_fallback=allow_fallback, confidence=confidence,
            min_confidence=min_conf, on_failure=skipped,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )  # fmt: skip
    s = summary
    console.print(f"{s['written']} of {s['pairs']} pairs written to {s['out']}, {s['failed']} failed")
    if summary["failed"]:
        raise typer.Exit(code=1)


class Family(str, Enum):
    dinov2_b14 = "dinov2_b14"
    ibot_b16 = "ibot_b16"
    resnet101 = "resnet101"


@app.command()
def convert(
    checkpoint: Annotated[
        Path, typer.Argument(help="The authors' best_model.pth (or ours with --to-official).")
    ],
    family: Annotated[Family, typer.Option(help="Model family of the file.")],
    out: Annotated[Path, typer.Option(help="Output folder (or .pth file with --to-official).")],
    img_size: Annotated[int, typer.Option(help="Input size the model was trained at.")] = None,
    backbone_weights: Annotated[
        Path, typer.Option(help="Official backbone file (required for DINOv2).")
    ] = None,
    to_official: Annotated[
        bool, typer.Option("--to-official", help="Write our checkpoint in their layout.")
    ] = False,
) -> None:
    """Import the authors' released checkpoints (strict key accounting), or write ours in their layout."""
    from simplematch.cli.convert import run_convert
    from simplematch.io import check_output_file, check_writable_dir

    # Checked before the conversion (which loads every tensor), so a bad --out fails at once.
    check_output_file(out, "--out") if to_official else check_writable_dir(out, "--out")
    run_convert(checkpoint, family.value, out, img_size=img_size, backbone_weights=backbone_weights,
                to_official=to_official, console=_console())  # fmt: skip


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("runs/demo"),
    willow: Annotated[
        Path, typer.Option(help="PF-WILLOW root (default ../shared/data/pf-willow if present).")
    ] = None,
    max_steps: Annotated[int, typer.Option(help="Override the demo_cpu training length.")] = None,
    bench_iters: Annotated[int, typer.Option(help="Iterations per benchmark cell.")] = 5,
) -> None:
    """The whole pipeline on embedded data: train demo_cpu, eval, export, runtime eval, infer, bench, report.

    Writes everything (checkpoint, exports, JSON results, report.md) under --out.
    """
    from simplematch.demo import run_demo
    from simplematch.io import check_writable_dir

    check_writable_dir(out, "--out")  # the demo's first steps take minutes: fail before them
    run_demo(out, willow=willow, max_steps=max_steps, bench_iters=bench_iters, console=_console())


@app.command()
def bench(
    checkpoint: Annotated[Path, typer.Option(help="Checkpoint (default: random init).")] = None,
    model: Annotated[list[Path], typer.Option("--model", help="An .onnx / .engine (repeatable).")] = None,
    runtime: Annotated[list[str], typer.Option(help="torch,onnx,onnx-fp16,trt,trt-fp16,none")] = None,
    batch: Annotated[list[str], typer.Option(help="Batch sizes (1,8 or repeat; default 1,8).")] = None,
    warmup: Annotated[int, typer.Option(help="Untimed iterations per cell.")] = 2,
    iters: Annotated[int, typer.Option(help="Timed iterations per cell.")] = 10,
    repeats: Annotated[int, typer.Option(help="Fresh worker processes per cell (medians).")] = 1,
    json_out: Annotated[Path, typer.Option("--json", help="Write the result JSON here (atomically).")] = None,
    train_memory: Annotated[bool, typer.Option("--train-memory", help="Also training-step memory.")] = False,
    preset: Annotated[str, typer.Option(help="Preset of the random-init model.")] = "demo_cpu",
    backbone: Annotated[str, typer.Option(help="Override the preset's timm backbone.")] = None,
    img_size: Annotated[int, typer.Option(help="Override the preset's input size.")] = None,
    device: Annotated[str, typer.Option(help="cpu | cuda")] = "cpu",
    threads: Annotated[int, typer.Option(help="CPU threads for torch and onnxruntime alike.")] = None,
) -> None:
    """Throughput, latency, peak memory and matching share per runtime (each in a fresh process)."""
    from simplematch.bench import parse_batches, print_bench, run_bench, split_values

    console = _console()
    res = run_bench(
        checkpoint=checkpoint, models=model or [], runtimes=split_values(runtime) or None,
        batches=parse_batches(batch), warmup=warmup, iters=iters, repeats=repeats, train_memory=train_memory,
        preset=preset, overrides={"backbone": backbone, "img_size": img_size}, device=device,
        json_path=json_out, threads=threads, log=lambda msg: console.print(msg),
    )  # fmt: skip
    print_bench(res, console)


# ------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the app, turning user errors into one line and exit code 2."""
    import click

    # typer >= 0.20 vendors its own click: catch both families, or usage errors escape as tracebacks.
    usage_errors: tuple[type[BaseException], ...] = (click.ClickException,)
    exits: tuple[type[BaseException], ...] = (click.exceptions.Exit, typer.Exit)
    aborts: tuple[type[BaseException], ...] = (click.exceptions.Abort, typer.Abort, KeyboardInterrupt)
    try:
        from typer._click import exceptions as vendored
    except ImportError:
        pass
    else:
        usage_errors += (vendored.ClickException,)

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    try:
        rc = app(args=args, prog_name="smatch", standalone_mode=False)
        return rc if isinstance(rc, int) else 0
    except SimpleMatchError as err:
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except exits as err:
        return int(getattr(err, "exit_code", 0) or 0)
    except aborts:
        print("interrupted", file=sys.stderr)
        return 130
    except usage_errors as err:
        if debug:
            raise
        if type(err).__name__ == "NoArgsIsHelpError":  # bare `smatch`: the help text is the answer
            err.show()
            return 2
        # Usage errors (unknown option, invalid choice, missing argument) get the same one-line form.
        ctx = getattr(err, "ctx", None)
        hint = f". Fix: see `{ctx.command_path} --help`" if ctx is not None else ""
        message = " ".join(err.format_message().split()).replace("Value error, ", "").rstrip(".")
        print(f"error: {message}{hint}", file=sys.stderr)
        return 2
