"""The executor protocol and the inference measurement every runtime shares.

An executor is one way of running a measurement. The parent process asks :meth:`Executor.available`
(cheap probes only: it must not import a runtime the measurement does not need); the fresh worker process
calls :meth:`Executor.run` with the spec the parent wrote. Inference executors differ only in how they
build a :class:`Session`; warm-up, the timed loop, the matching share and the memory readout are here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from simplematch.bench.options import NUM_KPS


class Executor(Protocol):
    name: str  # written into the worker spec, so the worker process runs the same executor

    def available(self, device: str) -> str | None:
        """Why this executor cannot run on ``device`` here (listed under ``skipped``); None when it can."""

    def run(self, spec: dict[str, Any]) -> dict[str, Any]:
        """One measurement, inside the worker process."""


@dataclass(frozen=True)
class Session:
    """A loaded model as the shared measurement sees it."""

    encode: Callable[[Any], Any]  # (B, 3, S, S) float32 images -> fine feature maps (B, C, h, w)
    match: Callable[[Any, Any, Any], Any]  # one pair's feature maps and (1, N, 2) keypoints -> matches
    img_size: int
    provider: str
    peak_mem_mib: Callable[[], float]  # read once, after every timed call
    sync: Callable[[], None] = lambda: None  # waits for queued GPU work, so timings cover it


def _warm_up(fn: Callable[[], Any], n: int, sync: Callable[[], None]) -> None:
    for _ in range(n):
        fn()
    sync()


def _time_calls(fn: Callable[[], Any], n: int, sync: Callable[[], None]) -> tuple[list[float], Any]:
    """Seconds of each of ``n`` synchronised calls, and the last call's output."""
    times, out = [], None
    for _ in range(n):
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times, out


def measure_inference(session: Session, spec: dict[str, Any]) -> dict[str, Any]:
    """Throughput and latency of ``encode`` at the spec's batch, then the matching share of one pair."""
    import numpy as np

    batch, iters, size = int(spec["batch"]), int(spec["iters"]), session.img_size
    rng = np.random.default_rng(0)
    images = rng.random((batch, 3, size, size), dtype=np.float32)
    _warm_up(lambda: session.encode(images), int(spec["warmup"]), session.sync)
    lat, feats = _time_calls(lambda: session.encode(images), iters, session.sync)
    p50, p95 = (float(v) for v in np.percentile(lat, [50, 95]))

    # Matching share of one pair: 30 keypoints on the real fine map of this model (e.g. 63 x 63 at 252).
    src, trg = feats[:1], feats[-1:]
    kps = (rng.random((1, spec.get("num_kps", NUM_KPS), 2)) * size).astype(np.float32)
    _warm_up(lambda: session.match(src, trg, kps), 3, session.sync)
    match_times, _ = _time_calls(lambda: session.match(src, trg, kps), max(iters, 20), session.sync)
    match_s = float(np.median(match_times))
    return {
        "images_per_s": batch * len(lat) / sum(lat),
        "latency_ms_p50": p50 * 1e3,
        "latency_ms_p95": p95 * 1e3,
        "peak_mem_mib": session.peak_mem_mib(),
        "match_share": match_s / (2 * p50 / batch + match_s),
        "match_ms": match_s * 1e3,
        "fine_map": list(feats.shape[-2:]),
        "provider": session.provider,
    }
