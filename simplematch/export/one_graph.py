"""``smatch export --with-matching``: the whole match in one ONNX graph (paper section 3.3 inside the file).

Inputs ``src_image``, ``tgt_image`` (B, 3, S, S) float32 in [0, 1], ``src_kps`` (B, N, 2) float32 pixels
(x, y) in the S x S frame and ``kps_valid`` (B, N) bool; outputs ``tgt_kps`` (B, N, 2) float32 pixels,
``peak_cos`` (B, N) (peak cosine similarity) and ``peak_mass`` (B, N) (soft-argmax mass of the peak cell),
plus ``features`` (2B, C, S/4, S/4): the source maps then the target maps, so the runtime can still encode
images with the same file. B and N are dynamic; S is fixed.

The graph is traced from :func:`simplematch.matching.match_keypoints` itself (the function the PyTorch
evaluation scores with), so there is no second implementation to drift: nearest-cell gather, cosine
similarity, argmax, clamped k x k window gather, softmax(sim / beta), expectation, stride. Invalid
keypoints give NaN target keypoints and zero cues, so padding can never be mistaken for a prediction.
Both images go through the encoder as one batch of 2B (one encoder call, as the runtime batches them).
"""

from __future__ import annotations

import onnx
import torch

from simplematch.matching import match_keypoints

SRC_IMAGE, TGT_IMAGE, SRC_KPS, KPS_VALID = "src_image", "tgt_image", "src_kps", "kps_valid"
TGT_KPS, PEAK_COS, PEAK_MASS, FEATURES = "tgt_kps", "peak_cos", "peak_mass", "features"
INPUTS = (SRC_IMAGE, TGT_IMAGE, SRC_KPS, KPS_VALID)
OUTPUTS = (TGT_KPS, PEAK_COS, PEAK_MASS, FEATURES)


class MatchGraph(torch.nn.Module):
    """(src image, tgt image, src keypoints, validity) -> (tgt keypoints, peak cos, peak mass, features)."""

    def __init__(self, model: torch.nn.Module, img_size: int, window: int, beta: float, coord: str) -> None:
        super().__init__()
        self.model = model
        self.img_size, self.window, self.beta, self.coord = img_size, window, beta, coord

    def forward(
        self, src_image: torch.Tensor, tgt_image: torch.Tensor, src_kps: torch.Tensor, kps_valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        b = src_image.shape[0]
        feats = self.model.encode(torch.cat([src_image, tgt_image]))
        # The graph returns the two cues computed inside the match (no back-match: see docs/export.md).
        m = match_keypoints(
            feats[:b], feats[b:], src_kps, self.img_size, self.window, self.beta, self.coord, with_cues=False
        )
        pred, peak, mass = m.pred, m.peak_cos, m.peak_mass
        nan = torch.full_like(pred, float("nan"))
        pred = torch.where(kps_valid.unsqueeze(-1), pred, nan)
        zero = torch.zeros_like(peak)
        return pred, torch.where(kps_valid, peak, zero), torch.where(kps_valid, mass, zero), feats


def example_inputs(img_size: int, batch: int | None, n_kps: int = 5) -> tuple[torch.Tensor, ...]:
    b = batch or 2
    g = torch.Generator().manual_seed(0)
    kps = torch.rand(b, n_kps, 2, generator=g) * img_size
    valid = torch.ones(b, n_kps, dtype=torch.bool)
    return torch.rand(b, 3, img_size, img_size, generator=g), torch.rand(b, 3, img_size, img_size), kps, valid


def dynamic_shapes(batch: int | None) -> dict[str, dict[int, object]]:
    """N (keypoints) is always dynamic; B too unless ``--batch`` fixed it."""
    n = torch.export.Dim("n_kps", min=1, max=4096)
    bdim = {0: torch.export.Dim("batch", min=1, max=512)} if not batch else {}
    return {
        "src_image": dict(bdim),
        "tgt_image": dict(bdim),
        "src_kps": {**bdim, 1: n},
        "kps_valid": {**bdim, 1: n},
    }


def _elem_types(proto: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(proto)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    types.update({v.name: v.type.tensor_type.elem_type for v in inferred.graph.input})
    types.update({i.name: i.data_type for i in proto.graph.initializer})
    return types


def make_trt_friendly(proto: onnx.ModelProto) -> int:
    """Rewrite the two exported patterns TensorRT 10 cannot parse into exact equivalents (in place).

    * ``Clip`` on integers (``torch.clamp`` of the int64 cell indices) -> ``Min(Max(x, lo), hi)``: TensorRT 10
      supports Clip for FP32 / FP16 / BF16 only, Max / Min for INT32 / INT64 too.
    * ``Equal`` on booleans (from torch's floor division of the arg-max index) -> ``Not(Xor(a, b))``:
      TensorRT 10's Equal takes no BOOL, Xor / Not do.

    Source: onnx-tensorrt docs/operators.md, 10.x. Returns the number of nodes rewritten.
    """
    types = _elem_types(proto)
    integer = {onnx.TensorProto.INT64, onnx.TensorProto.INT32}
    make = onnx.helper.make_node
    nodes: list[onnx.NodeProto] = []
    count = 0
    for node in proto.graph.node:
        first = types.get(node.input[0]) if node.input else None
        out = node.output[0] if node.output else ""
        if node.op_type == "Clip" and first in integer:
            x, lo, hi = (list(node.input) + ["", ""])[:3]
            low = make("Max", [x, lo], [f"{out}_lo"]) if lo else make("Identity", [x], [f"{out}_lo"])
            high = make("Min", [f"{out}_lo", hi], [out]) if hi else make("Identity", [f"{out}_lo"], [out])
            nodes += [low, high]
        elif node.op_type == "Equal" and first == onnx.TensorProto.BOOL:
            nodes += [make("Xor", list(node.input), [f"{out}_xor"]), make("Not", [f"{out}_xor"], [out])]
        else:
            nodes.append(node)
            continue
        count += 1
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return count


# TensorRT 10 ONNX parser support by op -> element types, transcribed from onnx-tensorrt docs/operators.md
# (10.x branch, "TensorRT 10.0 supports operators in the inclusive range of opset 9 to opset 20"), for the
# ops these graphs use. The export test checks every node of the one-graph model against it.
TRT10_SUPPORT: dict[str, set[str]] = {
    **{
        op: {"FLOAT", "FLOAT16", "BFLOAT16", "INT32", "INT64"}
        for op in (
            "Add",
            "Sub",
            "Mul",
            "Div",
            "Mod",
            "Equal",
            "Less",
            "Greater",
            "Max",
            "Min",
            "ArgMax",
            "Relu",
            "Range",
            "ReduceL2",
            "ReduceMax",
            "ReduceSum",
            "ReduceMean",
            "IsNaN",
            "Neg",
            "Abs",
        )
    },
    **{
        op: {"FLOAT", "FLOAT16", "BFLOAT16", "INT32", "INT64", "BOOL"}
        for op in (
            "Concat",
            "Expand",
            "Gather",
            "GatherElements",
            "Reshape",
            "Shape",
            "Slice",
            "Squeeze",
            "Unsqueeze",
            "Transpose",
            "Where",
            "Identity",
            "ConstantOfShape",
            "Split",
            "Tile",
            "Flatten",
        )
    },
    **{
        op: {"FLOAT", "FLOAT16", "BFLOAT16"}
        for op in (
            "Clip",
            "Floor",
            "Conv",
            "ConvTranspose",
            "MatMul",
            "Gemm",
            "Softmax",
            "Sqrt",
            "Pow",
            "Erf",
            "LayerNormalization",
            "MaxPool",
            "Resize",
            "ReduceSumSquare",
            "Exp",
            "Tanh",
            "Sigmoid",
        )
    },
    "Cast": {"FLOAT", "FLOAT16", "BFLOAT16", "INT32", "INT64", "UINT8", "BOOL"},
    "And": {"BOOL"},
    "Xor": {"BOOL"},
    "Or": {"BOOL"},
    "Not": {"BOOL"},
    "Constant": {"FLOAT", "FLOAT16", "BFLOAT16", "INT32", "INT64", "BOOL"},
}


def trt10_unsupported(proto: onnx.ModelProto) -> list[str]:
    """``"Op(TYPE)"`` for every node whose op or first-input element type is outside :data:`TRT10_SUPPORT`."""
    types = _elem_types(proto)
    bad = set()
    for node in proto.graph.node:
        allowed = TRT10_SUPPORT.get(node.op_type)
        elem = types.get(node.input[0]) if node.input else None
        name = onnx.TensorProto.DataType.Name(elem) if elem else "?"
        if allowed is None or (elem and name not in allowed):
            bad.add(f"{node.op_type}({name})")
    return sorted(bad)
