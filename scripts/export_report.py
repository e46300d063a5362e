"""Measure ``smatch export`` on the three deployment models and write a JSON + markdown table.

For each model: export time, file size, fp32 and fp16 max / mean absolute feature error against PyTorch
and keypoint agreement (within 0.5 px after matching), all from the export's own parity check on
PF-WILLOW images (``--check-data``). Models:

* ``demo_cpu``: the trained ``runs/demo/checkpoint`` when it exists, else a randomly initialised one;
* ``vit_small_patch14_dinov2`` at 252, ``finetune=lora`` (LoRA B randomised, so the merge is real);
* ``resnet101`` at 256, multiscale on.

Random weights are fine for export fidelity (the graph is the same); PCK is only meaningful for the trained
demo checkpoint, so the fp32-vs-fp16 PF-WILLOW PCK@0.1 (``smatch eval MODEL.onnx``) runs only for it.

    .venv/bin/python scripts/export_report.py --data-root ../shared/data/pf-willow --json report.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from simplematch.checkpoint import save_checkpoint
from simplematch.config import resolve_config
from simplematch.export import export_checkpoint
from simplematch.model import SimpleMatch

DEMO_CKPT = Path("runs/demo/checkpoint")
MODELS = {
    "demo_cpu": ("demo_cpu", {}),
    "vit_small_patch14_dinov2@252": (
        "dinov2_b14_252_spair",
        {"backbone": "vit_small_patch14_dinov2", "img_size": 252, "finetune": "lora", "dropout": 0.0},
    ),
    "resnet101@256": ("resnet101_256_spair", {"img_size": 256, "multiscale": True}),
}


def random_checkpoint(name: str, out: Path, seed: int = 0) -> Path:
    preset, overrides = MODELS[name]
    cfg = resolve_config(preset, {**overrides, "weights": None})
    torch.manual_seed(seed)
    model = SimpleMatch(cfg)
    with torch.no_grad():  # loralib starts B at zero: randomise it so the exported merge is not a no-op
        for pname, p in model.named_parameters():
            if "lora_B" in pname:
                p.normal_(0, 0.02)
    save_checkpoint(model, cfg, out)
    return out


def pck(model: Path, data_root: Path, json_path: Path) -> float | None:
    cmd = [sys.executable, "-m", "simplematch.cli", "eval", str(model), "--dataset", "pfwillow"]
    cmd += ["--data-root", str(data_root), "--json", str(json_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"eval failed for {model}: {proc.stderr.strip()[-300:]}", file=sys.stderr)
        return None
    res = json.loads(json_path.read_text())
    value = res["pck"]
    return value.get("0.1", next(iter(value.values()))) if isinstance(value, dict) else value


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", type=Path, default=Path("../shared/data/pf-willow"))
    ap.add_argument("--json", type=Path, default=Path("runs/export_report.json"))
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--work", type=Path, default=None, help="keep checkpoints and exports here")
    args = ap.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="export_report_"))
    rows = []
    for name in args.models:
        trained = name == "demo_cpu" and (DEMO_CKPT / "model.safetensors").is_file()
        ckpt = DEMO_CKPT if trained else random_checkpoint(name, work / name.replace("@", "_") / "checkpoint")
        row: dict = {"model": name, "weights": "trained (runs/demo/checkpoint)" if trained else "random init"}
        for fp16 in (False, True):
            tag = "fp16" if fp16 else "fp32"
            out = work / name.replace("@", "_") / f"model.{tag}.onnx"
            res = export_checkpoint(ckpt, out=out, fp16=fp16, check_data=args.data_root, force=True)
            p = res["parity"]
            row[tag] = {
                "seconds": round(res["seconds"], 1),
                "size_mib": round(res["size_mib"], 2),
                "max_abs": p["max_abs_feature_diff"],
                "mean_abs": p["mean_abs_feature_diff"],
                "agreement": p["keypoint_agreement"],
                "max_kp_diff_px": p["max_keypoint_diff_px"],
                "data": p["data"],
            }
            if trained:
                row[tag]["pck@0.1"] = pck(out, args.data_root, out.with_suffix(".eval.json"))
            print(name, tag, row[tag], flush=True)
        rows.append(row)

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"rows": rows, "torch": torch.__version__}, indent=2) + "\n")
    print(markdown(rows))
    return 0


def markdown(rows: list[dict]) -> str:
    head = (
        "| model | weights | precision | export s | size MiB | max abs | mean abs | kp agree (0.5 px) "
        "| PF-WILLOW PCK@0.1 |\n|---|---|---|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for r in rows:
        for tag in ("fp32", "fp16"):
            d = r[tag]
            pck_cell = f"{d['pck@0.1']:.4f}" if d.get("pck@0.1") is not None else "n/a (random weights)"
            lines.append(
                f"| {r['model']} | {r['weights']} | {tag} | {d['seconds']:.1f} | {d['size_mib']:.2f} "
                f"| {d['max_abs']:.2e} | {d['mean_abs']:.2e} | {d['agreement'] * 100:.2f}% | {pck_cell} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
