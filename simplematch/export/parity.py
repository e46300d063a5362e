"""The export parity check: PyTorch vs onnxruntime (or TensorRT) features on real or synthetic images.

Reports max / mean absolute feature difference and the fraction of keypoint predictions that agree within
0.5 px after matching (torch matching on the torch features, the runtime's numpy matching on the exported
features, so the whole deployment path is compared). fp32 must reach max abs diff <= 1e-4 and >= 99.9 %
agreement or the export fails.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simplematch.config import Config
from simplematch.errors import SimpleMatchError
from simplematch.image import load_image, resize_square

FP32_MAX_ABS = 1e-4
FP32_MIN_AGREEMENT = 0.999
AGREE_PX = 0.5
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def images_from_dir(root: Path, limit: int = 8) -> list[np.ndarray]:
    """Up to ``limit`` images under ``root`` (e.g. a PF-WILLOW root), taken in turn from each sub-folder.

    Round-robin over folders so a class-per-folder dataset contributes every class (sorted order alone
    would give 8 cars from PF-WILLOW); the selection is deterministic.
    """
    root = Path(root)
    if not root.is_dir():
        raise SimpleMatchError(
            f"--check-data {root} is not a folder", "point it at a folder of images (e.g. PF-WILLOW)"
        )
    groups: dict[Path, list[Path]] = {}
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
            groups.setdefault(p.parent, []).append(p)
    paths: list[Path] = []
    queues = [list(g) for g in groups.values()]
    while len(paths) < limit and any(queues):
        for q in queues:
            if q and len(paths) < limit:
                paths.append(q.pop(0))
    if len(paths) < 2:
        raise SimpleMatchError(
            f"fewer than 2 images under {root}", "point --check-data at a folder with images"
        )
    return [load_image(p) for p in paths]


def synthetic_images(limit: int = 8, seed: int = 0) -> list[np.ndarray]:
    """Images of held-out synthetic pairs (source and target of each pair)."""
    from simplematch.data import load_records

    out: list[np.ndarray] = []
    for rec in load_records("synthetic", None, "test", seed=seed, n_pairs=(limit + 1) // 2):
        out.extend([rec.load("src"), rec.load("trg")])
    return out[:limit]


def grid_keypoints(img_size: int, n: int = 30) -> np.ndarray:
    """``n`` source keypoints spread over the image (6 x 5 grid for 30), in model-frame pixels."""
    cols = int(np.ceil(np.sqrt(n * 1.2)))
    rows = int(np.ceil(n / cols))
    xs = (np.arange(cols) + 0.5) * img_size / cols
    ys = (np.arange(rows) + 0.5) * img_size / rows
    grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    return grid[:n].astype(np.float32)


def compare_features(
    torch_feats: np.ndarray, other_feats: np.ndarray, cfg: Config, n_kps: int = 30
) -> dict[str, float | int]:
    """Feature error and keypoint agreement between two (B, C, h, w) feature stacks of the same images."""
    from simplematch.matching import match_keypoints
    from simplematch.runtime.matching import match_keypoints as np_match_keypoints

    diff = np.abs(torch_feats.astype(np.float64) - other_feats.astype(np.float64))
    kps = grid_keypoints(cfg.img_size, n_kps)
    agree = total = 0
    worst = 0.0
    n = torch_feats.shape[0]
    for i in range(n):
        j = (i + 1) % n  # pair each image with the next one
        ref = match_keypoints(
            torch.from_numpy(torch_feats[i : i + 1]), torch.from_numpy(torch_feats[j : j + 1]),
            torch.from_numpy(kps)[None], cfg.img_size, cfg.fine_window, cfg.beta, cfg.coord,
        ).pred[0].numpy()  # fmt: skip
        got = np_match_keypoints(
            other_feats[i], other_feats[j], kps, cfg.img_size, cfg.fine_window, cfg.beta, cfg.coord
        ).pred  # noqa: E501
        d = np.linalg.norm(ref.astype(np.float64) - got.astype(np.float64), axis=-1)
        agree += int((d <= AGREE_PX).sum())
        total += d.size
        worst = max(worst, float(d.max()))
    return {
        "max_abs_feature_diff": float(diff.max()),
        "mean_abs_feature_diff": float(diff.mean()),
        "keypoint_agreement": agree / max(total, 1),
        "max_keypoint_diff_px": worst,
        "images": n,
        "keypoints": total,
    }


def torch_features(model: torch.nn.Module, x: np.ndarray, chunk: int = 4) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate(
            [
                model.encode(torch.from_numpy(x[i : i + chunk])).float().numpy()
                for i in range(0, len(x), chunk)
            ]
        )  # noqa: E501


def run_in_batches(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch: int | None) -> np.ndarray:
    """Feed ``x`` in chunks; a static-batch model gets its exact batch size (last chunk padded)."""
    step = batch or 4
    outs = []
    for i in range(0, len(x), step):
        part = x[i : i + step]
        if batch and len(part) < batch:
            pad = np.repeat(part[-1:], batch - len(part), axis=0)
            outs.append(fn(np.concatenate([part, pad]))[: len(part)])
        else:
            outs.append(fn(part))
    return np.concatenate(outs)


def parity_check(
    model: torch.nn.Module,
    onnx_path: Path,
    cfg: Config,
    *,
    images: list[np.ndarray] | None = None,
    precision: str = "fp32",
    batch: int | None = None,
) -> dict[str, Any]:
    """Torch vs onnxruntime (CPU) on ``images`` (default: synthetic pairs). Raises on an fp32 failure."""
    import onnxruntime as ort

    source = f"{len(images)} real images" if images is not None else ""
    if images is None:
        images, source = synthetic_images(), "synthetic pairs"
    x = np.stack([resize_square(im, cfg.img_size) for im in images])
    ref = torch_features(model, x)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    got = run_in_batches(lambda b: sess.run(None, {sess.get_inputs()[0].name: b})[0], x, batch)
    res = {
        **compare_features(ref, got, cfg),
        "precision": precision,
        "data": source,
        "runtime": "onnxruntime-cpu",
    }
    enforce(res, precision)
    return res


def enforce(res: dict[str, Any], precision: str) -> None:
    if precision != "fp32":
        return  # fp16 error is measured and reported, not gated
    if res["max_abs_feature_diff"] > FP32_MAX_ABS or res["keypoint_agreement"] < FP32_MIN_AGREEMENT:
        diff, agree, need = (
            res["max_abs_feature_diff"],
            res["keypoint_agreement"] * 100,
            FP32_MIN_AGREEMENT * 100,
        )
        raise SimpleMatchError(
            f"parity check failed ({res.get('runtime', 'runtime')}): max abs feature diff {diff:.2e}"
            f" (limit {FP32_MAX_ABS:.0e}), keypoint agreement {agree:.2f}% (need {need:.1f}%);"
            " no file was written",
            "report this with the checkpoint; --no-check skips the check at your own risk",
        )
