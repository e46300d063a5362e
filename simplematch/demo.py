"""``smatch demo``: the whole pipeline on embedded data, with no input, on a CPU in minutes.

1. train the ``demo_cpu`` preset on synthetic pairs;   2. evaluate it (held-out synthetic, PF-WILLOW when
available);   3. export ONNX fp32 + fp16 with the parity check;   4. evaluate the ONNX models with the
torch-free runtime and compare with PyTorch;   5. ``smatch infer`` on ``examples/``;   6. a short
``smatch bench``;   7. ``runs/demo/report.md`` with every number and the command that reproduces it.

Plan, execute, report: :func:`plan_demo` lists the :class:`Step` s, each holding the ``smatch`` command that
reproduces it as data (sub-command, arguments, options named as the flags); the printed command and the
library call are both made from that data, so they cannot drift.
"""

from __future__ import annotations

import json
import platform
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simplematch.errors import SimpleMatchError
from simplematch.files import atomic_write_text
from simplematch.provenance import stamped

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PRESET = "demo_cpu"
DEVICE = "cpu"
BENCH_RUNTIMES = "torch,onnx,onnx-fp16"
BENCH_BATCHES = "1,8"
# Steps that have no command of their own (measured inside the demo) say so where the command would be.
NO_COMMAND = "(part of smatch demo)"


def _examples_dir() -> Path:
    for cand in (Path("examples"), EXAMPLES):
        if (cand / "kps.json").is_file():
            return cand
    raise SimpleMatchError("examples/ (src.png, tgt.png, kps.json) not found", "run from the repository root")


@dataclass
class Step:
    """One demo step: ``run(*args, **options)`` returns its numbers (merged into ``numbers.json``).

    ``command``, ``args`` and ``options`` are also the ``smatch`` command line that reproduces the step:
    option ``data_root`` is flag ``--data-root``, ``True`` a bare flag, ``None`` / ``False`` no flag.
    ``command`` None: the step is part of the demo itself.
    """

    title: str
    run: Callable[..., dict[str, Any]]
    command: str | None = None
    args: tuple[Any, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def argv(self) -> list[str]:
        if self.command is None:
            return []
        argv = ["smatch", self.command, *(str(a) for a in self.args)]
        for name, value in self.options.items():
            flag = "--" + name.replace("_", "-")
            if value is True:
                argv.append(flag)
            elif value is not None and value is not False:
                argv += [flag, str(value)]
        return argv

    @property
    def reproduce(self) -> str:
        return shlex.join(self.argv) if self.command else NO_COMMAND

    def execute(self) -> dict[str, Any]:
        return self.run(*self.args, **self.options)


@dataclass
class DemoPlan:
    cfg: Any  # the demo_cpu Config the train step resolves (its backbone, size, steps for the report)
    evals: list[tuple[str, Path | None]]  # (dataset, data root) evaluated by every model
    steps: list[Step]


def run_demo(
    out: Path = Path("runs/demo"),
    *,
    willow: Path | None = None,
    max_steps: int | None = None,
    bench_iters: int = 5,
    force: bool = False,
    console: Any = None,
) -> Path:
    """Plan the steps, execute each one, write ``report.md`` and ``numbers.json``; returns the report."""
    from rich.console import Console

    console = console or Console()
    out = Path(out)
    plan = plan_demo(
        out,
        willow=_willow_root(willow),
        max_steps=max_steps,
        bench_iters=bench_iters,
        force=force,
        console=console,
    )
    t_start = time.time()
    nums, done = execute_steps(plan.steps, console)
    nums["total_seconds"] = round(time.time() - t_start, 1)
    report = out / "report.md"
    atomic_write_text(report, render_report(nums, done, plan.evals, plan.cfg.to_dict()))
    atomic_write_text(out / "numbers.json", json.dumps(stamped(nums, "demo"), indent=2, default=str) + "\n")
    console.rule("[bold green]demo finished")
    console.print(f"report: {report}  ({nums['total_seconds']:.0f} s)")
    return report


def _willow_root(willow: Path | None) -> Path | None:
    """The PF-WILLOW root to use: the given one (refused without PF-dataset/); none when not given (the tool
    never guesses a folder outside the working directory; `make demo` passes the benchmark subset's)."""
    if willow is None:
        return None
    if not (Path(willow) / "PF-dataset").is_dir():
        raise SimpleMatchError(
            f"{willow} has no PF-dataset/ folder", "pass the folder that holds PF-dataset/"
        )
    return willow


def execute_steps(steps: list[Step], console: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run the steps in order, each under a numbered rule with its command; (numbers, timed steps)."""
    nums: dict[str, Any] = {}
    done: list[dict[str, Any]] = []
    for i, step in enumerate(steps, 1):
        console.rule(f"[bold]{i}. {step.title}")
        console.print(f"[dim]$ {step.reproduce}")
        t0 = time.time()
        nums.update(step.execute())
        done.append({"title": step.title, "command": step.reproduce, "seconds": round(time.time() - t0, 1)})
    return nums, done


# ------------------------------------------------------------------------------------------------------------
# Plan: every step, in order; the ``run`` functions below make the library call of each
# ------------------------------------------------------------------------------------------------------------
def plan_demo(
    out: Path, *, willow: Path | None, max_steps: int | None, bench_iters: int, force: bool, console: Any
) -> DemoPlan:
    """The demo's steps; nothing runs yet. ``force``: the training may replace an earlier demo's run (every
    later step writes into the demo's own ``out`` folder, so it always replaces its own files)."""
    from simplematch.config import resolve_config

    examples = _examples_dir()
    ckpt = out / "checkpoint"
    cfg = resolve_config(PRESET, {"max_steps": max_steps, "device": DEVICE})
    evals = [("synthetic", None)] + ([("pfwillow", willow)] if willow else [])
    steps = [
        Step(
            "evaluate the untrained model (random init) on held-out synthetic pairs",
            lambda: _eval_untrained(cfg, console),
        ),
        Step(
            f"train {PRESET} on synthetic pairs",
            _train(force, console),
            "train",
            options={"preset": PRESET, "device": cfg.device, "max_steps": cfg.max_steps, "out": ckpt},
        ),
        *[
            _eval_step(ckpt, name, root, out / f"eval_torch_{name}.json", "PyTorch", f"torch_{name}", console)
            for name, root in evals
        ],
    ]
    if willow:
        steps.append(
            Step(
                "training-free references on PF-WILLOW (relative position, dense SIFT)",
                lambda: _baselines(willow, console),
            )
        )
    steps += [_export_step(ckpt, out, fp16, willow, console) for fp16 in (False, True)]
    for model_name in ("model.onnx", "model.fp16.onnx"):
        steps += [
            _eval_step(
                out / model_name,
                name,
                root,
                out / f"eval_{model_name[: -len('.onnx')]}_{name}.json",
                None,
                f"{model_name}_{name}",
                console,
            )
            for name, root in evals
        ]
    steps.append(_infer_step(examples, out))
    steps.append(_bench_step(ckpt, out, bench_iters, console))
    return DemoPlan(cfg, evals, steps)


def _eval_untrained(cfg: Any, console: Any) -> dict[str, Any]:
    import torch

    from simplematch.data import load_records
    from simplematch.evaluation.torch_predictor import evaluate_model
    from simplematch.model import SimpleMatch

    torch.manual_seed(cfg.seed)
    model = SimpleMatch(cfg).eval()
    records = load_records("synthetic", None, "test", seed=cfg.seed)
    pck = evaluate_model(model, cfg, records, dataset="synthetic", split="test")["pck"]
    console.print(f"untrained PCK: {pck}")
    return {"synthetic_before": pck}


def _train(force: bool, console: Any) -> Callable[..., dict[str, Any]]:
    def run(*, preset: str, device: str, max_steps: int, out: Path) -> dict[str, Any]:
        import resource

        from simplematch.config import resolve_config
        from simplematch.train import train

        cfg = resolve_config(preset, {"max_steps": max_steps, "device": device})
        res = train(cfg, out, replace=force, console=console)
        # ru_maxrss is in KiB on Linux: the process peak so far, i.e. the training run
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return {
            "train": {
                "steps": res.step,
                "seconds": round(res.seconds, 1),
                "best": res.best,
                "peak_rss_mib": round(peak),
            }
        }

    return run


def _eval_step(
    model: Path, name: str, root: Path | None, js: Path, engine: str | None, key: str, console: Any
) -> Step:
    """``smatch eval``: the same library call as the command (the demo replaces its own JSON files)."""

    def run(model: Path, *, json: Path, **request: Any) -> dict[str, Any]:
        from simplematch.evaluation import EvalOutputs, EvalRequest, print_result, run_evaluation

        res = run_evaluation(
            model,
            EvalRequest(**request),
            EvalOutputs(json=json, force=True),
            show=lambda r: print_result(r, console),
        )
        return {key: {k: res[k] for k in ("pck", "pck_per_point", "pairs", "points")}}

    how = f"({engine})" if engine else "with the torch-free runtime"
    where = "the checkpoint" if engine else model.name
    return Step(
        f"evaluate {where} on {name} {how}",
        run,
        "eval",
        (model,),
        {"dataset": name, "data_root": root, "device": DEVICE, "json": js},
    )


def _baselines(willow: Path, console: Any) -> dict[str, Any]:
    from simplematch.baselines import evaluate_baseline
    from simplematch.data import load_records

    recs = load_records("pfwillow", str(willow), "test")
    refs = {n: evaluate_baseline(n, recs, "kps")["pck"] for n in ("relative", "sift")}
    console.print(refs)
    return {"baselines": refs}


def _export_step(ckpt: Path, out: Path, fp16: bool, willow: Path | None, console: Any) -> Step:
    variant = "fp16" if fp16 else "fp32"

    def run(ckpt: Path, **options: Any) -> dict[str, Any]:
        from simplematch.export import export_checkpoint

        # The demo owns its --out folder: a rerun replaces its own exports (smatch export needs --force).
        r = export_checkpoint(ckpt, **options, force=True)
        nums = {"seconds": round(r["seconds"], 1), "size_mib": round(r["size_mib"], 2), **r["parity"]}
        console.print(nums)
        return {f"export_{variant}": nums}

    target = out / ("model.fp16.onnx" if fp16 else "model.onnx")
    return Step(
        f"export ONNX {variant} with the parity check",
        run,
        "export",
        (ckpt,),
        {"out": target, "fp16": fp16, "check_data": willow},
    )


def _infer_step(examples: Path, out: Path) -> Step:
    def run(src: Path, tgt: Path, *, kps: Path, model: Path, out: Path, viz: Path) -> dict[str, Any]:
        from simplematch.runtime.infer import run_infer

        inf = run_infer(src, tgt, kps, model=model, out=out, viz=viz, force=True)  # the demo owns --out
        return {
            "infer": {
                "provider": inf["provider"],
                "timing_ms": inf["timing_ms"],
                "keypoints": len(inf["keypoints"]),
            },
            "infer_example_error_px": _example_error(examples, inf),
        }

    return Step(
        "match the example pair with the runtime",
        run,
        "infer",
        (examples / "src.png", examples / "tgt.png"),
        {
            "kps": examples / "kps.json",
            "model": out / "model.onnx",
            "out": out / "infer.json",
            "viz": out / "match.png",
        },
    )


def _bench_step(ckpt: Path, out: Path, iters: int, console: Any) -> Step:
    def run(*, checkpoint: Path, runtime: str, batch: str, iters: int, json: Path) -> dict[str, Any]:
        from simplematch.bench import parse_batches, print_bench, run_bench, split_values

        # Parsed as ``smatch bench`` parses its flags; --force: the demo owns its --out folder.
        bench = run_bench(
            checkpoint=checkpoint,
            runtimes=split_values([runtime]),
            batches=parse_batches([batch]),
            iters=iters,
            json_path=json,
            force=True,
        )
        print_bench(bench, console)
        return {"bench": bench}

    return Step(
        "benchmark torch vs onnxruntime (short)",
        run,
        "bench",
        options={
            "checkpoint": ckpt,
            "runtime": BENCH_RUNTIMES,
            "batch": BENCH_BATCHES,
            "iters": iters,
            "json": out / "bench.json",
        },
    )


def _example_error(examples: Path, inf: dict[str, Any]) -> float | None:
    """Mean distance to the known correspondences of the example pair (it is a synthetic warp)."""
    truth = examples / "truth.json"
    if not truth.is_file():
        return None
    import numpy as np

    gt = np.asarray(json.loads(truth.read_text())["target"], dtype=np.float64)
    pred = np.asarray([k["target"] for k in inf["keypoints"]], dtype=np.float64)
    return round(float(np.linalg.norm(gt - pred, axis=1).mean()), 2)


# ------------------------------------------------------------------------------------------------------------
# Report: one section per part of the pipeline
# ------------------------------------------------------------------------------------------------------------
def render_report(nums: dict[str, Any], steps: list[dict[str, Any]], evals: list, cfg: dict[str, Any]) -> str:
    """``report.md``: every number of the run and, last, each step with the command that reproduces it."""
    lines = [
        *_header(nums, cfg),
        *_accuracy(nums, evals, cfg),
        *_export_parity(nums),
        *_example_match(nums),
        *_benchmark(nums),
        *_commands(steps),
    ]
    return "\n".join(lines) + "\n"


def _header(nums: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    import numpy
    import onnxruntime
    import torch

    import simplematch

    train = nums["train"]
    return [
        "# SimpleMatch demo report",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {platform.system()}; python {platform.python_version()},"  # noqa: E501
        f" torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, numpy {numpy.__version__},"
        f" simplematch {simplematch.__version__}. Total wall time {nums['total_seconds']:.0f} s.",
        "",
        f"Preset `{PRESET}`: {cfg['backbone']} from scratch at {cfg['img_size']} px, {train['steps']} steps"
        f" in {train['seconds']:.0f} s on synthetic warps of scikit-image photos"
        f" (peak RSS of the process {train['peak_rss_mib']} MiB).",
    ]


def _fmt(pck: dict[str, float]) -> str:
    return " / ".join(f"{v:.1f}" for v in pck.values())


def _accuracy(nums: dict[str, Any], evals: list, cfg: dict[str, Any]) -> list[str]:
    from simplematch.metrics import DEFAULT_ALPHAS, alpha_key

    alphas = " / ".join(alpha_key(a) for a in DEFAULT_ALPHAS)
    lines = [
        "",
        f"## Accuracy (PCK@{alphas}, per-image mean; per-point in brackets)",
        "",
        "| data | untrained | PyTorch | ONNX fp32 (runtime) | ONNX fp16 (runtime) |",
        "|---|---|---|---|---|",
    ]
    for name, _ in evals:
        row = [name, _fmt(nums["synthetic_before"]) if name == "synthetic" else "-"]
        for key in (f"torch_{name}", f"model.onnx_{name}", f"model.fp16.onnx_{name}"):
            row.append(f"{_fmt(nums[key]['pck'])} ({_fmt(nums[key]['pck_per_point'])})")
        lines.append("| " + " | ".join(row) + " |")
    for name, _ in evals:
        t, o = nums[f"torch_{name}"]["pck"], nums[f"model.onnx_{name}"]["pck"]
        delta = max(abs(t[a] - o[a]) for a in t)
        lines.append(
            f"\nRuntime vs PyTorch on {name}: max |PCK difference| = {delta:.3f} points (requirement <= 0.1)."
        )
    if "baselines" in nums:
        lines.append(_baselines_prose(nums, cfg))
    return lines


def _baselines_prose(nums: dict[str, Any], cfg: dict[str, Any]) -> str:
    ref = nums["baselines"]
    model = nums["torch_pfwillow"]["pck"]["0.1"]
    return (
        "\nTraining-free references on PF-WILLOW, measured by this run with the same PCK code (PCK@0.1,"
        f" kps threshold): relative position {ref['relative']['0.1']:.1f}, dense SIFT nearest neighbour"
        f" {ref['sift']['0.1']:.1f}; the demo model scores {model:.1f}. A model below both has learned"
        f" nothing that transfers: the demo model is a {cfg['backbone']} trained from scratch for minutes on"
        " synthetic warps of six photos, without pretrained weights, so semantic transfer is not expected of"
        " it."
    )


def _export_parity(nums: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## Export parity (torch vs onnxruntime)",
        "",
        "| variant | seconds | MiB | max abs diff | mean abs diff | kp agreement (0.5 px) |",
        "|---|---|---|---|---|---|",
    ]
    for v in ("fp32", "fp16"):
        e = nums[f"export_{v}"]
        lines.append(
            f"| {v} | {e['seconds']} | {e['size_mib']} | {e.get('max_abs_feature_diff', float('nan')):.2e} | {e.get('mean_abs_feature_diff', float('nan')):.2e} | {e.get('keypoint_agreement', float('nan')) * 100:.2f}% |"  # noqa: E501
        )
    return lines


def _example_match(nums: dict[str, Any]) -> list[str]:
    inf = nums["infer"]
    lines = ["", "## Example match", "", "![matches](match.png)", ""]
    lines.append(f"Provider {inf['provider']}; timing {inf['timing_ms']} ms; {inf['keypoints']} keypoints.")
    if nums.get("infer_example_error_px") is not None:
        lines.append(f"Mean error against the known warp: {nums['infer_example_error_px']} px.")
    return lines


def _benchmark(nums: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## Benchmark",
        "",
        "| runtime | batch | images/s | p50 ms | p95 ms | peak MiB | match share |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in nums["bench"]["results"]:
        lines.append(
            f"| {r['runtime']} | {r['batch']} | {r['images_per_s']:.1f} | {r['latency_ms_p50']:.1f} | {r['latency_ms_p95']:.1f} | {r['peak_mem_mib']:.0f} | {r['match_share'] * 100:.1f}% |"  # noqa: E501
        )
    for s in nums["bench"].get("skipped", []):
        lines.append(f"\nSkipped {s['runtime']}: {s['reason']}")
    return lines


def _commands(steps: list[dict[str, Any]]) -> list[str]:
    lines = ["", "## Steps and the commands that reproduce them", ""]
    for i, s in enumerate(steps, 1):
        lines.append(f"{i}. {s['title']} ({s.get('seconds', 0)} s)\n\n   ```\n   {s['command']}\n   ```")
    return lines
