"""``smatch infer``: match a keypoint file from a source to a target image with an exported model.

Everything is validated before anything is written: images readable, keypoint JSON well formed, non-empty
and inside the source image, model loadable with consistent metadata, output paths usable. Only then are
the match computed, the picture rendered in memory and the files written, each atomically. A run that
fails therefore leaves no output file behind.

``--pairs FILE`` (:func:`run_infer_pairs`) matches many pairs: each image is encoded once, one JSONL record
per pair is streamed into a temporary file that replaces ``--out`` at the end; a bad pair is reported and
skipped, the others are still written, and the summary says how many failed.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simplematch import outputs, validate
from simplematch.confidence import DEFAULT_CONFIDENCE
from simplematch.errors import SimpleMatchError
from simplematch.files import atomic_path
from simplematch.image import load_image
from simplematch.provenance import stamped
from simplematch.runtime.matcher import Features, Matcher, MatchResult, check_confidence
from simplematch.runtime.viz import png_bytes, render_matches

# The --truth error is also given as a fraction of this PCK threshold: max(w, h) of the target image (the
# "img" convention), the only one a bare keypoint file defines (the kps extent of one point would be 0).
TRUTH_THRESHOLD = "img"

DEFAULT_MODEL = Path("runs") / "demo" / "model.onnx"


def find_default_model(cwd: str | Path | None = None) -> Path:
    """``runs/demo/model.onnx`` under ``cwd`` (default: the current folder), else a one-line error."""
    path = Path(cwd or Path.cwd()) / DEFAULT_MODEL
    if not path.is_file():
        raise SimpleMatchError(
            f"no --model given and no default model at {DEFAULT_MODEL}",
            "pass --model PATH/model.onnx (written by `smatch export` or `smatch demo`)",
        )
    return path


def decode_keypoints(obj: Any, image_hw: tuple[int, int] | None, what: str) -> np.ndarray:
    """Keypoint JSON (see :func:`simplematch.keypoints.parse_keypoints_json`), ``{"target": [[x, y], ...]}``
    (``examples/truth.json``), or an ``smatch infer --out`` report, whose *targets* become the keypoints (so
    results chain: the next run's sources)."""
    from simplematch.keypoints import parse_keypoints_json

    if isinstance(obj, dict) and set(obj) == {"target"}:
        obj = obj["target"]  # the examples/truth.json form: {"target": [[x, y], ...]}
    if (
        isinstance(obj, dict)
        and isinstance(obj.get("keypoints"), list)
        and "target" in obj
        and "source" in obj
    ):
        rows = obj["keypoints"]
        if not all(isinstance(r, dict) and "target" in r for r in rows):
            raise SimpleMatchError(f"{what} looks like an infer report but has rows without 'target'", None)
        missing = [i for i, r in enumerate(rows) if r["target"] is None]
        if missing:
            raise SimpleMatchError(
                f"{what}: {len(missing)} rejected matches (target null, first #{missing[0]}) cannot chain",
                "rerun the first step without --min-confidence, or drop those points",
            )
        obj = [r["target"] for r in rows]
    # image_hw None: no bounds check (a true correspondence may fall outside the target image).
    return parse_keypoints_json(obj, image_size=None if image_hw is None else (image_hw[1], image_hw[0]))


def read_keypoints(
    kps_path: str | Path, image_hw: tuple[int, int] | None, what: str = "keypoint file"
) -> Any:
    """Read and validate a keypoint JSON file (or an infer ``--out`` report) -> (N, 2) float array."""
    path = Path(kps_path)
    if not path.is_file():
        raise SimpleMatchError(f"{what} not found: {path}", "pass a JSON file of [x, y] pixel pairs")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise SimpleMatchError(f"cannot read {what} {path} ({err})", "pass a UTF-8 JSON file") from err
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        obj = text  # let the parser produce its one-line "not valid JSON" error
    return decode_keypoints(obj, image_hw, what)


def _xy(p: np.ndarray) -> list[float] | None:
    return None if not np.isfinite(p).all() else [float(p[0]), float(p[1])]


def keypoint_rows(
    result: MatchResult, truth: np.ndarray | None = None, trg_hw: tuple[int, int] | None = None
) -> list[dict[str, Any]]:
    """One JSON row per keypoint: ``source``, ``target`` (null when rejected), ``score`` (peak cosine),
    ``confidence``, ``rejected``, ``cues`` (every cue in [0, 1]) and ``raw_cues``; with ``truth`` also
    ``error_px`` and ``error_rel`` (error / max(w, h) of the target image: correct at alpha iff < alpha)."""
    rows = []
    thr = float(max(trg_hw)) if trg_hw is not None else None
    for i in range(len(result.source_kps)):
        row: dict[str, Any] = {
            "source": _xy(result.source_kps[i]),
            "target": _xy(result.target_kps[i]),
            "score": float(result.score[i]),
            "confidence": float(result.confidence[i]),
            "rejected": bool(result.rejected[i]),
            "cues": {k: float(v[i]) for k, v in result.cues.items()},
            "raw_cues": {k: float(v[i]) for k, v in result.raw.items()},
        }
        if truth is not None and thr is not None:
            # The error of the prediction even when rejected: rejection hides it, the error stays measurable.
            err = float(np.linalg.norm(result.target_kps_all[i] - truth[i]))
            row.update(error_px=err, error_rel=err / thr)
        rows.append(row)
    return rows


def build_report(
    result: MatchResult,
    *,
    source: str,
    target: str,
    model: str,
    provider: str,
    confidence: str,
    min_confidence: float | None,
    trg_hw: tuple[int, int],
    truth: np.ndarray | None = None,
) -> dict[str, Any]:
    """The JSON of ``smatch infer --out`` (and of ``smatch serve``'s match endpoints): one builder for both,
    so the service answers exactly what the command writes. ``confidence`` is the cue the result holds
    (``calibrated`` asked of an uncalibrated model is its fallback), ``calibration`` which one made it;
    with the version / time / units stamp."""
    doc = {
        "source": source,
        "target": target,
        "model": model,
        "provider": provider,
        "confidence": result.confidence_kind or confidence,
        "calibration": result.calibration,
        "min_confidence": min_confidence,
        "keypoints": keypoint_rows(result, truth, trg_hw),
        "timing_ms": {k: round(v, 3) for k, v in result.timing_ms.items()},
    }
    return stamped(doc, "infer")


@dataclass(frozen=True)
class _Inputs:
    """Everything one ``smatch infer`` run reads, validated, before any work or write."""

    model: Path
    out: Path | None
    viz: Path | None
    src_img: np.ndarray
    trg_img: np.ndarray
    kps: np.ndarray
    truth: np.ndarray | None


def _read_inputs(src, trg, kps_path, model, out, viz, truth, force: bool) -> _Inputs:
    model_path = Path(model) if model is not None else find_default_model()
    inputs = [src, trg, kps_path, model_path]
    out_path = validate.output_file(out, "--out", suffixes=(".json",), inputs=inputs, force=force)
    viz_path = validate.output_file(viz, "--viz", suffixes=(".png",), inputs=[*inputs, out], force=force)
    src_img = load_image(src)  # decoded once: its size bounds the keypoints, then the matcher encodes it
    trg_img = load_image(trg)
    kps = read_keypoints(kps_path, src_img.shape[:2])
    truth_kps = None
    if truth is not None:
        truth_kps = read_keypoints(truth, None, "--truth file")
        if len(truth_kps) != len(kps):
            raise SimpleMatchError(
                f"--truth has {len(truth_kps)} points for {len(kps)} keypoints",
                "give one target per keypoint",
            )
    return _Inputs(model_path, out_path, viz_path, src_img, trg_img, kps, truth_kps)


def run_infer(
    src: str | Path,
    trg: str | Path,
    kps_path: str | Path,
    model: str | Path | None = None,
    out: str | Path | None = None,
    viz: str | Path | None = None,
    device: str = "cpu",
    allow_fallback: bool = False,
    *,
    confidence: str = DEFAULT_CONFIDENCE,
    min_confidence: float | None = None,
    truth: str | Path | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Match the keypoints of ``kps_path`` (source-image pixels) into the target image.

    Returns (and writes to ``out`` when given) ``{"source", "target", "model", "provider", "confidence",
    "min_confidence", "keypoints": [rows of :func:`keypoint_rows`], "timing_ms": {"preprocess", "encode",
    "match"}}`` (plus ``truth`` when given); ``viz`` gets a PNG of the matches. Raises
    :class:`SimpleMatchError` -- with no file written -- on any invalid input.
    """
    # 1. Validate every input before doing any work or writing anything.
    check_confidence(confidence, min_confidence)
    ins = _read_inputs(src, trg, kps_path, model, out, viz, truth, force)
    matcher = Matcher(ins.model, device=device, allow_fallback=allow_fallback)

    # 2. Compute (the picture in memory too, so a failed render writes nothing).
    result = matcher.match_images(
        ins.src_img, ins.trg_img, ins.kps, confidence=confidence, min_confidence=min_confidence
    )
    report = build_report(
        result, source=str(src), target=str(trg), model=str(ins.model), provider=matcher.provider,
        confidence=confidence, min_confidence=min_confidence, truth=ins.truth, trg_hw=ins.trg_img.shape[:2],
    )  # fmt: skip
    if truth is not None:
        report["truth"] = {
            "file": str(truth),
            "threshold": TRUTH_THRESHOLD,
            "threshold_px": max(ins.trg_img.shape[:2]),
        }
    picture = None
    if ins.viz is not None:
        picture = png_bytes(
            render_matches(
                ins.src_img, ins.trg_img, result.source_kps, result.target_kps_all,
                result.confidence, rejected=result.rejected,
            )
        )  # fmt: skip

    # 3. Write: both files or neither (a full disk at the picture removes the JSON written before it).
    with outputs.transaction() as tx:
        if ins.out is not None:
            tx.write_text(ins.out, json.dumps(report, indent=2) + "\n")
        if ins.viz is not None and picture is not None:
            tx.write_bytes(ins.viz, picture)
    return report


# ------------------------------------------------------------------------------------------------------------
# Many pairs: --pairs FILE
# ------------------------------------------------------------------------------------------------------------
PAIRS_FIX = (
    "CSV with a header src,tgt,kps (kps: a keypoint JSON file) or JSONL lines "
    '{"src": ..., "tgt": ... or [...], "kps": FILE or [[x, y], ...]}; relative paths are relative to the file'
)


def read_pairs(path: str | Path) -> list[dict[str, Any]]:
    """A pairs file -> jobs ``{"line", "src", "tgt", "kps", "truth", "error"}`` (one per target).

    A structurally bad line becomes a job with ``error`` set (reported and skipped later, not fatal); a file
    that cannot be read or has no usable header is a :class:`SimpleMatchError`.
    """
    path = Path(path)
    if not path.is_file():
        raise SimpleMatchError(f"--pairs file not found: {path}", PAIRS_FIX)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise SimpleMatchError(f"cannot read --pairs file {path} ({err})", PAIRS_FIX) from err
    base = path.parent

    def resolve(v: Any) -> Any:
        return str(base / v) if isinstance(v, str) and not Path(v).is_absolute() else v

    jobs: list[dict[str, Any]] = []
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        try:
            header = reader.fieldnames
            items = [(reader.line_num, row) for row in reader]
        except csv.Error as err:  # e.g. a field over the csv module's size limit
            raise SimpleMatchError(f"--pairs {path} is not a valid CSV ({err})", PAIRS_FIX) from err
        if header is None or not {"src", "tgt", "kps"} <= set(header):
            raise SimpleMatchError(f"--pairs {path}: the CSV header must name src, tgt and kps", PAIRS_FIX)
    elif path.suffix.lower() == ".jsonl":
        items = []
        for no, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                items.append((no, json.loads(line)))
            except ValueError:
                items.append((no, {"_error": "not valid JSON"}))
    else:
        raise SimpleMatchError(f"--pairs {path} must end in .csv or .jsonl", PAIRS_FIX)
    for no, row in items:
        if not isinstance(row, dict) or "_error" in row or not all(row.get(k) for k in ("src", "tgt", "kps")):
            err = row.get("_error", "needs src, tgt and kps") if isinstance(row, dict) else "not an object"
            jobs.append({"line": no, "src": None, "tgt": None, "kps": None, "truth": None, "error": err})
            continue
        targets = row["tgt"] if isinstance(row["tgt"], list) else [row["tgt"]]
        for tgt in targets:
            jobs.append(
                {
                    "line": no,
                    "src": resolve(row["src"]),
                    "tgt": resolve(tgt),
                    "kps": resolve(row["kps"]),
                    "truth": resolve(row.get("truth") or None),
                    "error": None,
                }
            )
    if not jobs:
        raise SimpleMatchError(f"--pairs {path} holds no pairs", PAIRS_FIX)
    return jobs


def _pair_keypoints(spec: Any, hw: tuple[int, int] | None, what: str) -> np.ndarray:
    """A keypoint file path or an inline list (JSONL) -> (N, 2)."""
    if isinstance(spec, str):
        return read_keypoints(spec, hw, what)
    return decode_keypoints(spec, hw, what)


class _FeatureCache:
    """Each image encoded once; its features dropped after the last job that uses it (bounded memory)."""

    def __init__(self, matcher: Matcher, jobs: list[dict[str, Any]]) -> None:
        self.matcher = matcher
        self.last_use = {
            str(job[side]): k for k, job in enumerate(jobs) for side in ("src", "tgt") if job[side]
        }
        self.cache: dict[str, tuple[Features, tuple[int, int]]] = {}

    def get(self, path: str) -> tuple[Features, tuple[int, int]]:
        """(features, image (h, w)) of one image."""
        if path not in self.cache:
            img = load_image(path)
            self.cache[path] = (self.matcher.encode([self.matcher.prepare(img)])[0], img.shape[:2])
        return self.cache[path]

    def release(self, job: dict[str, Any], k: int) -> None:
        """Drop the features of ``job``'s images whose last use is job ``k``."""
        for side in ("src", "tgt"):
            if job[side] is not None and self.last_use.get(str(job[side])) == k:
                self.cache.pop(str(job[side]), None)


def _match_job(job: dict[str, Any], k: int, cache: _FeatureCache, confidence: str, min_confidence) -> dict:
    """One pairs-file job -> its JSONL record; a bad job raises :class:`SimpleMatchError`."""
    if job["error"]:
        raise SimpleMatchError(f"line {job['line']}: {job['error']}", PAIRS_FIX)
    (fs, shw), (ft, thw) = cache.get(str(job["src"])), cache.get(str(job["tgt"]))
    kps = _pair_keypoints(job["kps"], shw, f"keypoints of line {job['line']}")
    truth = _pair_keypoints(job["truth"], None, "truth") if job["truth"] is not None else None
    if truth is not None and len(truth) != len(kps):
        raise SimpleMatchError(f"truth has {len(truth)} points for {len(kps)} keypoints", None)
    res = cache.matcher.match(fs, ft, kps, confidence=confidence, min_confidence=min_confidence)
    return {
        "index": k,
        "line": job["line"],
        "source": str(job["src"]),
        "target": str(job["tgt"]),
        "confidence": res.confidence_kind,
        "calibration": res.calibration,
        "min_confidence": min_confidence,
        "keypoints": keypoint_rows(res, truth, thw),
    }


def run_infer_pairs(
    pairs: str | Path,
    out: str | Path,
    model: str | Path | None = None,
    device: str = "cpu",
    allow_fallback: bool = False,
    *,
    confidence: str = DEFAULT_CONFIDENCE,
    min_confidence: float | None = None,
    progress: Callable[[int, int], Any] | None = None,
    on_failure: Callable[[dict[str, Any]], Any] | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Match every pair of a pairs file; one JSONL record per good pair, streamed, in file order.

    Each image is encoded once: its features stay cached until the last pair that uses it (so one source
    against many targets is encoded once, and memory holds only images still needed). A bad pair (missing
    image, bad keypoints, ...) is reported through ``on_failure`` and skipped. The records go to a temporary
    file next to ``out`` that replaces it at the end. Returns the summary ``{"pairs", "written", "failed",
    "failures": [{"line", "src", "tgt", "error"}], "out"}``; ``progress(done, total)`` after each pair.
    """
    check_confidence(confidence, min_confidence)
    model_path = Path(model) if model is not None else find_default_model()
    out_path = validate.output_file(
        out, "--out", suffixes=(".jsonl",), inputs=[pairs, model_path], force=force
    )
    jobs = read_pairs(pairs)
    matcher = Matcher(model_path, device=device, allow_fallback=allow_fallback)
    cache = _FeatureCache(matcher, jobs)
    failures: list[dict[str, Any]] = []
    written = 0
    with atomic_path(out_path) as tmp, open(tmp, "w") as fh:
        for k, job in enumerate(jobs):
            try:
                fh.write(json.dumps(_match_job(job, k, cache, confidence, min_confidence)) + "\n")
                fh.flush()  # streamed: a reader tailing the temporary file sees each pair as it is done
                written += 1
            except SimpleMatchError as err:
                fail = {"line": job["line"], "src": job["src"], "tgt": job["tgt"], "error": err.problem}
                failures.append(fail)
                if on_failure is not None:
                    on_failure(fail)
            cache.release(job, k)
            if progress is not None:
                progress(k + 1, len(jobs))
    return {
        "pairs": len(jobs),
        "written": written,
        "failed": len(failures),
        "failures": failures,
        "out": str(out_path),
        "model": str(model_path),
        "provider": matcher.provider,
    }
