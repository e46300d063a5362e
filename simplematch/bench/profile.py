"""onnxruntime per-op-type profile of one exported model (the op tables of BENCHMARKS.md)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path


def profile_onnx(
    path: str | Path, batch: int = 1, iters: int = 3, threads: int | None = None, top: int = 12
) -> list[tuple[str, float, float]]:
    """onnxruntime per-op-type profile (``SessionOptions.enable_profiling``) of one exported model.

    Returns ``[(op_type, ms per run, share of all node time)]``, largest first: where a runtime's time goes
    when a throughput target is missed (used for BENCHMARKS.md).
    """
    import numpy as np
    import onnxruntime as ort

    from simplematch.metadata import ModelMeta

    with tempfile.TemporaryDirectory(prefix="smatch-prof-") as tmp:
        opts = ort.SessionOptions()
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "ort")
        if threads:
            opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        meta = ModelMeta.from_props(dict(sess.get_modelmeta().custom_metadata_map), source=str(path))
        x = np.random.default_rng(0).random((batch, 3, meta.img_size, meta.img_size), dtype=np.float32)
        sess.run(None, {meta.input_name: x})  # warm-up, excluded below by skipping the first run's events
        for _ in range(iters):
            sess.run(None, {meta.input_name: x})
        events = json.loads(Path(sess.end_profiling()).read_text())
    per_op: dict[str, float] = {}
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    t_min = runs[1]["ts"] if len(runs) > 1 else 0  # drop the warm-up run
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= t_min:
            op = e.get("args", {}).get("op_name", "?")
            per_op[op] = per_op.get(op, 0.0) + e["dur"] / 1e3
    total = sum(per_op.values()) or 1.0
    ranked = sorted(per_op.items(), key=lambda kv: -kv[1])[:top]
    return [(op, ms / iters, ms / total) for op, ms in ranked]
