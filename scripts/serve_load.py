"""Bounded load test of ``smatch serve`` on loopback: throughput, latency, errors and server memory.

    python scripts/serve_load.py MODEL.onnx --requests 500 --clients 16 --json runs/serve_load.json

It starts ``smatch serve MODEL`` on a free 127.0.0.1 port (nothing else is ever contacted), warms it up,
then sends ``--requests`` requests from ``--clients`` threads, each with its own keep-alive connection, and
stops by itself after the count or ``--time-limit`` seconds. Workloads (``--workload``):

* ``match``  -- ``POST /v1/match`` with the example pair and its 12 keypoints (the encode cache hits after
  the first request, as for a client that sends the same pair again);
* ``cached`` -- ``POST /v1/match/cached`` by image id (what the page sends on every click);
* ``encode`` -- ``POST /v1/images`` with a new image every request (always a cache miss: every request
  runs the model; the workload for ``--max-batch``).

It also measures the encode-cache speed-up for repeated clicks (``repeat``): the median latency of
``/v1/match`` with images the server has not seen (both encoded) over that of ``/v1/match/cached`` (both
cached), one client, sequential. Server memory is the resident set of the server process and its
children (psutil) after warm-up and after the load. Prints and writes one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from serve_helpers import free_port  # noqa: E402

from simplematch.serve.client import Client  # noqa: E402

EXAMPLES = ROOT / "examples"
KPS = json.loads((EXAMPLES / "kps.json").read_text())["keypoints"]


def rss_mib(pid: int) -> float:
    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20


def fresh_image(i: int) -> tuple[str, bytes]:
    """The example source with one pixel changed: a new content hash, so the server encodes it."""
    img = np.asarray(Image.open(EXAMPLES / "src.png").convert("RGB")).copy()
    img[i % img.shape[0], (i // img.shape[0]) % img.shape[1]] ^= 0xFF
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG", compress_level=1)
    return f"img{i}.png", buf.getvalue()


def percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def run_load(url: str, workload: str, requests: int, clients: int, time_limit: float, ids, images) -> dict:
    lock = threading.Lock()
    counter = {"next": 0}
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + time_limit

    def worker() -> None:
        c = Client(url, timeout=60)
        while time.monotonic() < deadline:
            with lock:
                i = counter["next"]
                if i >= requests:
                    break
                counter["next"] += 1
            t0 = time.perf_counter()
            try:
                if workload == "match":
                    c.match(EXAMPLES / "src.png", EXAMPLES / "tgt.png", KPS)
                elif workload == "cached":
                    c.match_cached(ids[0], ids[1], KPS)
                else:
                    c.upload(images[i])
                dt = time.perf_counter() - t0
                with lock:
                    latencies.append(dt * 1e3)
            except Exception as err:  # counted, never fatal: the test reports errors
                with lock:
                    errors.append(f"{type(err).__name__}: {err}"[:200])
        c.close()

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(time_limit + 120)
    wall = time.perf_counter() - t0
    done = len(latencies) + len(errors)
    return {
        "workload": workload, "clients": clients, "requests_sent": done, "ok": len(latencies),
        "errors": len(errors), "first_errors": errors[:5], "wall_s": round(wall, 3),
        "requests_per_s": round(len(latencies) / wall, 2), "p50_ms": round(percentile(latencies, 50), 2),
        "p95_ms": round(percentile(latencies, 95), 2), "p99_ms": round(percentile(latencies, 99), 2),
        "stopped_by_time_limit": time.monotonic() >= deadline,
    }  # fmt: skip


def repeat_speedup(url: str, n: int) -> dict:
    """Median latency of /v1/match with unseen images (both encoded) vs /v1/match/cached (both cached)."""
    c = Client(url)
    tgt = ("tgt.png", (EXAMPLES / "tgt.png").read_bytes())
    ids = c.upload(EXAMPLES / "src.png")["id"], c.upload(EXAMPLES / "tgt.png")["id"]
    cold, warm = [], []
    for i in range(n):
        src = fresh_image(10_000 + i)
        tgt_i = ("t.png", tgt[1] + b"\0" * (i + 1))  # trailing bytes: a new hash, the same pixels
        t0 = time.perf_counter()
        c.match(src, tgt_i, KPS)
        cold.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        c.match_cached(ids[0], ids[1], KPS)
        warm.append((time.perf_counter() - t0) * 1e3)
    c.close()
    cold_ms, warm_ms = statistics.median(cold), statistics.median(warm)
    return {"n": n, "uncached_p50_ms": round(cold_ms, 2), "cached_p50_ms": round(warm_ms, 2),
            "speedup": round(cold_ms / warm_ms, 2)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--workload", choices=("match", "cached", "encode"), action="append")
    ap.add_argument("--time-limit", type=float, default=300.0, help="per workload, seconds")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--cache-mib", type=float, default=256.0)
    ap.add_argument("--repeat", type=int, default=30, help="requests of the cache speed-up measure (0: skip)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "simplematch.cli", "serve", str(args.model), "--host", "127.0.0.1",
           "--port", str(port), "--workers", str(args.workers), "--max-batch", str(args.max_batch),
           "--cache-mib", str(args.cache_mib)]  # fmt: skip
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                Client(url, timeout=2).health()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"server did not start: {server.stderr.read().decode()}") from None
                time.sleep(0.2)
        c = Client(url)
        ids = c.upload(EXAMPLES / "src.png")["id"], c.upload(EXAMPLES / "tgt.png")["id"]
        for _ in range(5):  # warm-up: first runs of the session allocate
            c.match(EXAMPLES / "src.png", EXAMPLES / "tgt.png", KPS)
        info = c.model()
        c.close()
        rss_before = rss_mib(server.pid)
        workloads = args.workload or ["match", "cached"]
        results = []
        for k, w in enumerate(workloads):
            # New images for every encode round (made before its timing starts): each request a miss.
            images = (
                {i: fresh_image(k * args.requests + i) for i in range(args.requests)} if w == "encode" else {}
            )
            results.append(run_load(url, w, args.requests, args.clients, args.time_limit, ids, images))
            results[-1]["rss_after_mib"] = round(rss_mib(server.pid), 1)  # a leak grows round after round
            print(json.dumps(results[-1]), flush=True)
        rss_after = rss_mib(server.pid)
        report = {
            "model": str(args.model), "backbone": info["meta"]["backbone"],
            "img_size": info["meta"]["img_size"],
            "provider": info["provider"], "workers": args.workers, "max_batch": args.max_batch,
            "cpu_count": os.cpu_count(), "loadavg_before": os.getloadavg(), "results": results,
            "repeat": repeat_speedup(url, args.repeat) if args.repeat else None,
            "rss_before_mib": round(rss_before, 1), "rss_after_mib": round(rss_after, 1),
            "cache_after": Client(url).model()["cache"], "encode_after": Client(url).model()["encode"],
            "cache_bound_mib": args.cache_mib, "loadavg_after": os.getloadavg(),
        }  # fmt: skip
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
