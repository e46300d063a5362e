"""``smatch export``: checkpoint folder -> ONNX (fp32 / fp16) or TensorRT engine, with a parity check."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from simplematch.errors import SimpleMatchError

FORMATS = ("onnx", "trt")


SUFFIXES = {"onnx": (".onnx",), "trt": (".engine", ".plan")}


def default_output(
    ckpt_dir: Path, fmt: str, fp16: bool, *, with_matching: bool = False, int8: bool = False
) -> Path:
    """``runs/demo/checkpoint`` -> ``runs/demo/checkpoint/model.onnx``: *inside* the checkpoint folder.

    The export belongs to the checkpoint it was made from (its sha256 is in the metadata); writing into the
    checkpoint's parent mixed exports of different checkpoints of one run folder (issue 11).
    """
    name = "model" + (".match" if with_matching else "") + (".int8" if int8 else ".fp16" if fp16 else "")
    return Path(ckpt_dir).absolute() / (name + (".engine" if fmt == "trt" else ".onnx"))


def check_output_path(out: Path, fmt: str = "onnx", *, force: bool = False) -> Path:
    """Fail before any work when ``out`` cannot be written: a folder, a suffix that does not fit ``fmt``, an
    existing file without ``force``, or a parent that cannot be created."""
    from simplematch.io import ensure_writable_dir

    out = Path(out)
    if out.is_dir():
        raise SimpleMatchError(
            f"--out {out} is a folder", "pass a file path, e.g. --out runs/demo/model.onnx"
        )
    allowed = SUFFIXES.get(fmt, ())
    if out.suffix.lower() not in allowed:
        raise SimpleMatchError(
            f"--out {out.name} does not fit --format {fmt} (expected {' or '.join(allowed)})",
            f"name the file e.g. model{allowed[0]}",
        )
    if out.exists() and not force:
        raise SimpleMatchError(
            f"{out} already exists and export does not overwrite files",
            "pass --force to replace it, or choose another --out",
        )
    ensure_writable_dir(out.parent)
    # os.access says yes to root even on read-only mounts; creating (and removing) a probe file is the truth.
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise SimpleMatchError(
            f"cannot write to {out.parent} ({err.strerror})", "choose a writable --out path"
        ) from err
    return out


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
    with_matching: bool = False,
    force: bool = False,
) -> dict[str, Any]:
    """Export one checkpoint; returns ``{"path", "precision", "seconds", "size_mib", "parity", ...}``.

    Every argument is validated before the (slow) export starts, and nothing is left at ``out`` unless the
    whole export, including the parity check, succeeded.
    """
    from simplematch.export.onnx_export import DEFAULT_OPSET, check_opset

    if fmt not in FORMATS:
        raise SimpleMatchError(f"unknown export format '{fmt}'", "use --format onnx or --format trt")
    ckpt_dir = Path(ckpt_dir)
    # Checked before the output folder is created: with the default --out a missing checkpoint folder
    # would otherwise be created (empty) by ensure_writable_dir.
    if not (ckpt_dir / "model.safetensors").is_file():
        what = (
            "checkpoint folder not found"
            if not ckpt_dir.is_dir()
            else "no model.safetensors in checkpoint folder"
        )
        raise SimpleMatchError(
            f"{what}: {ckpt_dir}", "pass a folder made by `smatch train` or `smatch convert`"
        )
    if fmt == "trt":
        from simplematch.export.trt_export import import_tensorrt

        import_tensorrt()  # fail fast, before any work, when TensorRT is absent
    if batch is not None and batch < 1:
        raise SimpleMatchError(f"--batch {batch} is invalid", "use a positive batch size or 'dynamic'")
    if with_matching and (fmt != "onnx" or fp16):
        raise SimpleMatchError(
            "--with-matching exports an fp32 ONNX graph only",
            "drop --fp16 / --format trt; on a GPU run it with onnxruntime (CUDA or TensorRT EP)",
        )
    opset = check_opset(DEFAULT_OPSET if opset is None else opset)
    default = default_output(ckpt_dir, fmt, fp16, with_matching=with_matching)
    out = check_output_path(Path(out) if out else default, fmt, force=force)

    from simplematch.checkpoint import load_checkpoint
    from simplematch.export.onnx_export import checkpoint_sha, export_onnx
    from simplematch.export.parity import images_from_dir

    images = images_from_dir(check_data) if (check and check_data) else None
    model, cfg = load_checkpoint(ckpt_dir, device="cpu")
    kwargs = dict(checkpoint_sha256=checkpoint_sha(ckpt_dir), fp16=fp16, opset=opset, batch=batch)
    if fmt == "onnx":
        res = export_onnx(
            model, cfg, out, check=check, check_images=images, with_matching=with_matching, **kwargs
        )
        return {"format": "onnx", **res.__dict__}
    return _export_trt(model, cfg, out, check=check, images=images, **kwargs)


def _export_trt(
    model: Any, cfg: Any, out: Path, *, check: bool, images: Any, **kwargs: Any
) -> dict[str, Any]:
    """ONNX in a staging folder next to ``out`` -> engine there -> parity -> move engine + sidecar into place.

    Staging next to ``out`` (same file system) makes the final moves atomic renames, and a failed build or
    parity check removes the whole folder: no engine without its check, no sidecar without its engine.
    """
    from simplematch.export.onnx_export import export_onnx, publish
    from simplematch.export.trt_export import build_engine, write_sidecar

    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent) as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        res = export_onnx(model, cfg, onnx_path, check=check, check_images=images, **kwargs)
        staged = Path(tmp) / out.name
        cache = out.with_suffix(out.suffix + ".timing.cache")
        info = build_engine(onnx_path, staged, fp16=kwargs["fp16"], batch=kwargs["batch"], timing_cache=cache)
        parity: dict[str, Any] = {}
        if check:
            from simplematch.export.trt_parity import engine_parity

            parity = engine_parity(
                staged, onnx_path, cfg, images=images, batch=kwargs["batch"], precision=res.precision
            )
            parity["onnx_vs_torch"] = res.parity
            write_sidecar(onnx_path, staged, precision=res.precision, parity=parity)
        sidecar = staged.with_suffix(staged.suffix + ".json")
        publish(sidecar, out.with_suffix(out.suffix + ".json"))
        publish(staged, out)
    return {
        "format": "trt",
        "path": out,
        "precision": res.precision,
        "seconds": time.time() - t0,
        "size_mib": out.stat().st_size / 2**20,
        "parity": parity,
        **info,
    }
