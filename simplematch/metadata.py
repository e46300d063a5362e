"""The metadata contract between an exported model and the torch-free runtime (torch-free module).

An ONNX file carries it in ``metadata_props`` (one ``simplematch.<field>`` key per field, values as strings,
JSON for non-scalars); a TensorRT engine carries the same dict in its ``model.engine.json`` sidecar. One
file is then enough to preprocess, match and scale predictions back exactly as the PyTorch evaluation does.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from simplematch.errors import SimpleMatchError

PREFIX = "simplematch."
INPUT_NAME = "image"  # (B, 3, S, S) float32 RGB in [0, 1], already resized to S x S
OUTPUT_NAME = "features"  # (B, C, S/4, S/4) float32, L2-normalised along C


@dataclass
class ModelMeta:
    version: str
    backbone: str
    img_size: int
    stride: float  # pixels per cell of the output map (img_size / map side)
    window: int  # fine-head window (0 = whole map)
    beta: float
    coord: str  # "corner" (cell i -> i*s) or "center" ((i + 0.5)*s)
    mean: list[float]
    std: list[float]
    precision: str  # "fp32" | "fp16"
    opset: int
    checkpoint_sha256: str
    config: dict[str, Any] = field(default_factory=dict)  # the resolved training config
    parity: dict[str, Any] = field(default_factory=dict)  # export parity-check numbers
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME
    # "features": image -> features (matching in the runtime); "matching": the one-graph model of
    # ``smatch export --with-matching`` (images + keypoints -> keypoints + cues, features as a side output).
    graph: str = "features"
    trained_img_size: int = 0  # input size the checkpoint was trained at (0: same as img_size)

    def to_props(self) -> dict[str, str]:
        out = {}
        for key, value in asdict(self).items():
            out[PREFIX + key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        return out

    @classmethod
    def from_props(cls, props: dict[str, str], *, source: str = "model") -> ModelMeta:
        if not any(k.startswith(PREFIX) for k in props):
            raise SimpleMatchError(
                f"{source} has no simplematch metadata", "export it with `smatch export CHECKPOINT_DIR`"
            )
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = props.get(PREFIX + f.name)
            if raw is None:
                if f.name in ("config", "parity", "input_name", "output_name", "graph", "trained_img_size"):
                    continue
                raise SimpleMatchError(
                    f"{source} metadata lacks '{PREFIX + f.name}'",
                    "re-export it with this version of `smatch export`",
                )
            if f.type == "str":
                values[f.name] = raw
            else:
                try:
                    values[f.name] = json.loads(raw)
                except json.JSONDecodeError as err:
                    raise SimpleMatchError(
                        f"{source} metadata '{PREFIX + f.name}' is not valid JSON", "re-export the model"
                    ) from err
        meta = cls(**values)
        if (
            meta.coord not in ("corner", "center")
            or meta.img_size < 4
            or meta.precision not in ("fp32", "fp16", "int8")
            or meta.graph not in ("features", "matching")
        ):
            raise SimpleMatchError(f"{source} metadata has invalid values", "re-export the model")
        return meta

    def to_json(self) -> str:
        return json.dumps(self.to_props(), indent=2, sort_keys=True)
