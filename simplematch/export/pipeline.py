"""``smatch export``: checkpoint folder -> ONNX (fp32 / fp16 / int8) or TensorRT engine, with a parity check.

Re-exported by :mod:`simplematch.export`; the option checks are :mod:`simplematch.validate`'s and create
nothing.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from simplematch.config import EXPORT_FORMATS as FORMATS
from simplematch.errors import SimpleMatchError
from simplematch.files import make_dir

SUFFIXES = {"onnx": (".onnx",), "trt": (".engine", ".plan")}


def default_output(
    ckpt_dir: Path, fmt: str, fp16: bool, *, with_matching: bool = False, int8: bool = False
) -> Path:
    """``runs/demo/checkpoint`` -> ``runs/demo/checkpoint/model.onnx``: *inside* the checkpoint folder.

    The export belongs to the checkpoint it was made from (its sha256 is in the metadata); writing into the
    checkpoint's parent mixed exports of different checkpoints of one run folder.
    """
    name = "model" + (".match" if with_matching else "") + (".int8" if int8 else ".fp16" if fp16 else "")
    return Path(ckpt_dir).absolute() / (name + (".engine" if fmt == "trt" else ".onnx"))


def check_output_path(out: Path, fmt: str = "onnx", *, force: bool = False) -> Path:
    """Fail before any work when ``out`` cannot be written (:func:`simplematch.validate.output_file`: a
    folder, a suffix that does not fit ``fmt``, an existing file without ``force``, an unwritable parent).
    Nothing is created; the parent folder is made by the atomic writer."""
    from simplematch import validate

    return validate.output_file(Path(out), "--out", suffixes=SUFFIXES.get(fmt, ()), force=force)


def _check_options(
    ckpt_dir: Path,
    fmt: str,
    out: Path | None,
    *,
    fp16: bool,
    batch: int | None,
    opset: int | None,
    with_matching: bool,
    force: bool,
    int8: bool,
    calib_data: Path | None,
    calib_method: str,
    img_size: int | None,
) -> tuple[int, Path]:
    """Every export option checked before any work: -> (opset, output path)."""
    from simplematch import validate
    from simplematch.export.onnx_export import DEFAULT_OPSET, check_opset

    if fmt not in FORMATS:
        raise SimpleMatchError(f"unknown export format '{fmt}'", "use --format onnx or --format trt")
    validate.checkpoint_dir(ckpt_dir)
    if fmt == "trt":
        from simplematch.export.trt_export import import_tensorrt

        import_tensorrt()  # fail fast, before any work, when TensorRT is absent
    if img_size is not None and img_size < 16:
        raise SimpleMatchError(f"--img-size {img_size} is too small", "pass e.g. 224 (ViT-S/14) or 256")
    if batch is not None and batch < 1:
        raise SimpleMatchError(f"--batch {batch} is invalid", "use a positive batch size or 'dynamic'")
    if with_matching and (fmt != "onnx" or fp16):
        raise SimpleMatchError(
            "--with-matching exports an fp32 ONNX graph only",
            "drop --fp16 / --format trt; on a GPU run it with onnxruntime (CUDA or TensorRT EP)",
        )
    if int8:
        _check_int8_options(fmt, fp16, with_matching, calib_data, calib_method)
    opset = check_opset(DEFAULT_OPSET if opset is None else opset)
    default = default_output(ckpt_dir, fmt, fp16, with_matching=with_matching, int8=int8)
    out = check_output_path(Path(out) if out else default, fmt, force=force)
    return opset, out


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
    int8: bool = False,
    calib_data: Path | None = None,
    calib_method: str = "minmax",
    int8_min_agreement: float | None = None,
    img_size: int | None = None,
) -> dict[str, Any]:
    """Export one checkpoint; returns ``{"path", "precision", "seconds", "size_mib", "parity", ...}``.

    Every argument is validated before the (slow) export starts, and nothing is left at ``out`` unless the
    whole export, including the parity check, succeeded.
    """
    ckpt_dir = Path(ckpt_dir)
    opset, out = _check_options(
        ckpt_dir, fmt, out, fp16=fp16, batch=batch, opset=opset, with_matching=with_matching, force=force,
        int8=int8, calib_data=calib_data, calib_method=calib_method, img_size=img_size,
    )  # fmt: skip

    from simplematch.checkpoint import load_checkpoint
    from simplematch.export.onnx_export import checkpoint_sha, export_onnx
    from simplematch.export.parity import images_from_dir

    images = images_from_dir(check_data) if (check and check_data) else None
    model, cfg = load_checkpoint(ckpt_dir, device="cpu")
    trained = cfg.img_size
    if img_size is not None:
        from simplematch.export.img_size import rebuild_at_size

        model, cfg = rebuild_at_size(ckpt_dir, model, cfg, img_size)
    kwargs = dict(checkpoint_sha256=checkpoint_sha(ckpt_dir), fp16=fp16, opset=opset, batch=batch)
    kwargs["trained_img_size"] = trained
    if int8:
        assert calib_data is not None
        return _export_int8(
            model, cfg, out, check_data=check_data, images=images, calib_data=calib_data,
            method=calib_method, min_agreement=int8_min_agreement, **kwargs,
        )  # fmt: skip
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
    make_dir(out.parent)  # checked (not created) by the option checks; made now that we write
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


def _check_int8_options(
    fmt: str, fp16: bool, with_matching: bool, calib_data: Path | None, method: str
) -> None:
    from simplematch.export.int8 import CALIB_METHODS

    if fmt != "onnx" or fp16 or with_matching:
        raise SimpleMatchError(
            "--int8 quantizes the fp32 features ONNX graph only",
            "drop --fp16 / --with-matching / --format trt",
        )
    if calib_data is None or not Path(calib_data).is_dir():
        raise SimpleMatchError(
            f"--int8 needs --calib-data DIR, a folder of real images (got {calib_data})",
            "e.g. --calib-data ../shared/data/pf-willow",
        )
    if method not in CALIB_METHODS:
        raise SimpleMatchError(
            f"unknown calibration method '{method}'", f"use one of {', '.join(CALIB_METHODS)}"
        )


def _export_int8(
    model: Any,
    cfg: Any,
    out: Path,
    *,
    check_data: Path | None,
    images: Any,
    calib_data: Path,
    method: str,
    min_agreement: float | None,
    **kwargs: Any,
) -> dict[str, Any]:
    """fp32 export (checked) in a staging folder -> static INT8 -> int8-vs-fp32 gate -> metadata -> rename."""
    import onnx

    from simplematch.export.int8 import (
        CALIB_IMAGES,
        DEFAULT_MIN_AGREEMENT,
        enforce_int8,
        int8_parity,
        quantize,
    )
    from simplematch.export.onnx_export import export_onnx, publish, set_metadata
    from simplematch.export.parity import bundled_images, images_from_dir
    from simplematch.metadata import ModelMeta

    t0 = time.time()
    check_images = images if images is not None else bundled_images()
    # Same folder for calibration and check: calibrate on the images after the check ones (both are taken
    # round-robin over sub-folders), so the gate is measured on images the calibration never saw.
    same = check_data is not None and Path(check_data).resolve() == Path(calib_data).resolve()
    skip = len(images) if (same and images is not None) else 0
    calib = images_from_dir(calib_data, limit=CALIB_IMAGES + skip)[skip:]
    make_dir(out.parent)  # checked (not created) by the option checks; made now that we write
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent) as tmp:
        fp32 = Path(tmp) / "model.fp32.onnx"
        res32 = export_onnx(model, cfg, fp32, check=True, check_images=images, **kwargs)
        staged = Path(tmp) / out.name
        kept = quantize(fp32, staged, calib, cfg.img_size, method=method)
        parity = int8_parity(fp32, staged, check_images, pf_willow=check_data)
        parity.update(calib_method=method, calib_images=len(calib), float_nodes=len(kept))
        parity["fp32_vs_torch_max_abs"] = res32.parity.get("max_abs_feature_diff")
        need = DEFAULT_MIN_AGREEMENT if min_agreement is None else min_agreement
        parity["min_agreement"] = need
        enforce_int8(parity, need)
        proto = onnx.load(str(staged))
        props = {p.key: p.value for p in onnx.load(str(fp32), load_external_data=False).metadata_props}
        meta = ModelMeta.from_props(props)
        meta.precision, meta.parity = "int8", parity
        set_metadata(proto, meta)
        onnx.save_model(proto, str(staged))
        publish(staged, out)
    return {
        "format": "onnx",
        "path": out,
        "precision": "int8",
        "seconds": time.time() - t0,
        "size_mib": out.stat().st_size / 2**20,
        "parity": parity,
    }
