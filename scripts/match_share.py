"""The match's share of a pair on this machine, in one process: the encoder of an exported model (batch 1)
against the whole match of the runtime (30 keypoints on its real fine map: ``match_keypoints`` +
``confidence_cues`` + a calibration), as ``smatch bench`` times them but in one process, so the two
see the same load. Medians and minima (the minimum is the least disturbed run on a shared machine).

    python scripts/match_share.py MODEL.onnx [THREADS] [ROUNDS]
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from simplematch import calibration
from simplematch.confidence import confidence_cues
from simplematch.runtime.backends import OnnxBackend
from simplematch.runtime.matching import match_keypoints


def main(model: str, threads: int = 2, rounds: int = 6) -> dict:
    backend = OnnxBackend(model, device="cpu", threads=threads)
    meta = backend.meta
    rng = np.random.default_rng(0)
    size = meta.img_size
    feats = backend.encode(rng.random((2, 3, size, size), dtype=np.float32))
    src, trg = feats[:1], feats[1:]
    one = rng.random((1, 3, size, size), dtype=np.float32)
    kps = (rng.random((1, 30, 2)) * size).astype(np.float32)
    cal = calibration.from_config(meta.config) or calibration.Calibration(coef=(0.1,) * 5, intercept=0.0)

    def whole() -> None:
        m = match_keypoints(src, trg, kps, size, meta.window, meta.beta, meta.coord)
        raw = {k: v for k, v in m._asdict().items() if k != "pred"}
        calibration.with_calibrated(confidence_cues(m, size), raw, size, cal)

    def block(f, n: int) -> list[float]:
        out = []
        for _ in range(n):
            t = time.perf_counter()
            f()
            out.append(time.perf_counter() - t)
        return out

    enc, match = [], []
    backend.encode(one), whole()
    for _ in range(rounds):
        enc += block(lambda: backend.encode(one), 3)
        time.sleep(0.3)  # onnxruntime's worker threads spin after a run; let them settle, as bench's loops do
        match += block(whole, 10)
    res = {"model": model, "map": list(src.shape), "window": meta.window, "ort_threads": threads}
    res["blas_threads"] = os.environ.get("OMP_NUM_THREADS", "default")
    res["loadavg"] = os.getloadavg()
    for stat in ("median", "min"):
        e, m = float(getattr(np, stat)(enc)) * 1e3, float(getattr(np, stat)(match)) * 1e3
        res[stat] = {"encode_ms": e, "match_ms": m, "match_share": m / (2 * e + m)}
    return res


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], *(int(a) for a in sys.argv[2:4])), indent=1))
