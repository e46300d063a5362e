"""Numbers for docs/export.md: the one-graph model and INT8 on a trained checkpoint, PF-WILLOW.

    python scripts/deploy_report.py --ckpt runs/demo_snap --data-root ../shared/data/pf-willow --out runs/r

1. ``smatch export --with-matching``: PCK of the one graph (matching inside ONNX) vs the PyTorch evaluation
   on all PF-WILLOW test pairs of the subset, and the graph's keypoints vs the numpy matching (max px).
2. ``smatch export --int8`` with each calibration method: the int8-vs-fp32 parity numbers.
3. ``smatch export --img-size N`` for each of ``--sizes``: PF-WILLOW PCK through the runtime (all pairs).
Prints one JSON object. Export runs read the checkpoint only; everything is written under --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from simplematch.checkpoint import load_checkpoint
from simplematch.data import load_records
from simplematch.evaluation.torch_predictor import evaluate_model
from simplematch.export import export_checkpoint
from simplematch.export.parity import match_graph_eval


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", type=Path, required=True)
    ap.add_argument("--data-root", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--methods", default="minmax,percentile")
    ap.add_argument("--skip-graph", action="store_true")
    ap.add_argument("--sizes", default="", help="e.g. 96,128,160,192 (empty: skip)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {}
    records = load_records("pfwillow", args.data_root, "test")
    if not args.skip_graph:
        t0 = time.time()
        res = export_checkpoint(args.ckpt, out=args.out / "model.match.onnx", with_matching=True,
                                check_data=args.data_root, force=True)  # fmt: skip
        model, cfg = load_checkpoint(args.ckpt)
        ref = evaluate_model(model, cfg, records, dataset="pfwillow", split="test")
        got = match_graph_eval(res["path"], records, threshold="kps", batch_size=8)
        report["one_graph"] = {
            "export_parity": res["parity"], "pairs": got["pairs"], "points": got["points"],
            "pck_graph": got["pck"], "pck_torch": ref["pck"],
            "graph_vs_numpy_max_px": got["graph_vs_numpy_max_px"],
            "graph_vs_numpy_within_1e-3px": got["graph_vs_numpy_within_1e-3px"],
            "seconds": time.time() - t0,
        }  # fmt: skip
    from simplematch.evaluation.runtime_predictor import evaluate_runtime

    for size in [int(v) for v in args.sizes.split(",") if v]:
        out = args.out / f"model.s{size}.onnx"
        res = export_checkpoint(args.ckpt, out=out, img_size=size, force=True)
        ev = evaluate_runtime(out, records, dataset="pfwillow")
        report[f"size_{size}"] = {
            "pck": ev["pck"],
            "pairs": ev["pairs"],
            "max_abs": res["parity"]["max_abs_feature_diff"],
        }
    for method in [m for m in args.methods.split(",") if m]:
        out = args.out / f"model.int8.{method}.onnx"
        res = export_checkpoint(args.ckpt, out=out, int8=True, calib_data=args.data_root,
                                check_data=args.data_root, calib_method=method, int8_min_agreement=0.0,
                                force=True)  # fmt: skip
        report[f"int8_{method}"] = {**res["parity"], "size_mib": res["size_mib"], "seconds": res["seconds"]}
    print(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
