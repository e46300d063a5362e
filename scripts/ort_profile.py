"""Per-op-type time of an exported model under onnxruntime's profiler (CPU): where the time goes.

    python scripts/ort_profile.py runs/r15/model.int8.minmax.onnx [--batch 1] [--iters 10] [--threads 2]

A thin command-line caller of :func:`simplematch.bench.profile_onnx` (warm-up run excluded): prints each op
type's time per run and its share of all node time, largest first.
"""

from __future__ import annotations

import argparse

from simplematch.bench import profile_onnx


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    rows = profile_onnx(args.model, batch=args.batch, iters=args.iters, threads=args.threads)
    total = sum(ms for _, ms, _ in rows) / max(sum(share for _, _, share in rows), 1e-12)
    print(f"{args.model}: {total:.1f} ms node time per run (batch {args.batch}, {args.iters} runs)")
    for op, ms, share in rows:
        print(f"  {op:<24} {ms:8.2f} ms/run {share * 100:5.1f} %")


if __name__ == "__main__":
    main()
