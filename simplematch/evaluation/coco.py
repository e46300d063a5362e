"""``smatch eval --dataset coco`` (torch-free): the run's own split, the held-out check, the console tables.

A model trained on a COCO file records its split options (``coco_*`` keys of its config: config.json of a
checkpoint folder, the ``config`` metadata of an exported ONNX model or TensorRT engine). Evaluating it
uses those unless a flag overrides one, so PyTorch and runtime evaluation score the same held-out images.
Evaluating a model on images of its own training split is refused (:func:`check_held_out`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from simplematch.config import Config
from simplematch.data.coco_pairs import CocoOptions, coco_options, refuse_unused_flags, split_image_ids
from simplematch.errors import SimpleMatchError

ONNX_SUFFIXES = (".onnx",)


def recorded_config(model: Path) -> dict[str, Any] | None:
    """The training config a model carries (None when it has none, e.g. a model exported elsewhere)."""
    model = Path(model)
    if model.is_dir():
        path = model / "config.json"
        return Config.load(path).to_dict() if path.is_file() else None
    if model.suffix.lower() in ONNX_SUFFIXES and model.is_file():
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # metadata only
        try:
            meta = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"]).get_modelmeta()
        except Exception:  # the evaluation itself reports an unreadable model in one line
            return None
        raw = meta.custom_metadata_map.get("simplematch.config")
    else:
        sidecar = model.with_name(model.name + ".json")  # TensorRT engine: its metadata sidecar
        if not sidecar.is_file():
            return None
        raw = json.loads(sidecar.read_text()).get("simplematch.config")
    try:
        return json.loads(raw) if raw else None
    except json.JSONDecodeError:
        return None


def coco_request(
    model: Path, dataset: str, data_root: Path | None, given: dict[str, Any]
) -> tuple[Path | None, CocoOptions, dict[str, Any] | None]:
    """(data root, options, the model's recorded config) of ``smatch eval --dataset coco``.

    COCO flags with another dataset are refused; without ``--data-root`` a COCO run is scored on the file
    it was trained on (its recorded ``data_root``).
    """
    refuse_unused_flags(dataset, given)
    recorded = recorded_config(model)
    if data_root is None and recorded and recorded.get("dataset") == "coco" and recorded.get("data_root"):
        data_root = Path(recorded["data_root"])
    return data_root, eval_options(recorded, given), recorded


def eval_options(recorded: dict[str, Any] | None, given: dict[str, Any]) -> CocoOptions:
    """The COCO options of this evaluation: ``given`` flags (config keys), else the model's recorded ones."""
    return coco_options(given, recorded if (recorded or {}).get("dataset") == "coco" else None)


def check_held_out(model: Path, recorded: dict[str, Any] | None, data: dict[str, Any]) -> None:
    """Refuse to score a model on images of its own training split (same COCO file, any evaluator).

    The training images are recomputed from the recorded options (:func:`split_image_ids`), so a checkpoint
    folder, an ONNX model and a TensorRT engine of one run are held to the same rule. ``--split trn`` scores
    the training images on purpose and is not refused.
    """
    if not recorded or recorded.get("dataset") != "coco" or data.get("split") == "trn":
        return
    root = recorded.get("data_root")
    if not root or Path(root).resolve() != Path(data["source"]).resolve():
        return  # another COCO file: its image ids mean other images
    trained = set(split_image_ids(root, "trn", coco_options({}, recorded)))
    overlap = sorted(trained & set(data.get("image_ids", [])))
    if overlap:
        raise SimpleMatchError(
            f"{len(overlap)} image(s) of this '{data['split']}' split (ids {overlap[:5]}) are training"
            f" images of {model}",
            "evaluate with the run's own split (drop --split-seed / --split-fractions / --pairs)",
        )


def print_coco(res: dict[str, Any], console: Any) -> None:
    """Where the pairs came from (with the skipped annotations) and the per-keypoint PCK table."""
    from rich.table import Table

    data = res.get("data") or {}
    if data:
        console.print(
            f"{data['source']}: {data['mode']}, split {data['split']} ({data['images']} images, seed "
            f"{data['split_seed']}); {data['skipped_annotations']} annotation(s) skipped with fewer than "
            f"{data['min_common']} visible keypoints, {data['skipped_pairs']} listed pair(s) skipped",
            soft_wrap=True,
        )
    per_kp = res.get("per_keypoint") or {}
    if not per_kp:
        return
    table = Table(title="per keypoint (pooled over points)")
    table.add_column("category")
    table.add_column("keypoint")
    table.add_column("points", justify="right")
    for a in res["pck"]:
        table.add_column(f"PCK@{a}", justify="right")
    for cat, rows in sorted(per_kp.items()):
        for name, row in rows.items():
            table.add_row(cat, name, str(row["points"]), *[f"{row['pck'][a]:.2f}" for a in res["pck"]])
    console.print(table)
