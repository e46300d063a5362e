"""Export a checkpoint to ONNX: encoder + decoder + 1/4 head + L2 normalisation (``smatch export``).

Graph: input ``image`` (B, 3, S, S) float32 RGB in [0, 1] -> output ``features`` (B, C, S/4, S/4) float32,
L2-normalised along C. ImageNet normalisation is inside the graph; matching stays outside (the runtime
does it, so one image's features can be matched against many others). LoRA is merged first, the model is
in eval mode, and ViTs are built at S so the graph holds no position-embedding resize.

Every file is written to a temporary path, checked (``onnx.checker`` full check + torch-vs-onnxruntime
parity), stamped with metadata (including the parity numbers), and only then renamed into place: a
failed check leaves no half-written model behind.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

import simplematch
from simplematch.config import Config
from simplematch.errors import SimpleMatchError, first_line
from simplematch.files import atomic_path, sha256_file
from simplematch.image import IMAGENET_MEAN, IMAGENET_STD
from simplematch.metadata import INPUT_NAME, OUTPUT_NAME, ModelMeta

# LayerNormalization is one node from opset 17, but torch's dynamo exporter implements opset 18+ only and
# down-converts afterwards, which fails on these graphs (measured: torch 2.14, onnxscript; the file stays at
# 18 with a logged traceback). 17 is refused up front rather than after a minutes-long export.
MIN_OPSET = 18
DEFAULT_OPSET = 18
# fp16 conversion keeps these ops in float32: LayerNorm/softmax/reductions lose too much in half precision,
# and the final L2 normalisation must stay exact enough for cosine matching.
FP16_KEEP_FP32_OPS = [
    "LayerNormalization",
    "Softmax",
    "ReduceMean",
    "ReduceSum",
    "ReduceSumSquare",
    "ReduceL2",
    "Pow",
    "Sqrt",
    "Div",
    "Erf",
    "Resize",
]


@dataclass
class ExportResult:
    path: Path
    precision: str
    seconds: float
    size_mib: float
    parity: dict[str, Any] = field(default_factory=dict)


class FeatureExtractor(torch.nn.Module):
    """The exported function: ``image`` -> L2-normalised fine-head ``features``."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.encode(image)


def prepare_for_export(model: torch.nn.Module) -> torch.nn.Module:
    """Merge LoRA into plain weights and switch to eval (dropout off, BatchNorm running statistics)."""
    if hasattr(model, "merge_lora"):
        model.merge_lora()
    return model.eval().float()


def build_meta(
    cfg: Config, *, stride: float, checkpoint_sha256: str, precision: str, opset: int
) -> ModelMeta:
    return ModelMeta(
        version=simplematch.__version__,
        backbone=cfg.backbone,
        img_size=cfg.img_size,
        stride=stride,
        window=cfg.fine_window,
        beta=cfg.beta,
        coord=cfg.coord,
        mean=list(IMAGENET_MEAN),
        std=list(IMAGENET_STD),
        precision=precision,
        opset=opset,
        checkpoint_sha256=checkpoint_sha256,
        config=cfg.to_dict(),
    )


def set_metadata(model_proto: onnx.ModelProto, meta: ModelMeta) -> None:
    del model_proto.metadata_props[:]
    for key, value in meta.to_props().items():
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = key, value
    model_proto.producer_name = "simplematch"
    model_proto.producer_version = simplematch.__version__


def check_opset(opset: int) -> int:
    """Reject opsets the graph cannot use (too old) or the installed onnx does not know (too new).

    Checked before the checkpoint is loaded, so a typo fails in a second instead of after the export.
    """
    if opset < MIN_OPSET:
        raise SimpleMatchError(
            f"opset {opset} is too old for torch's dynamo exporter", f"use --opset {MIN_OPSET} or newer"
        )
    newest = onnx.defs.onnx_opset_version()
    if opset > newest:
        raise SimpleMatchError(
            f"opset {opset} is newer than the installed onnx knows", f"use --opset {MIN_OPSET}..{newest}"
        )
    return opset


def export_onnx_proto(
    model: torch.nn.Module,
    img_size: int,
    *,
    opset: int,
    batch: int | None,
    with_matching: bool = False,
    cfg: Config | None = None,
) -> onnx.ModelProto:
    """torch.onnx.export with the dynamo exporter; ``batch=None`` means a dynamic batch dimension.

    ``with_matching`` exports :class:`simplematch.export.one_graph.MatchGraph` (images + keypoints ->
    keypoints + cues, ``cfg`` gives window / beta / coord) instead of the features-only graph.
    """
    check_opset(opset)
    if with_matching:
        from simplematch.export import one_graph

        assert cfg is not None
        wrapper: torch.nn.Module = one_graph.MatchGraph(model, img_size, cfg.fine_window, cfg.beta, cfg.coord)
        example = one_graph.example_inputs(img_size, batch)
        names = (list(one_graph.INPUTS), list(one_graph.OUTPUTS))
        dynamic: Any = one_graph.dynamic_shapes(batch)
    else:
        wrapper = FeatureExtractor(model)
        example = (torch.rand(batch or 2, 3, img_size, img_size),)
        names = ([INPUT_NAME], [OUTPUT_NAME])
        dynamic = None if batch else {"image": {0: torch.export.Dim("batch", min=1, max=1024)}}
    try:
        with torch.no_grad(), _quiet_onnxscript(), warnings.catch_warnings():
            # "axis name ... will not be used": the exporter renames shared dynamic dims; harmless.
            warnings.filterwarnings("ignore", message=".*axis name.*")
            program = torch.onnx.export(
                wrapper.eval(),
                example,
                dynamo=True,
                external_data=False,
                opset_version=opset,
                input_names=names[0],
                output_names=names[1],
                dynamic_shapes=dynamic,
                optimize=True,
                verbose=False,
            )
    except Exception as err:  # torch.export / onnxscript raise many unrelated types; all mean "cannot export"
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise SimpleMatchError(
            f"torch.onnx.export failed ({type(err).__name__}: {first})",
            "rerun with --debug and report it as a bug",
        ) from err
    proto = program.model_proto
    # The dynamo exporter builds at its native opset and converts afterwards; when that conversion fails it
    # only logs a warning and returns the unconverted model, so the file would not be what was asked for.
    actual = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if actual != opset:
        raise SimpleMatchError(
            f"torch's ONNX exporter could not convert this graph to opset {opset} (it gave opset {actual})",
            f"use --opset {actual}",
        )
    if with_matching:
        from simplematch.export.one_graph import make_trt_friendly

        make_trt_friendly(proto)
    return proto


@contextlib.contextmanager
def _quiet_onnxscript() -> Iterator[None]:
    """onnxscript logs failed opset conversions as warnings *with a traceback*; the check above reports
    them in one line instead, so the CLI's one-line-error contract holds."""
    logger = logging.getLogger("onnxscript")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def to_fp16(model_proto: onnx.ModelProto) -> onnx.ModelProto:
    """float16 weights and activations, float32 inputs/outputs, precision-critical ops kept in float32."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    proto = onnx.ModelProto()
    proto.CopyFrom(model_proto)
    # Stale float32 value_info from the exporter contradicts the converted types (checker TypeInferenceError);
    # drop it before and after, shapes are re-inferred by onnxruntime/checker anyway.
    del proto.graph.value_info[:]
    converted = convert_float_to_float16(proto, keep_io_types=True, op_block_list=FP16_KEEP_FP32_OPS)
    del converted.graph.value_info[:]
    drop_duplicate_producers(converted.graph)
    topological_sort(converted.graph)
    return converted


def drop_duplicate_producers(graph: onnx.GraphProto) -> None:
    """Remove nodes that repeat an earlier node exactly (same op, inputs, attributes and outputs), in place.

    onnxruntime <= 1.31's fp16 converter (the current onnxruntime-gpu) adds one ``X_cast_to_fp32`` Cast per
    float32-kept consumer of a float16 tensor, all with the same output name, which breaks SSA (1.32 shares
    one Cast). The copies are identical, so keeping the first is exact. Any other name clash is an error.
    """
    produced: dict[str, bytes] = {}
    kept = []
    for node in graph.node:
        key = node.SerializeToString(deterministic=True)
        clash = [name for name in node.output if name in produced]
        if clash and all(produced[name] == key for name in node.output):
            continue  # an exact copy of a node already kept
        if clash:
            raise SimpleMatchError(
                f"exported graph defines {clash[0]} twice with different nodes", "report this as a bug"
            )
        produced.update({name: key for name in node.output})
        kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)


def topological_sort(graph: onnx.GraphProto) -> None:
    """Reorder nodes so every input is produced before use (in place).

    onnxruntime's fp16 converter appends the input Cast nodes (keep_io_types) after their consumers, which
    onnx.checker rejects. onnxruntime's own graph tools sort it (stable among ready nodes).
    """
    from onnxruntime.transformers.onnx_model import OnnxModel

    try:
        OnnxModel.graph_topological_sort(graph)
    except RuntimeError as err:  # onnxruntime raises a plain RuntimeError for a cycle or a dangling input
        raise SimpleMatchError(f"exported graph is not sortable ({err})", "report this as a bug") from err


def export_onnx(
    model: torch.nn.Module,
    cfg: Config,
    out: Path,
    *,
    checkpoint_sha256: str,
    fp16: bool = False,
    opset: int = DEFAULT_OPSET,
    batch: int | None = None,
    check: bool = True,
    check_images: list[np.ndarray] | None = None,
    with_matching: bool = False,
    trained_img_size: int = 0,
) -> ExportResult:
    """Export (+ optional parity check) to ``out`` atomically. Raises SimpleMatchError on a failed check.

    ``model``'s weights are not modified (it is only switched to eval): LoRA is merged into a copy, and
    the parity reference is the model as given (unmerged), so the check also covers the merge.
    """
    from simplematch.export.parity import match_graph_parity, parity_check

    t0 = time.time()
    reference = model.eval().float()
    exported = prepare_for_export(copy.deepcopy(model))
    proto = export_onnx_proto(
        exported, cfg.img_size, opset=opset, batch=batch, with_matching=with_matching, cfg=cfg
    )
    if fp16:
        proto = to_fp16(proto)
    precision = "fp16" if fp16 else "fp32"
    with torch.no_grad():
        side = reference.encode(torch.zeros(1, 3, cfg.img_size, cfg.img_size)).shape[-1]
    meta = build_meta(
        cfg, stride=cfg.img_size / side, checkpoint_sha256=checkpoint_sha256, precision=precision, opset=opset
    )
    meta.trained_img_size = trained_img_size or cfg.img_size
    if with_matching:
        from simplematch.export import one_graph

        meta.graph, meta.input_name, meta.output_name = "matching", one_graph.SRC_IMAGE, one_graph.FEATURES
    set_metadata(proto, meta)
    check_fn = match_graph_parity if with_matching else parity_check
    try:
        with atomic_path(out) as tmp:
            onnx.save_model(proto, str(tmp))
            try:
                onnx.checker.check_model(str(tmp), full_check=True)
            except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
                raise SimpleMatchError(
                    f"exported graph fails onnx.checker ({first_line(err, 300)})", "report this as a bug"
                ) from err
            parity: dict[str, Any] = {}
            if check:
                parity = check_fn(reference, tmp, cfg, images=check_images, precision=precision, batch=batch)
                meta.parity = parity
                set_metadata(proto, meta)
                onnx.save_model(proto, str(tmp))
            make_readable(tmp)
    except OSError as err:  # disk full, folder removed or made read-only mid-export
        raise SimpleMatchError(
            f"cannot write {out} ({err.strerror or err})", "check free space and permissions"
        ) from err
    return ExportResult(
        path=out,
        precision=precision,
        seconds=time.time() - t0,
        size_mib=out.stat().st_size / 2**20,
        parity=parity,
    )


def make_readable(path: Path) -> None:
    """mkstemp creates 0600 files; an exported model is meant to be shared (served, copied), so 0644."""
    os.chmod(path, 0o644)


def publish(src: Path, dst: Path) -> None:
    """Move a finished artefact into place (same file system: an atomic rename), world-readable."""
    make_readable(src)
    os.replace(src, dst)


def checkpoint_sha(ckpt_dir: Path) -> str:
    weights = Path(ckpt_dir) / "model.safetensors"
    return sha256_file(weights) if weights.is_file() else ""
