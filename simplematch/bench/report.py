"""What ``smatch bench`` shows and writes: the result document (``--json``), its rows, the progress lines
and the rich tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from simplematch.bench.options import PAPER_TABLE11_MB, RESULT_KEYS, TRAIN_KEYS, TRAIN_MODE_LABELS
from simplematch.errors import SimpleMatchError


def result_row(runtime: str, batch: int, med: dict[str, Any]) -> dict[str, Any]:
    """One inference row: exactly :data:`RESULT_KEYS`, in order."""
    return {"runtime": runtime, "batch": batch, **{k: med[k] for k in RESULT_KEYS[2:]}}


def train_row(mode: str, batch: int, med: dict[str, Any]) -> dict[str, Any]:
    return {"mode": mode, **{k: med[k] for k in TRAIN_KEYS}, "batch": batch}


def cell_line(runtime: str, batch: int, r: int, repeats: int, res: dict[str, Any]) -> str:
    return (
        f"{runtime:>12} batch {batch} run {r + 1}/{repeats}: {res['images_per_s']:.2f} img/s, "
        f"p50 {res['latency_ms_p50']:.1f} ms, peak {res['peak_mem_mib']:.0f} MiB, "
        f"match {res['match_share'] * 100:.2f}%"
    )


def train_line(mode: str, batch: int, r: int, repeats: int, res: dict[str, Any]) -> str:
    return (
        f"train-memory {mode:>13} batch {batch} run {r + 1}/{repeats}: "
        f"peak {res['peak_mem_mib']:.0f} MiB, delta {res['delta_mib']:.0f} MiB"
    )


def bench_document(
    device: str,
    versions: dict[str, Any],
    model_sha: str,
    results: list[dict[str, Any]],
    skipped: list[dict[str, str]],
    train_rows: list[dict[str, Any]] | None,
) -> dict[str, Any]:
    """The ``--json`` document (``train_rows`` None: no ``train_memory`` key); refuses an empty one."""
    if not results and not train_rows:
        reasons = "; ".join(f"{s['runtime']}: {s['reason']}" for s in skipped) or "nothing ran"
        raise SimpleMatchError(f"no benchmark could run ({reasons})", "choose a runtime this machine has")
    doc: dict[str, Any] = {
        "device": device,
        "versions": versions,
        "model_sha256": model_sha,
        "results": results,
        "skipped": skipped,
    }
    if train_rows is not None:
        doc["train_memory"] = train_rows
    return doc


def write_json(path: Path, doc: dict[str, Any]) -> None:
    from simplematch.files import atomic_write_text
    from simplematch.provenance import stamped

    atomic_write_text(path, json.dumps(stamped(doc, "bench"), indent=2) + "\n")


def print_bench(result: dict[str, Any], console: Any) -> None:
    """Rich tables of a :func:`run_bench` result."""
    if result["results"]:  # a --train-memory-only run has no inference rows
        console.print(_results_table(result))
    for s in result["skipped"]:
        console.print(f"skipped {s['runtime']}: {s['reason']}")
    rows = result.get("train_memory") or []
    if rows:
        console.print(_train_table(rows))
    console.print(f"model sha256 {result['model_sha256'][:16]}...")


def _results_table(result: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title=f"smatch bench on {result['device']}")
    for col in ("runtime", "batch", "images/s", "p50 ms", "p95 ms", "peak MiB", "match share"):
        table.add_column(col, justify="left" if col == "runtime" else "right")
    for r in result["results"]:
        table.add_row(
            r["runtime"],
            str(r["batch"]),
            f"{r['images_per_s']:.2f}",
            f"{r['latency_ms_p50']:.1f}",
            f"{r['latency_ms_p95']:.1f}",
            f"{r['peak_mem_mib']:.0f}",
            f"{r['match_share'] * 100:.2f}%",
        )
    return table


def _train_table(rows: list[dict[str, Any]]) -> Any:
    """Paper Table 11's rows: each mode's step memory over the baseline's, next to the paper's ratio."""
    from rich.table import Table

    dense = next((r for r in rows if r["mode"] == "dense"), None)
    tm = Table(title=f"training memory (paper Table 11), one step at batch {rows[0].get('batch')}")
    for col in ("row", "mode", "peak MiB", "delta MiB", "delta / baseline", "paper ratio"):
        tm.add_column(col, justify="left" if col in ("row", "mode") else "right")
    for r in rows:
        ratio = r["delta_mib"] / dense["delta_mib"] if dense and dense["delta_mib"] > 0 else float("nan")
        paper = PAPER_TABLE11_MB.get(r["mode"], float("nan")) / PAPER_TABLE11_MB["dense"]
        tm.add_row(
            TRAIN_MODE_LABELS.get(r["mode"], r["mode"]), r["mode"], f"{r['peak_mem_mib']:.0f}",
            f"{r['delta_mib']:.0f}", f"{ratio:.2f}", f"{paper:.2f}",
        )  # fmt: skip
    return tm
