"""Per-op-type time of an exported model under onnxruntime's profiler (CPU): where the time goes.

    python scripts/ort_profile.py runs/r15/model.int8.minmax.onnx [--batch 1] [--iters 10] [--threads 2]

Prints the share of node time per op type (top 12, all runs including the one warm-up) and the mean run
time (warm-up excluded), from onnxruntime's own ``enable_profiling`` trace.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile

import numpy as np
import onnxruntime as ort


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(tmp, "prof")
        opts.intra_op_num_threads = args.threads
        sess = ort.InferenceSession(args.model, opts, providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        size = inp.shape[-1]
        x = np.random.default_rng(0).random((args.batch, 3, size, size), dtype=np.float32)
        for _ in range(args.iters + 1):
            sess.run(None, {inp.name: x})
        trace = json.load(open(sess.end_profiling()))
    nodes = [e for e in trace if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    runs = [e["dur"] for e in trace if e.get("name") == "model_run"][1:]
    by_op: collections.Counter[str] = collections.Counter()
    for e in nodes:
        by_op[e["args"].get("op_name", "?")] += e["dur"]
    total = sum(by_op.values())
    print(f"{args.model}: mean run {np.mean(runs) / 1e3:.1f} ms over {len(runs)} runs (batch {args.batch})")
    for op, dur in by_op.most_common(12):
        print(f"  {op:<24} {dur / total * 100:5.1f} %")


if __name__ == "__main__":
    main()
