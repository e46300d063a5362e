"""``smatch demo``: the whole pipeline on embedded data, with no input, on a CPU in minutes.

1. train the ``demo_cpu`` preset on synthetic pairs;   2. evaluate it (held-out synthetic, PF-WILLOW when
available);   3. export ONNX fp32 + fp16 with the parity check;   4. evaluate the ONNX models with the
torch-free runtime and compare with PyTorch;   5. ``smatch infer`` on ``examples/``;   6. a short
``smatch bench``;   7. ``runs/demo/report.md`` with every number and the command that reproduces it.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

from simplematch.errors import SimpleMatchError
from simplematch.io import atomic_write_text

DEFAULT_WILLOW = Path("../shared/data/pf-willow")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _examples_dir() -> Path:
    for cand in (Path("examples"), EXAMPLES):
        if (cand / "kps.json").is_file():
            return cand
    raise SimpleMatchError("examples/ (src.png, tgt.png, kps.json) not found", "run from the repository root")


def run_demo(
    out: Path = Path("runs/demo"),
    *,
    willow: Path | None = None,
    max_steps: int | None = None,
    bench_iters: int = 5,
    force: bool = False,
    console: Any = None,
) -> Path:
    from rich.console import Console

    from simplematch.config import resolve_config

    console = console or Console()
    out = Path(out)
    willow = (
        willow
        if willow is not None
        else (DEFAULT_WILLOW if (DEFAULT_WILLOW / "PF-dataset").is_dir() else None)
    )
    if willow is not None and not (Path(willow) / "PF-dataset").is_dir():
        raise SimpleMatchError(
            f"{willow} has no PF-dataset/ folder", "pass the folder that holds PF-dataset/"
        )
    examples = _examples_dir()
    ckpt = out / "checkpoint"
    cfg = resolve_config("demo_cpu", {"max_steps": max_steps, "device": "cpu"})
    t_start = time.time()
    steps: list[dict[str, Any]] = []
    nums: dict[str, Any] = {}

    def step(title: str, cmd: str) -> None:
        console.rule(f"[bold]{len(steps) + 1}. {title}")
        console.print(f"[dim]$ {cmd}")
        steps.append({"title": title, "command": cmd, "t0": time.time()})

    def done() -> None:
        steps[-1]["seconds"] = round(time.time() - steps[-1]["t0"], 1)

    # 1. baseline + training ------------------------------------------------------------------------------
    step("evaluate the untrained model (random init) on held-out synthetic pairs", "(part of smatch demo)")
    nums["synthetic_before"] = _eval_untrained(cfg)["pck"]
    console.print(f"untrained PCK: {nums['synthetic_before']}")
    done()
    step(
        "train demo_cpu on synthetic pairs",
        f"smatch train --preset demo_cpu --device cpu --max-steps {cfg.max_steps} --out {ckpt}",
    )
    from simplematch.train import train

    res = train(cfg, ckpt, replace=force, console=console)
    import resource

    # ru_maxrss is in KiB on Linux: the process peak so far, i.e. the training run
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    nums["train"] = {
        "steps": res.step,
        "seconds": round(res.seconds, 1),
        "best": res.best,
        "peak_rss_mib": round(peak),
    }
    done()

    # 2. PyTorch evaluation --------------------------------------------------------------------------------
    evals = [("synthetic", None)] + ([("pfwillow", willow)] if willow else [])
    for name, root in evals:
        root_arg = f" --data-root {root}" if root else ""
        js = out / f"eval_torch_{name}.json"
        step(
            f"evaluate the checkpoint on {name} (PyTorch)",
            f"smatch eval {ckpt} --dataset {name}{root_arg} --json {js}",
        )
        nums[f"torch_{name}"] = _eval_cli(ckpt, name, root, js, console)
        done()

    if willow:
        step("training-free references on PF-WILLOW (relative position, dense SIFT)", "(part of smatch demo)")
        from simplematch.baselines import evaluate_baseline
        from simplematch.data import load_records

        recs = load_records("pfwillow", str(willow), "test")
        nums["baselines"] = {n: evaluate_baseline(n, recs, "kps")["pck"] for n in ("relative", "sift")}
        console.print(nums["baselines"])
        done()

    # 3. export ----------------------------------------------------------------------------------------------
    from simplematch.export import export_checkpoint

    check_arg = f" --check-data {willow}" if willow else ""
    for fp16 in (False, True):
        target = out / ("model.fp16.onnx" if fp16 else "model.onnx")
        step(f"export ONNX {'fp16' if fp16 else 'fp32'} with the parity check",
             f"smatch export {ckpt} --out {target}{' --fp16' if fp16 else ''}{check_arg}")  # fmt: skip
        # The demo owns its --out folder: a rerun replaces its own exports (smatch export needs --force).
        r = export_checkpoint(ckpt, out=target, fp16=fp16, check_data=willow, force=True)
        nums[f"export_{'fp16' if fp16 else 'fp32'}"] = {
            "seconds": round(r["seconds"], 1),
            "size_mib": round(r["size_mib"], 2),
            **r["parity"],
        }
        console.print(nums[f"export_{'fp16' if fp16 else 'fp32'}"])
        done()

    # 4. runtime evaluation ------------------------------------------------------------------------------------  # noqa: E501
    for model_name in ("model.onnx", "model.fp16.onnx"):
        for name, root in evals:
            root_arg = f" --data-root {root}" if root else ""
            js = out / f"eval_{model_name.replace('.onnx', '')}_{name}.json"
            step(f"evaluate {model_name} on {name} with the torch-free runtime",
                 f"smatch eval {out / model_name} --dataset {name}{root_arg} --json {js}")  # fmt: skip
            nums[f"{model_name}_{name}"] = _eval_cli(out / model_name, name, root, js, console)
            done()

    # 5. infer ---------------------------------------------------------------------------------------------------  # noqa: E501
    picture = out / "match.png"
    step("match the example pair with the runtime",
         f"smatch infer {examples / 'src.png'} {examples / 'tgt.png'} --kps {examples / 'kps.json'} --model {out / 'model.onnx'} --out {out / 'infer.json'} --viz {picture}")  # noqa: E501  # fmt: skip
    from simplematch.runtime.infer import run_infer

    inf = run_infer(examples / "src.png", examples / "tgt.png", examples / "kps.json", model=out / "model.onnx",  # noqa: E501
                    out=out / "infer.json", viz=picture, force=True)  # fmt: skip  # the demo owns --out
    nums["infer"] = {
        "provider": inf["provider"],
        "timing_ms": inf["timing_ms"],
        "keypoints": len(inf["keypoints"]),
    }
    nums["infer_example_error_px"] = _example_error(examples, inf)
    done()

    # 6. bench -------------------------------------------------------------------------------------------------  # noqa: E501
    bench_json = out / "bench.json"
    step("benchmark torch vs onnxruntime (short)",
         f"smatch bench --checkpoint {ckpt} --runtime torch,onnx,onnx-fp16 --batch 1,8 --iters {bench_iters} --json {bench_json}")  # noqa: E501  # fmt: skip
    from simplematch.bench import print_bench, run_bench

    bench = run_bench(
        checkpoint=ckpt,
        runtimes=["torch", "onnx", "onnx-fp16"],
        batches=[1, 8],
        warmup=2,
        iters=bench_iters,
        json_path=bench_json,
        force=True,  # the demo owns its --out folder (checked with --force by the CLI)
    )
    print_bench(bench, console)
    nums["bench"] = bench
    done()

    # 7. report ---------------------------------------------------------------------------------------------------  # noqa: E501
    nums["total_seconds"] = round(time.time() - t_start, 1)
    report = out / "report.md"
    atomic_write_text(report, render_report(nums, steps, evals, cfg.to_dict()))
    atomic_write_text(out / "numbers.json", json.dumps(nums, indent=2, default=str) + "\n")
    console.rule("[bold green]demo finished")
    console.print(f"report: {report}  ({nums['total_seconds']:.0f} s)")
    return report


def _eval_untrained(cfg: Any) -> dict[str, Any]:
    import torch

    from simplematch.data import load_records
    from simplematch.evaluate import evaluate_model
    from simplematch.model import SimpleMatch

    torch.manual_seed(cfg.seed)
    model = SimpleMatch(cfg).eval()
    records = load_records("synthetic", None, "test", seed=cfg.seed)
    return evaluate_model(model, cfg, records, dataset="synthetic", split="test")


def _eval_cli(model: Path, dataset: str, root: Path | None, js: Path, console: Any) -> dict[str, Any]:
    from simplematch.cli.evaluation import evaluate_any, print_result
    from simplematch.data import load_records
    from simplematch.io import write_json
    from simplematch.metrics import DEFAULT_ALPHAS

    records = load_records(dataset, str(root) if root else None, "test")
    res = evaluate_any(model, records, dataset=dataset, split="test", alphas=DEFAULT_ALPHAS, frame="resized",
                       batch_size=8, device="cpu")  # fmt: skip
    print_result(res, console)
    write_json(js, res)
    return {
        "pck": res["pck"],
        "pck_per_point": res["pck_per_point"],
        "pairs": res["pairs"],
        "points": res["points"],
    }


def _example_error(examples: Path, inf: dict[str, Any]) -> float | None:
    """Mean distance to the known correspondences of the example pair (it is a synthetic warp)."""
    truth = examples / "truth.json"
    if not truth.is_file():
        return None
    import numpy as np

    gt = np.asarray(json.loads(truth.read_text())["target"], dtype=np.float64)
    pred = np.asarray([k["target"] for k in inf["keypoints"]], dtype=np.float64)
    return round(float(np.linalg.norm(gt - pred, axis=1).mean()), 2)


def _fmt(pck: dict[str, float]) -> str:
    return " / ".join(f"{v:.1f}" for v in pck.values())


def render_report(nums: dict[str, Any], steps: list[dict[str, Any]], evals: list, cfg: dict[str, Any]) -> str:
    import numpy
    import onnxruntime
    import torch

    import simplematch

    lines = [
        "# SimpleMatch demo report",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {platform.system()}; python {platform.python_version()},"  # noqa: E501
        f" torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, numpy {numpy.__version__},"
        f" simplematch {simplematch.__version__}. Total wall time {nums['total_seconds']:.0f} s.",
        "",
        f"Preset `demo_cpu`: {cfg['backbone']} from scratch at {cfg['img_size']} px, {nums['train']['steps']} steps"  # noqa: E501
        f" in {nums['train']['seconds']:.0f} s on synthetic warps of scikit-image photos"
        f" (peak RSS of the process {nums['train']['peak_rss_mib']} MiB).",
        "",
        "## Accuracy (PCK@0.05 / 0.1 / 0.15, per-image mean; per-point in brackets)",
        "",
        "| data | untrained | PyTorch | ONNX fp32 (runtime) | ONNX fp16 (runtime) |",
        "|---|---|---|---|---|",
    ]
    for name, _ in evals:
        before = _fmt(nums["synthetic_before"]) if name == "synthetic" else "-"
        row = [name, before]
        for key in (f"torch_{name}", f"model.onnx_{name}", f"model.fp16.onnx_{name}"):
            r = nums[key]
            row.append(f"{_fmt(r['pck'])} ({_fmt(r['pck_per_point'])})")
        lines.append("| " + " | ".join(row) + " |")
    for name, _ in evals:
        t, o = nums[f"torch_{name}"]["pck"], nums[f"model.onnx_{name}"]["pck"]
        delta = max(abs(t[a] - o[a]) for a in t)
        lines.append(
            f"\nRuntime vs PyTorch on {name}: max |PCK difference| = {delta:.3f} points (requirement <= 0.1)."
        )
    if "baselines" in nums:
        ref = nums["baselines"]
        model = nums["torch_pfwillow"]["pck"]["0.1"]
        lines.append(
            "\nTraining-free references on PF-WILLOW, measured by this run with the same PCK code (PCK@0.1,"
            f" kps threshold): relative position {ref['relative']['0.1']:.1f}, dense SIFT nearest neighbour"
            f" {ref['sift']['0.1']:.1f}; the demo model scores {model:.1f}. A model below both has learned"
            " nothing that transfers: the demo model is a ResNet-18 trained from scratch for minutes on synthetic"  # noqa: E501
            " warps of six photos, without pretrained weights, so semantic transfer is not expected of it."
        )
    lines += [
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
    lines += ["", "## Example match", "", "![matches](match.png)", ""]
    inf = nums["infer"]
    lines.append(f"Provider {inf['provider']}; timing {inf['timing_ms']} ms; {inf['keypoints']} keypoints.")
    if nums.get("infer_example_error_px") is not None:
        lines.append(f"Mean error against the known warp: {nums['infer_example_error_px']} px.")
    lines += [
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
    lines += ["", "## Steps and the commands that reproduce them", ""]
    for i, s in enumerate(steps, 1):
        lines.append(f"{i}. {s['title']} ({s.get('seconds', 0)} s)\n\n   ```\n   {s['command']}\n   ```")
    return "\n".join(lines) + "\n"
