"""``smatch calibrate MODEL``: fit the model's calibration on annotated pairs and write a calibrated copy.

The pairs go through the same evaluators as ``smatch eval`` (PyTorch for a checkpoint folder, the
torch-free runtime for an .onnx file), which return every match's raw cues; "correct at alpha" is the
evaluation's own PCK rule (:func:`simplematch.metrics.correct_mask`) with the dataset's threshold.
:func:`simplematch.calibration.fit` turns them into a :class:`~simplematch.calibration.Calibration`, which
goes into the copy's config: ``config.json`` of a checkpoint folder, the ``simplematch.config`` metadata of
an ONNX file. The input model is never modified (an output is never one of the inputs).
"""

from __future__ import annotations

import datetime
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simplematch import calibration
from simplematch.errors import SimpleMatchError


@dataclass(frozen=True)
class CalibrateRequest:
    """The pairs to calibrate on: ``categories`` None = all; ``limit`` a seeded sample as ``smatch eval``;
    ``pairs`` the first N pairs of the split (synthetic: generates N, default 64)."""

    dataset: str = "synthetic"
    data_root: Path | None = None
    split: str = "val"
    categories: Sequence[str] | None = None
    alpha: float = calibration.DEFAULT_ALPHA
    limit: int | None = None
    pairs: int | None = None
    seed: int = 0
    batch_size: int = 8
    device: str = "auto"


def select_categories(records: list, categories: Sequence[str] | None) -> list:
    """The records of ``categories`` (all when None); an unknown name is refused with the known ones."""
    if not categories:
        return records
    known = sorted({str(r.category) for r in records})
    unknown = [c for c in categories if c not in known]
    if unknown:
        raise SimpleMatchError(
            f"unknown categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}",
            f"use some of: {', '.join(known)}",
        )
    return [r for r in records if str(r.category) in set(categories)]


def calibrate_model(
    model: Path, request: CalibrateRequest, out: Path, *, force: bool = False
) -> dict[str, Any]:
    """Fit the calibration of ``model`` on ``request``'s pairs, write the calibrated copy to ``out``.

    Returns ``{"calibration": Calibration.to_dict(), "quality": {...}, "out": str}``; ``quality`` is
    measured on the calibration pairs themselves (in-sample), for the console: judge a calibration on
    other pairs with ``smatch eval OUT``.
    """
    from simplematch import validate
    from simplematch.data.load import load_records_with_info
    from simplematch.evaluation import evaluate_any, sample_pairs
    from simplematch.metrics import auroc, confidence_points

    model = Path(model)
    if not model.exists():
        raise SimpleMatchError(f"model not found: {model}", "pass a checkpoint folder or an .onnx file")
    validate.number(request.alpha, "--alpha", low=0.0, high=1.0, low_open=True, high_open=True)
    if model.is_dir():
        validate.output_dir(out, "--out", inputs=[model], force=force)
    elif model.suffix == ".onnx":
        from simplematch.extras import require

        require("export", "writing a calibrated .onnx file", ("onnx",))
        validate.output_file(out, "--out", suffixes=(".onnx",), inputs=[model], force=force)
    else:
        raise SimpleMatchError(
            f"cannot calibrate {model}",
            "pass a checkpoint folder or an .onnx file (calibrate before building a TensorRT engine)",
        )
    from simplematch.data.records import normalise_split
    from simplematch.evaluation.coco import recorded_config

    trained_on = (recorded_config(model) or {}).get("dataset")
    if normalise_split(request.split) == "trn" and trained_on == request.dataset:
        # Fitted on the pairs the model learned, the probabilities would say "right" far too often.
        raise SimpleMatchError(
            f"--split trn of {request.dataset} holds the pairs {model} was trained on",
            "calibrate on held-out pairs: --split val (or test)",
        )
    data_root, coco, recorded = request.data_root, None, None
    if request.dataset == "coco":
        from simplematch.evaluation.coco import check_held_out, coco_request

        # As `smatch eval`: a model trained on a COCO file is calibrated on its own split of that file (the
        # recorded split options; its recorded file when no --data-root), never on its training images.
        data_root, coco, recorded = coco_request(model, request.dataset, data_root, {})
    records, data = load_records_with_info(
        request.dataset, str(data_root) if data_root else None, request.split,
        seed=request.seed, n_pairs=request.pairs, coco=coco,
    )  # fmt: skip
    if coco is not None:
        check_held_out(model, recorded, data)
    records = select_categories(records, request.categories)
    if request.limit:
        records, _ = sample_pairs(records, request.limit, request.seed)
    preds: list = []
    res = evaluate_any(
        model, records, dataset=request.dataset, split=request.split, alphas=[request.alpha],
        frame="resized", batch_size=request.batch_size, device=request.device, predictions=preds,
    )  # fmt: skip
    raw, ok, pair = confidence_points(preds, request.alpha)
    img_size = int(res["config"]["img_size"])
    cal = calibration.fit(
        raw, ok, img_size, groups=pair, alpha=request.alpha, dataset=request.dataset, split=request.split,
        pairs=len(records), date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        extra={"threshold": res["threshold"], "categories": sorted({str(r.category) for r in records}),
               "img_size": img_size, "model_sha256": res["model"].get("sha256")},
    )  # fmt: skip
    prob = calibration.apply(cal, raw, img_size)
    quality = {
        "points": len(ok),
        "correct_fraction": float(ok.mean()),
        "auroc": auroc(prob, ok),
        "ece": calibration.expected_calibration_error(prob, ok),
        "brier": calibration.brier_score(prob, ok),
    }
    write_calibrated(model, out, cal)
    return {"calibration": cal.to_dict(), "quality": quality, "out": str(out)}


def write_calibrated(model: Path, out: Path, cal: calibration.Calibration) -> None:
    """A copy of ``model`` whose config carries ``cal``; built beside ``out`` and moved in place at the end,
    so a failure leaves nothing behind."""
    from simplematch.files import atomic_path

    if model.is_dir():
        from simplematch.config import Config

        cfg = Config.load(model / "config.json")
        cfg.calibration = cal.to_dict()
        cfg.validate()
        tmp = out.with_name(f".{out.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            # Weights only: the optimizer state of resumable checkpoints (ckpt-*/) is not part of the model.
            shutil.copytree(model, tmp, ignore=shutil.ignore_patterns("ckpt-*", "state.pt"))
            cfg.save(tmp / "config.json")
            if out.exists():
                shutil.rmtree(out)  # --force, checked by validate.output_dir
            tmp.rename(out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    import onnx

    from simplematch.metadata import PREFIX

    proto = onnx.load(str(model))
    props = {p.key: p for p in proto.metadata_props}
    key = PREFIX + "config"
    config = json.loads(props[key].value) if key in props else {}
    config["calibration"] = cal.to_dict()
    if key not in props:
        props[key] = proto.metadata_props.add()
        props[key].key = key
    props[key].value = json.dumps(config, sort_keys=True)
    with atomic_path(out) as tmp:
        onnx.save(proto, str(tmp))
