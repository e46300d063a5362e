"""``smatch infer``: match a keypoint file from a source to a target image with an exported model.

Everything is validated before anything is written: images readable, keypoint JSON well formed, non-empty
and inside the source image, model loadable with consistent metadata, output paths usable. Only then are
the match computed, the picture rendered in memory and the files written, each atomically. A run that
fails therefore leaves no output file behind.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from simplematch import validate
from simplematch.errors import SimpleMatchError
from simplematch.image import load_image
from simplematch.io import atomic_write_bytes, atomic_write_text
from simplematch.runtime.matcher import Matcher
from simplematch.runtime.viz import png_bytes, render_matches

DEFAULT_MODEL = Path("runs") / "demo" / "model.onnx"


def find_default_model(cwd: str | Path | None = None) -> Path:
    """``runs/demo/model.onnx`` under ``cwd`` (default: the current folder), else a one-line error."""
    path = Path(cwd or Path.cwd()) / DEFAULT_MODEL
    if not path.is_file():
        raise SimpleMatchError(
            f"no --model given and no default model at {DEFAULT_MODEL}",
            "pass --model PATH/model.onnx, or run `make demo` to train and export the demo model",
        )
    return path


def read_keypoints(kps_path: str | Path, image_hw: tuple[int, int]) -> Any:
    """Read and validate a keypoint JSON file against the source image -> (N, 2) float array."""
    from simplematch.keypoints import parse_keypoints_json

    path = Path(kps_path)
    if not path.is_file():
        raise SimpleMatchError(f"keypoint file not found: {path}", "pass a JSON file of [x, y] pixel pairs")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise SimpleMatchError(f"cannot read keypoint file {path} ({err})", "pass a UTF-8 JSON file") from err
    h, w = image_hw
    return parse_keypoints_json(text, image_size=(w, h))


def run_infer(
    src: str | Path,
    trg: str | Path,
    kps_path: str | Path,
    model: str | Path | None = None,
    out: str | Path | None = None,
    viz: str | Path | None = None,
    device: str = "cpu",
    allow_fallback: bool = False,
    force: bool = False,
) -> dict[str, Any]:
    """Match the keypoints of ``kps_path`` (source-image pixels) into the target image.

    Returns (and writes to ``out`` when given) ``{"source", "target", "model", "provider", "keypoints":
    [{"source": [x, y], "target": [x, y], "score": s}], "timing_ms": {"preprocess", "encode", "match"}}``;
    ``viz`` gets a PNG of the matches. Raises :class:`SimpleMatchError` -- with no file written -- on any
    invalid input.
    """
    # 1. Validate every input before doing any work or writing anything.
    model_path = Path(model) if model is not None else find_default_model()
    inputs = [src, trg, kps_path, model_path]
    out_path = validate.output_file(out, "--out", suffixes=(".json",), inputs=inputs, force=force)
    viz_path = validate.output_file(viz, "--viz", suffixes=(".png",), inputs=[*inputs, out], force=force)
    src_img = load_image(src)
    trg_img = load_image(trg)
    kps = read_keypoints(kps_path, src_img.shape[:2])
    matcher = Matcher(model_path, device=device, allow_fallback=allow_fallback)

    # 2. Compute.
    result = matcher.match_images(src_img, trg_img, kps)
    report = {
        "source": str(src),
        "target": str(trg),
        "model": str(model_path),
        "provider": matcher.provider,
        "keypoints": [
            {"source": [float(s[0]), float(s[1])], "target": [float(t[0]), float(t[1])], "score": float(c)}
            for s, t, c in zip(result.source_kps, result.target_kps, result.score, strict=True)
        ],
        "timing_ms": {k: round(v, 3) for k, v in result.timing_ms.items()},
    }
    picture = None
    if viz_path is not None:
        picture = png_bytes(
            render_matches(src_img, trg_img, result.source_kps, result.target_kps, result.score)
        )

    # 3. Write, each file atomically.
    if out_path is not None:
        atomic_write_text(out_path, json.dumps(report, indent=2) + "\n")
    if viz_path is not None and picture is not None:
        atomic_write_bytes(viz_path, picture)
    return report
