"""PCK evaluation of a PyTorch model (``smatch eval CHECKPOINT_DIR``).

This module only *predicts*: one :class:`simplematch.metrics.PairPrediction` per pair (keypoints, ground
truth, prediction, threshold, confidence cues). :func:`simplematch.metrics.score_predictions` counts
(``d < alpha * threshold``), aggregates (per-image mean, pooled per point, per category), measures the
confidence and builds the JSON -- the same function the runtime evaluation (``smatch eval MODEL.onnx``)
feeds, which is what makes "the runtime reproduces the PyTorch PCK" a like-for-like comparison.

Distributed: each rank evaluates ``pairs[rank::world]``; the per-pair predictions are gathered (exact
per-pair arrays, no float reduction) so the totals equal the single-process numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from simplematch import calibration
from simplematch import distributed as dist_utils
from simplematch.confidence import DEFAULT_CONFIDENCE, confidence_cues
from simplematch.config import Config
from simplematch.data.dataset import PairDataset, collate_pairs
from simplematch.metrics import DEFAULT_ALPHAS, PairPrediction, score_predictions
from simplematch.runtime.matching import Matches


@torch.no_grad()
def predict_pairs_torch(
    model: torch.nn.Module,
    dataset: PairDataset,
    *,
    frame: str = "resized",
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    window: int | None = None,
    num_workers: int = 0,
    progress: Any = None,
    cal: calibration.Calibration | None = None,
) -> list[PairPrediction]:
    """This rank's share of the pairs as :class:`PairPrediction` (the runtime evaluation's twin); ``cal``
    adds the ``calibrated`` cue, as the runtime's Matcher does for a calibrated model."""
    device = torch.device(device)
    indices = list(range(dist_utils.rank(), len(dataset), dist_utils.world_size()))
    # Own generator: a DataLoader iterator draws a base seed, and drawing it from the global torch RNG would
    # make validation during training shift the dropout stream (a resumed run would then diverge).
    loader = DataLoader(
        Subset(dataset, indices), batch_size=batch_size, shuffle=False, num_workers=num_workers,
        collate_fn=collate_pairs, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    was_training = model.training
    model.eval()
    out: list[PairPrediction] = []
    pos = 0
    for batch in loader:
        src = batch["src_img"].to(device)
        kps = batch["src_kps"].to(device)
        m = model.predict(src, batch["trg_img"].to(device), kps, window=window)
        m = Matches(*(t.double().cpu().numpy() for t in m))  # (B, N, ...) numpy: the runtime's type
        raw = {k: x for k, x in m._asdict().items() if k != "pred"}
        cues = calibration.with_calibrated(confidence_cues(m, src.shape[-1]), raw, src.shape[-1], cal)
        pred = m.pred
        valid = batch["valid"].numpy()
        if frame == "original":
            size = np.asarray(batch["trg_size"], dtype=np.float64)  # (B, 2) original (w, h)
            pred = pred * (size / float(src.shape[-1]))[:, None, :]
            gt = batch["trg_kps_original"].double().numpy()
            thr = np.asarray(batch["threshold_original"], dtype=np.float64)
        else:
            gt = batch["trg_kps"].double().numpy()
            thr = np.asarray(batch["threshold"], dtype=np.float64)
        for i in range(pred.shape[0]):
            rec = dataset.records[indices[pos + i]]
            skps = rec.src_kps if frame == "original" else batch["src_kps"][i].double().numpy()
            n = int(batch["n_kps"][i])  # the batch is zero-padded to its largest N
            v = valid[i, :n].astype(bool)
            out.append(
                PairPrediction.of_record(
                    indices[pos + i], rec, src_kps=skps[:n], gt=gt[i, :n], pred=pred[i, :n], valid=v,
                    threshold=float(thr[i]) if v.any() else float("nan"),
                    raw={k: x[i, :n] for k, x in raw.items()},
                    cues={k: c[i, :n] for k, c in cues.items()},
                )
            )  # fmt: skip
        pos += pred.shape[0]
        if progress is not None:
            progress(pred.shape[0])
    model.train(was_training)
    return out


def gather_predictions(local: list[PairPrediction]) -> list[PairPrediction]:
    """All ranks' per-pair predictions in dataset order (exact arrays, no float reduction)."""
    merged = [row for part in dist_utils.gather_objects(local) for row in part]
    return sorted(merged, key=lambda r: r.index)


def evaluate_model(
    model: torch.nn.Module,
    cfg: Config,
    records: list,
    *,
    dataset: str,
    split: str,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    frame: str = "resized",
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    window: int | None = None,
    model_info: dict[str, Any] | None = None,
    progress: Any = None,
    threshold: str | None = None,
    released_compat: bool = False,
    confidence: str = DEFAULT_CONFIDENCE,
    min_confidence: float | None = None,
    sample: dict[str, Any] | None = None,
    predictions: list[PairPrediction] | None = None,
) -> dict[str, Any]:
    """The evaluation JSON; ``predictions``, when a list, receives the gathered per-pair predictions.

    ``threshold``: PCK threshold kind (None: the dataset's convention; records.resolve_threshold).
    ``released_compat``: the released code's scoring quirks (released threshold, ``<=``; docs/recipe.md).
    """
    from simplematch.data.records import threshold_kind
    from simplematch.geometry import feature_side
    from simplematch.validate import window as check_window

    check_window(window, feature_side(cfg.img_size))
    kind = threshold_kind(dataset, threshold, frame, released_compat)
    ds = PairDataset(records, cfg.img_size, augment=False, seed=cfg.seed, threshold_kind=kind)
    local = predict_pairs_torch(
        model, ds, frame=frame, batch_size=batch_size, device=device, window=window, progress=progress,
        cal=calibration.from_config(cfg.to_dict()),
    )  # fmt: skip
    return score_predictions(
        gather_predictions(local), alphas, config=cfg.to_dict(), threshold=kind,
        model=model_info or {"path": None, "sha256": None}, window=window, released_compat=released_compat,
        predictions=predictions, dataset=dataset, split=split, frame=frame, confidence=confidence,
        min_confidence=min_confidence, sample=sample,
    )  # fmt: skip


def checkpoint_info(ckpt_dir: str | Path) -> dict[str, Any]:
    from simplematch.files import sha256_file

    path = Path(ckpt_dir)
    weights = path / "model.safetensors" if path.is_dir() else path
    return {"path": str(path), "sha256": sha256_file(weights) if weights.is_file() else None}
