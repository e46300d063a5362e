"""``smatch eval`` dispatch: a checkpoint folder goes through PyTorch, an .onnx/.engine file through the
torch-free runtime. Both produce the same JSON (the runtime adds ``runtime`` and ``provider``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from simplematch.errors import SimpleMatchError


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
) -> dict[str, Any]:
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
            model,
            records,
            dataset,
            split,
            alphas,
            frame,
            batch_size,
            device,
            window,
            threshold,
            released_compat,
        )
    if model.suffix in (".onnx", ".engine"):
        from simplematch.runtime.evaluate import evaluate_runtime

        rt_device = "cpu" if device == "auto" else device
        return evaluate_runtime(
            model, records, dataset=dataset, split=split, alphas=alphas, frame=frame,
            batch_size=batch_size, device=rt_device, window=window, threshold=threshold,
            released_compat=released_compat,
        )  # fmt: skip
    raise SimpleMatchError(f"cannot evaluate {model}", "pass a checkpoint folder, a .onnx or a .engine file")


def _evaluate_torch(
    model_dir, records, dataset, split, alphas, frame, batch_size, device, window, threshold, released_compat
):  # noqa: ANN001, ANN202, E501
    from simplematch.extras import require

    require("train", "evaluating a checkpoint folder (PyTorch)")
    from simplematch import distributed as dist_utils
    from simplematch.checkpoint import load_checkpoint
    from simplematch.evaluate import checkpoint_info, evaluate_model
    from simplematch.train import select_device

    dev = select_device(device)
    # Under torchrun each rank evaluates pairs[rank::world]; the per-pair counts are gathered exactly.
    dist_utils.init_from_env(dev)
    dev = dist_utils.local_device(dev)
    net, cfg = load_checkpoint(model_dir, device=dev)
    with _progress(len(records), enabled=dist_utils.is_main()) as advance:
        return evaluate_model(
            net, cfg, records, dataset=dataset, split=split, alphas=alphas, frame=frame,
            batch_size=batch_size, device=dev, window=window, model_info=checkpoint_info(model_dir),
            progress=advance, threshold=threshold, released_compat=released_compat,
        )  # fmt: skip


class _progress:
    """A rich progress bar over pairs; yields a callback ``advance(n)``."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        from rich.progress import Progress

        self.bar = Progress(transient=True, disable=not enabled)
        self.total = total

    def __enter__(self):  # noqa: ANN204
        self.bar.__enter__()
        task = self.bar.add_task("eval", total=self.total)
        return lambda n: self.bar.update(task, advance=n)

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)


def print_result(res: dict[str, Any], console: Any) -> None:
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
