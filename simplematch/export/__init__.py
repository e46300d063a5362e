"""``smatch export``: checkpoint folder -> ONNX (fp32 / fp16) or TensorRT engine, with a parity check."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from simplematch.errors import SimpleMatchError

FORMATS = ("onnx", "trt")


def default_output(ckpt_dir: Path, fmt: str, fp16: bool) -> Path:
    if fmt == "trt":
        return Path(ckpt_dir) / ("model.fp16.engine" if fp16 else "model.engine")
    return Path(ckpt_dir) / ("model.fp16.onnx" if fp16 else "model.onnx")


def export_checkpoint(
    ckpt_dir: Path,
    *,
    fmt: str = "onnx",
    out: Path | None = None,
    fp16: bool = False,
    batch: int | None = None,
    opset: int | None = None,
    check: bool = True,
    check_data: Path | None = None,
) -> dict[str, Any]:
    """Export one checkpoint; returns ``{"path", "precision", "seconds", "size_mib", "parity", ...}``."""
    if fmt not in FORMATS:
        raise SimpleMatchError(f"unknown export format '{fmt}'", "use --format onnx or --format trt")
    ckpt_dir = Path(ckpt_dir)
    if fmt == "trt":
        from simplematch.export.trt_export import import_tensorrt

        import_tensorrt()  # fail fast, before any work, when TensorRT is absent
    if batch is not None and batch < 1:
        raise SimpleMatchError(f"--batch {batch} is invalid", "use a positive batch size or 'dynamic'")
    out = Path(out) if out else default_output(ckpt_dir, fmt, fp16)
    from simplematch.io import ensure_writable_dir

    ensure_writable_dir(out.parent)

    from simplematch.checkpoint import load_checkpoint
    from simplematch.export.onnx_export import DEFAULT_OPSET, checkpoint_sha, export_onnx
    from simplematch.export.parity import images_from_dir

    model, cfg = load_checkpoint(ckpt_dir, device="cpu")
    images = images_from_dir(check_data) if (check and check_data) else None
    kwargs = dict(checkpoint_sha256=checkpoint_sha(ckpt_dir), fp16=fp16, opset=opset or DEFAULT_OPSET, batch=batch)
    if fmt == "onnx":
        res = export_onnx(model, cfg, out, check=check, check_images=images, **kwargs)
        return {"format": "onnx", **res.__dict__}

    from simplematch.export.trt_export import build_engine

    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        res = export_onnx(model, cfg, onnx_path, check=check, check_images=images, **kwargs)
        info = build_engine(onnx_path, out, fp16=fp16, batch=batch)
        parity: dict[str, Any] = {}
        if check:
            from simplematch.export.trt_parity import engine_parity

            parity = engine_parity(out, onnx_path, cfg, images=images, batch=batch, precision=res.precision)
    return {"format": "trt", "path": out, "precision": res.precision, "parity": parity, **info}
