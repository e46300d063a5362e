"""Every result JSON smatch writes says which version wrote it, when, and in what units.

:func:`stamped` puts three keys first in the document: ``smatch_version``, ``written_at`` (UTC, ISO 8601)
and ``units`` (field -> unit, for every number whose unit a reader could not guess; nested fields are
dotted paths). The units of each document live in :data:`UNITS`, one table for the whole tool.

Not stamped: files smatch reads back as data with a fixed schema -- ``config.json`` (its keys are the
config's, checked strictly), the TensorRT engine sidecars (the model metadata, which records its own
version) -- and JSON Lines files (each line is one record; a header line would break line readers).

Torch-free (rules layer): the runtime writes ``smatch infer --out`` with it.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

STAMP_KEYS = ("smatch_version", "written_at", "units")

_PCK = "percent of valid keypoints (0-100), keyed by alpha"
_PX = "pixels (x right, y down) in that image; inside it 0 <= x <= width - 1, 0 <= y <= height - 1"
_MIB = "MiB (2^20 bytes)"
DocumentKind = Literal["eval", "infer", "bench", "demo", "train_best", "train_last", "convert"]
# Dotted paths name nested fields; "*.x" means the field x of every entry at that level.
UNITS: dict[str, dict[str, str]] = {
    "eval": {
        "pck": _PCK + ": the mean over pairs of each pair's share (the paper's number)",
        "pck_per_point": _PCK + ": pooled over all keypoints",
        "per_category.*.pck": _PCK,
        "alpha keys": "fraction of the PCK threshold: correct when error < alpha x threshold",
        "confidence.auroc": "area under the ROC curve, 0-1 (0.5 = chance)",
        "confidence.precision_coverage.*.coverage": "fraction of keypoints kept, 0-1",
        "confidence.precision_coverage.*.precision": "percent correct among the kept keypoints (0-100)",
        "confidence.rejection.precision": "percent correct among the kept keypoints (0-100), keyed by alpha",
        "confidence.rejection.kept_fraction": "fraction of keypoints kept, 0-1",
    },
    "infer": {
        "keypoints.*.source": _PX + " (source image)",
        "keypoints.*.target": _PX + " (target image); null when rejected",
        "keypoints.*.score": "raw peak cosine similarity, -1..1 (the same number as raw_cues.peak_cos)",
        "keypoints.*.cues": "every cue rescaled to 0-1, higher = more confident"
        "; cues.peak_cos = (score + 1) / 2",
        "keypoints.*.raw_cues": "every cue before rescaling (peak_cos: cosine, -1..1)",
        "keypoints.*.confidence": "the --confidence cue, 0-1",
        "keypoints.*.error_px": "pixels in the target image",
        "keypoints.*.error_rel": "error_px / max(target width, height)",
        "timing_ms": "milliseconds",
    },
    "bench": {
        "results.*.images_per_s": "images per second",
        "results.*.latency_ms_p50": "milliseconds per batch (median)",
        "results.*.latency_ms_p95": "milliseconds per batch (95th percentile)",
        "results.*.peak_mem_mib": _MIB,
        "results.*.match_share": "fraction of the latency spent matching, 0-1",
        "train_memory.*": _MIB,
    },
    "demo": {
        "total_seconds": "seconds",
        "train.seconds": "seconds",
        "train.peak_rss_mib": _MIB,
        "*.pck": _PCK,
        "*.pck_per_point": _PCK + ": pooled over all keypoints",
        "export_*.seconds": "seconds",
        "export_*.size_mib": _MIB,
        "infer_example_error_px": "pixels in the target image",
        "bench": "as in `smatch bench --json`",
    },
    "train_best": {"pck": _PCK + " on the validation pairs", "step": "optimisation steps"},
    "train_last": {"step": "optimisation steps"},
    "convert": {"keys_in_file, consumed, ignored": "tensor counts"},
}


def stamped(doc: dict[str, Any], kind: DocumentKind, *, now: datetime | None = None) -> dict[str, Any]:
    """``doc`` with the stamp keys first (an earlier stamp in ``doc`` is replaced, never duplicated)."""
    from simplematch import __version__

    when = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    head = {
        "smatch_version": __version__,
        "written_at": when.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "units": dict(UNITS[kind]),
    }
    return {**head, **{k: v for k, v in doc.items() if k not in STAMP_KEYS}}
