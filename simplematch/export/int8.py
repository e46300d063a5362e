"""``smatch export --int8 --calib-data DIR``: onnxruntime static INT8 quantization with an accuracy gate.

The fp32 features graph is exported and checked as usual, then quantized with onnxruntime's own tool
(``quantize_static``: QDQ format, per-channel int8 weights, activations calibrated on real images from
DIR). The int8 model is compared with the fp32 one on the check images: feature cosine, keypoint agreement
(numpy matching on both, within one feature cell) and, when the check folder is PF-WILLOW, the PCK change
on its pairs. Below ``min_agreement`` nothing is written (``--int8-min-agreement`` lowers the bar).

Choices (measured, see docs/export.md): MinMax calibration; uint8 activations + int8 weights with
``reduce_range`` (7-bit weights), which onnxruntime recommends for x86 CPUs without VNNI to avoid int16
saturation in the u8 x s8 kernels; the final L2 normalisation (ReduceL2 / Div) stays float.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from simplematch.errors import SimpleMatchError
from simplematch.image import resize_square

CALIB_METHODS = ("minmax", "percentile", "entropy")
DEFAULT_MIN_AGREEMENT = 0.90  # keypoints within one feature cell (stride px) of the fp32 prediction
CALIB_IMAGES = 16
# The L2 normalisation at the end must stay float: quantizing its output would round the unit vectors
# whose dot products are the similarities.
FLOAT_OPS = ("ReduceL2", "Div", "Sqrt", "Pow", "ReduceSum", "Clip", "Expand", "Max")


class ImageReader:
    """onnxruntime's CalibrationDataReader protocol: one ``{input: (1, 3, S, S)}`` feed per image."""

    def __init__(self, images: list[np.ndarray], size: int, input_name: str) -> None:
        self._feeds = iter([{input_name: resize_square(im, size)[None]} for im in images])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)

    def rewind(self) -> None:  # part of the protocol in newer onnxruntime; one pass is enough here
        pass


def quantize(
    fp32_path: Path,
    out: Path,
    calib_images: list[np.ndarray],
    size: int,
    *,
    method: str = "minmax",
    reduce_range: bool = True,
) -> list[str]:
    """Static QDQ quantization of ``fp32_path`` into ``out``; returns the node names kept in float."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIB_METHODS:
        raise SimpleMatchError(
            f"unknown calibration method '{method}'", f"use one of {', '.join(CALIB_METHODS)}"
        )
    with tempfile.TemporaryDirectory(prefix=".int8.", dir=out.parent) as tmp:
        pre = Path(tmp) / "pre.onnx"
        # onnxruntime's recommended pre-processing (graph optimisation + shape inference) so the quantizer
        # sees fused ops and every tensor's shape. Its symbolic shape inference crashes on the exporter's
        # Expand of the L2 norm (onnxruntime 1.32, TypeError in _infer_Expand), so ONNX's own is used.
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        model = onnx.load(str(pre))
        keep = [n.name for n in model.graph.node if n.op_type in FLOAT_OPS]
        quantize_static(
            str(pre),
            str(out),
            ImageReader(calib_images, size, model.graph.input[0].name),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=keep,
            calibrate_method={
                "minmax": CalibrationMethod.MinMax,
                "percentile": CalibrationMethod.Percentile,
                "entropy": CalibrationMethod.Entropy,
            }[method],
            calibration_providers=["CPUExecutionProvider"],
        )
    return keep


def int8_parity(
    fp32_path: Path,
    int8_path: Path,
    images: list[np.ndarray],
    *,
    pf_willow: Path | None = None,
    n_pairs: int = 40,
) -> dict[str, Any]:
    """int8 vs fp32 on the check images (pairs i -> i + 1), plus the PCK change on PF-WILLOW pairs."""
    from simplematch.export.parity import grid_keypoints
    from simplematch.runtime.backends import OnnxBackend
    from simplematch.runtime.matching import match_keypoints

    f32, i8 = OnnxBackend(fp32_path), OnnxBackend(int8_path)
    meta = f32.meta
    x = np.stack([resize_square(im, meta.img_size) for im in images])
    a, b = f32.encode(x), i8.encode(x)
    cos = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    kps = np.repeat(grid_keypoints(meta.img_size, 30)[None], len(x), axis=0)
    args = (meta.img_size, meta.window, meta.beta, meta.coord)
    pa, *_ = match_keypoints(a, np.roll(a, -1, 0), kps, *args)
    pb, *_ = match_keypoints(b, np.roll(b, -1, 0), kps, *args)
    d = np.linalg.norm(pa - pb, axis=-1)
    res: dict[str, Any] = {
        "feature_cosine_mean": float(cos.mean()),
        "feature_cosine_min": float(cos.min()),
        "keypoint_agreement": float((d <= meta.stride).mean()),
        "keypoint_agreement_0.5px": float((d <= 0.5).mean()),
        "median_keypoint_diff_px": float(np.median(d)),
        "images": len(x),
        "keypoints": int(d.size),
        "precision": "int8",
        "runtime": "onnxruntime-cpu",
    }
    if pf_willow is not None:
        res.update(_pck_change(fp32_path, int8_path, pf_willow, n_pairs))
    return res


def _pck_change(fp32_path: Path, int8_path: Path, root: Path, n_pairs: int) -> dict[str, Any]:
    """PCK@0.1 (PF-WILLOW's kps threshold, resized frame) of both models on every k-th test pair."""
    from simplematch.data import load_records
    from simplematch.evaluation.runtime_predictor import evaluate_runtime

    try:
        records = load_records("pfwillow", root, "test")
    except SimpleMatchError:
        return {"pck_0.1_change": None}
    records = records[:: max(1, len(records) // n_pairs)][:n_pairs]
    pck = [evaluate_runtime(p, records, dataset="pfwillow")["pck"]["0.1"] for p in (fp32_path, int8_path)]
    return {
        "pck_0.1_fp32": pck[0],
        "pck_0.1_int8": pck[1],
        "pck_0.1_change": pck[1] - pck[0],
        "pck_pairs": len(records),
    }


def enforce_int8(res: dict[str, Any], min_agreement: float) -> None:
    if res["keypoint_agreement"] < min_agreement:
        raise SimpleMatchError(
            f"int8 keypoint agreement with fp32 is {res['keypoint_agreement'] * 100:.1f}% (within one cell;"
            f" need {min_agreement * 100:.0f}%), feature cosine {res['feature_cosine_mean']:.4f};"
            " no file was written",
            "calibrate on more / more typical images, or lower --int8-min-agreement at your own risk",
        )
