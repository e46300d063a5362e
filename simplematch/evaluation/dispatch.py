"""``smatch eval`` as a library call (torch-free at import): which evaluator, the checks, the files.

A checkpoint folder goes through PyTorch (:mod:`~simplematch.evaluation.torch_predictor`), an .onnx / .engine
file through the torch-free runtime (:mod:`~simplematch.evaluation.runtime_predictor`). Both produce per-pair
predictions that :mod:`simplematch.metrics` turns into the same JSON (the runtime adds ``runtime`` and
``provider``) and the same ``--predictions`` JSONL lines. :func:`run_evaluation` is the whole command after
flag parsing, so the CLI and the demo run the same code; :func:`print_result` is its table on the console.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simplematch.confidence import DEFAULT_CONFIDENCE
from simplematch.errors import SimpleMatchError


@dataclass(frozen=True)
class EvalRequest:
    """What ``smatch eval`` evaluates and how: one field per flag (outputs apart, :class:`EvalOutputs`).

    ``alphas`` None: :data:`simplematch.metrics.DEFAULT_ALPHAS`; ``threshold`` None: the dataset's own.
    """

    dataset: str = "pfwillow"
    data_root: Path | None = None
    split: str = "test"
    alphas: Sequence[float] | None = None
    frame: str = "resized"
    batch_size: int = 8
    device: str = "auto"
    window: int | None = None
    ap10k_split: str = "intra"
    limit: int | None = None
    seed: int = 0
    threshold: str | None = None
    released_compat: bool = False
    confidence: str = DEFAULT_CONFIDENCE
    min_confidence: float | None = None
    # --dataset coco: the COCO flags given (config key -> value; simplematch.data.coco_pairs). The rest
    # comes from the model's own training config, so a run is scored on the images it held out.
    coco: dict[str, Any] | None = None


@dataclass(frozen=True)
class EvalOutputs:
    """The files ``smatch eval`` writes: ``--json``, ``--predictions`` (.jsonl), ``--plots`` (a folder)."""

    json: Path | None = None
    predictions: Path | None = None
    plots: Path | None = None
    force: bool = False


def run_evaluation(
    model: Path,
    request: EvalRequest,
    outputs: EvalOutputs = EvalOutputs(),
    *,
    main_process: bool = True,
    show: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """``smatch eval MODEL``: check the outputs, load the pairs, evaluate, write the files.

    Returns the result JSON with ``options``. Under torchrun every rank holds the gathered totals; only
    ``main_process`` calls ``show`` (the console table) and writes ``--json``.
    """
    from simplematch import validate
    from simplematch.data.load import load_records_with_info
    from simplematch.files import write_json
    from simplematch.metrics import DEFAULT_ALPHAS
    from simplematch.outputs import transaction as all_or_nothing
    from simplematch.provenance import stamped

    alphas = validate.alphas(request.alphas, DEFAULT_ALPHAS)
    if Path(model).is_dir():
        from simplematch.extras import require

        # Before reading the benchmark's annotations: an install without PyTorch learns that at once.
        require("train", "evaluating a checkpoint folder (PyTorch)")
    data_root, coco, recorded = request.data_root, None, None
    if request.dataset == "coco" or any(v is not None for v in (request.coco or {}).values()):
        from simplematch.evaluation.coco import check_held_out, coco_request

        data_root, coco, recorded = coco_request(model, request.dataset, data_root, request.coco or {})
    inputs = [model, data_root, *((coco.pairs, coco.images) if coco else ())]
    # Before the (slow) evaluation, not after it.
    validate.output_file(outputs.json, "--json", suffixes=(".json",), inputs=inputs, force=outputs.force)
    records, data = load_records_with_info(
        request.dataset, str(data_root) if data_root else None, request.split,
        ap10k_split=request.ap10k_split, seed=request.seed, released=request.released_compat, coco=coco,
    )  # fmt: skip
    if coco is not None:
        check_held_out(model, recorded, data)
    # Every file of the command or none: a failure (full disk, signal) at the last one removes the others.
    with all_or_nothing():
        res = _evaluate_with_outputs(model, records, request, alphas, outputs)
        res["options"] = _options(request, alphas, res["threshold"])
        if data:
            res["data"] = {k: v for k, v in data.items() if k != "image_ids"} | {
                "images": len(data["image_ids"])
            }
        if main_process:
            write_json(outputs.json, stamped(res, "eval"))
    if main_process and show is not None:
        show(res)
    return res


def _options(request: EvalRequest, alphas: Sequence[float], threshold: str) -> dict[str, Any]:
    """Every option that changes the number, so two result files can be compared."""
    return {
        "dataset": request.dataset, "split": request.split, "alphas": list(alphas), "frame": request.frame,
        "window": request.window, "limit": request.limit, "seed": request.seed, "threshold": threshold,
        "released_compat": request.released_compat, "confidence": request.confidence,
        "min_confidence": request.min_confidence,
        "ap10k_split": request.ap10k_split if request.dataset == "ap10k" else None,
    }  # fmt: skip


def _evaluate_with_outputs(
    model: Path, records: list, request: EvalRequest, alphas: Sequence[float], outputs: EvalOutputs
) -> dict[str, Any]:
    """Optional seeded ``--limit`` sample, :func:`evaluate_any`, then ``--predictions`` and ``--plots``.

    Output paths (and matplotlib for ``--plots``) are checked before the evaluation; the files are written
    atomically after it (a failed run leaves none).
    """
    from simplematch import validate

    validate.output_file(
        outputs.predictions, "--predictions", suffixes=(".jsonl",), inputs=[model], force=outputs.force
    )
    if outputs.plots is not None:
        from simplematch.plots import check_plots

        check_plots(outputs.plots, force=outputs.force)
    sample = None
    if request.limit:
        records, sample = sample_pairs(records, request.limit, request.seed)
    preds: list = []
    res = evaluate_any(
        model, records, dataset=request.dataset, split=request.split, alphas=alphas, frame=request.frame,
        batch_size=request.batch_size, device=request.device, window=request.window,
        threshold=request.threshold, released_compat=request.released_compat,
        confidence=request.confidence, min_confidence=request.min_confidence, sample=sample,
        predictions=preds,
    )  # fmt: skip
    if outputs.predictions is not None:
        _write_predictions(outputs.predictions, res, preds, alphas, request.min_confidence)
    if outputs.plots is not None:
        from simplematch.plots import write_plots

        res["plots"] = [
            str(p)
            for p in write_plots(
                res, preds, records, outputs.plots, img_size=int(res["config"]["img_size"]),
                confidence=res["confidence"]["default"],
            )
        ]  # fmt: skip
    return res


def _write_predictions(
    path: Path, res: dict[str, Any], preds: list, alphas: Sequence[float], min_confidence: float | None
) -> None:
    """``--predictions``: one line per pair, :func:`simplematch.metrics.prediction_record` + the frame."""
    from simplematch.files import atomic_write_text
    from simplematch.metrics import prediction_record

    conf = res["confidence"]
    lines = [
        json.dumps(
            {
                **prediction_record(
                    p, list(alphas), confidence=conf["default"], min_confidence=min_confidence
                ),
                "threshold_kind": res["threshold"],
                "frame": res["frame"],
                "dataset": res["dataset"],
            }
        )
        for p in preds
    ]
    atomic_write_text(Path(path), "".join(line + "\n" for line in lines))


def sample_pairs(records: list, limit: int, seed: int = 0) -> tuple[list, dict[str, Any]]:
    """``limit`` pairs spread over the categories (seeded): each category's pairs in a seeded random order,
    then the categories taken in turn (sorted names), so every category gets ``limit // categories`` pairs
    (one more for the first few) while it has them. Returns the chosen records in dataset order and the
    JSON description of the sample (``limit``, ``seed``, ``of``, ``indices``, ``per_category``)."""
    if limit < 1:
        raise SimpleMatchError(f"--limit {limit} must be >= 1", "pass a positive number of pairs")
    rng = np.random.default_rng(seed)
    by_cat: dict[str, list[int]] = {}
    for i, rec in enumerate(records):
        by_cat.setdefault(str(rec.category), []).append(i)
    queues = {c: list(rng.permutation(idx)) for c, idx in sorted(by_cat.items())}
    chosen: list[int] = []
    while len(chosen) < min(limit, len(records)):
        for queue in queues.values():
            if queue and len(chosen) < limit:
                chosen.append(int(queue.pop(0)))
    chosen.sort()
    per_cat: dict[str, int] = {}
    for i in chosen:
        per_cat[str(records[i].category)] = per_cat.get(str(records[i].category), 0) + 1
    info = {"limit": limit, "seed": seed, "of": len(records), "indices": chosen, "per_category": per_cat}
    return [records[i] for i in chosen], info


def evaluate_any(
    model: Path,
    records: list,
    *,
    dataset: str,
    split: str,
    alphas: Sequence[float],
    frame: str,
    batch_size: int,
    device: str,
    window: int | None = None,
    threshold: str | None = None,
    released_compat: bool = False,
    confidence: str = DEFAULT_CONFIDENCE,
    min_confidence: float | None = None,
    sample: dict[str, Any] | None = None,
    predictions: list | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint folder (PyTorch) or an .onnx / .engine file (runtime): the evaluation JSON."""
    from simplematch.runtime.matcher import check_confidence

    check_confidence(confidence, min_confidence)
    extra = dict(
        threshold=threshold, released_compat=released_compat, confidence=confidence,
        min_confidence=min_confidence, sample=sample, predictions=predictions,
    )  # fmt: skip
    model = Path(model)
    if not model.exists():
        raise SimpleMatchError(
            f"model not found: {model}", "pass a checkpoint folder or an exported .onnx/.engine file"
        )
    if not records:
        raise SimpleMatchError(
            f"no {dataset} pairs found for split '{split}'", "check --data-root and --split"
        )
    if model.is_dir():
        return _evaluate_torch(
            model, records, dataset, split, alphas, frame, batch_size, device, window, extra
        )
    if model.suffix in (".onnx", ".engine"):
        from simplematch.evaluation.runtime_predictor import evaluate_runtime

        rt_device = "cpu" if device == "auto" else device
        return evaluate_runtime(
            model, records, dataset=dataset, split=split, alphas=alphas, frame=frame,
            batch_size=batch_size, device=rt_device, window=window, **extra,
        )  # fmt: skip
    raise SimpleMatchError(f"cannot evaluate {model}", "pass a checkpoint folder, a .onnx or a .engine file")


def _evaluate_torch(model_dir, records, dataset, split, alphas, frame, batch_size, device, window, extra):
    from simplematch.extras import require

    require("train", "evaluating a checkpoint folder (PyTorch)")
    from simplematch import distributed as dist_utils
    from simplematch.checkpoint import load_checkpoint
    from simplematch.evaluation.torch_predictor import checkpoint_info, evaluate_model
    from simplematch.progress import progress_bar
    from simplematch.train import select_device

    # Under torchrun each rank evaluates pairs[rank::world]; the per-pair counts are gathered exactly.
    with dist_utils.joined(select_device(device)) as dev, progress_bar(enabled=dist_utils.is_main()) as bar:
        net, cfg = load_checkpoint(model_dir, device=dev, batch=batch_size)
        task = bar.add_task("eval", total=len(records))
        return evaluate_model(
            net, cfg, records, dataset=dataset, split=split, alphas=alphas, frame=frame,
            batch_size=batch_size, device=dev, window=window, model_info=checkpoint_info(model_dir),
            progress=lambda n: bar.update(task, advance=n), **extra,
        )  # fmt: skip


def print_result(res: dict[str, Any], console: Any) -> None:
    """The evaluation JSON as a rich table (per category, per-image mean, per point) + the confidence."""
    from rich.table import Table

    title = f"{res['dataset']} {res['split']}: {res['pairs']} pairs, {res['points']} points, threshold {res['threshold']}, frame {res['frame']}"  # noqa: E501
    if "provider" in res:
        title += f", {res['runtime']} ({res['provider']})"
    table = Table(title=title)
    table.add_column("category")
    table.add_column("pairs", justify="right")
    for a in res["pck"]:
        table.add_column(f"PCK@{a}", justify="right")
    for cat, row in sorted(res["per_category"].items()):
        table.add_row(cat, str(row["pairs"]), *[f"{row['pck'][a]:.2f}" for a in res["pck"]])
    table.add_row(
        "all (per-image mean)", str(res["pairs"]), *[f"{v:.2f}" for v in res["pck"].values()], style="bold"
    )
    table.add_row("all (per point)", str(res["points"]), *[f"{v:.2f}" for v in res["pck_per_point"].values()])
    console.print(table)
    if res.get("dataset") == "coco":
        from simplematch.evaluation.coco import print_coco

        print_coco(res, console)
    _print_confidence(res.get("confidence"), console)


def _print_confidence(conf: dict[str, Any] | None, console: Any) -> None:
    if not conf:
        return
    aurocs = ", ".join(f"{k} {v:.3f}" for k, v in conf["auroc"].items() if v is not None)
    console.print(f"confidence '{conf['default']}'; AUROC of correct@{conf['alpha']:g}: {aurocs}")
    cal = conf.get("calibration") or {}
    ece, brier = conf.get("ece", {}).get(conf["default"]), conf.get("brier", {}).get(conf["default"])
    if ece is not None and brier is not None:
        source = (
            f"calibrated on {cal['pairs']} {cal['dataset']} {cal['split']} pairs ({cal['date']})"
            if cal.get("calibrated")
            else "the model has no calibration: `smatch calibrate` makes the confidence a probability"
        )
        console.print(f"'{conf['default']}' as a probability: ECE {ece:.3f}, Brier {brier:.3f}; {source}")
    rej = conf.get("rejection")
    if rej:
        prec = ", ".join(f"@{a} {v:.2f}" if v is not None else f"@{a} -" for a, v in rej["precision"].items())
        kept = "-" if rej["kept_fraction"] is None else f"{100 * rej['kept_fraction']:.1f}%"
        console.print(
            f"min confidence {rej['min_confidence']:g}: kept {kept} of the points, precision {prec}"
        )
