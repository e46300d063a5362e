"""The export parity check: PyTorch vs onnxruntime (or TensorRT) features on real or bundled images.

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
from simplematch.metrics import DEFAULT_ALPHAS

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


PARITY_IMAGES = Path(__file__).with_name("parity_images")
BUNDLED_SOURCE = "bundled photo pairs"


def bundled_images() -> list[np.ndarray]:
    """The export's own parity set: 4 pairs of overlapping photo crops shipped with the package (SOURCE.txt).

    Its own small set, so export needs neither a dataset nor the training-data code; consecutive images are
    the two views of one scene, which :func:`compare_features` pairs.
    """
    return [load_image(p) for p in sorted(PARITY_IMAGES.glob("*.jpg"))]


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
        ).pred
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
        )


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
    """Torch vs onnxruntime (CPU) on ``images`` (default: the bundled photo pairs); raises on an fp32 fail."""
    import onnxruntime as ort

    source = f"{len(images)} real images" if images is not None else ""
    if images is None:
        images, source = bundled_images(), BUNDLED_SOURCE
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


MATCH_TOL_PX = 1e-3  # one-graph keypoints vs the numpy matching of the same features


def run_match_graph(
    sess: Any, src: np.ndarray, tgt: np.ndarray, kps: np.ndarray, valid: np.ndarray, batch: int | None
) -> tuple[np.ndarray, ...]:
    """Run a one-graph session over pairs in chunks (a static batch gets its exact size, last chunk padded).

    Returns ``(tgt_kps, peak_cos, peak_mass, src_features, tgt_features)`` for all pairs.
    """
    from simplematch.export import one_graph as og

    step = batch or 4
    parts: list[list[np.ndarray]] = [[], [], [], [], []]
    for i in range(0, len(src), step):
        n = len(src[i : i + step])
        pad = (batch - n) if batch else 0
        feed = {
            og.SRC_IMAGE: src[i : i + step], og.TGT_IMAGE: tgt[i : i + step],
            og.SRC_KPS: kps[i : i + step], og.KPS_VALID: valid[i : i + step],
        }  # fmt: skip
        if pad:
            feed = {k: np.concatenate([v, np.repeat(v[-1:], pad, axis=0)]) for k, v in feed.items()}
        pred, peak, mass, feats = sess.run(list(og.OUTPUTS), feed)
        b = len(feed[og.SRC_IMAGE])
        for store, value in zip(parts, (pred, peak, mass, feats[:b], feats[b:]), strict=True):
            store.append(value[:n])
    return tuple(np.concatenate(p) for p in parts)


def match_graph_parity(
    model: torch.nn.Module,
    onnx_path: Path,
    cfg: Config,
    *,
    images: list[np.ndarray] | None = None,
    precision: str = "fp32",
    batch: int | None = None,
    n_kps: int = 30,
) -> dict[str, Any]:
    """The one-graph model vs PyTorch and vs the runtime's numpy matching, on pairs (image i, image i + 1).

    * features: torch ``encode`` vs the graph's ``features`` output (the fp32 gate of :func:`enforce`);
    * keypoints: the graph's ``tgt_kps`` vs numpy matching of the graph's own features (pins the in-graph
      matching, gated at 0.5 px agreement; the 1e-3 px fraction is reported) and vs torch matching on torch
      features (the whole path);
    * validity: the last keypoint of every pair is marked invalid and must come back NaN with zero cues.
    """
    import onnxruntime as ort

    from simplematch.matching import match_keypoints
    from simplematch.runtime.matching import match_keypoints as np_match

    source = f"{len(images)} real images" if images is not None else ""
    if images is None:
        images, source = bundled_images(), BUNDLED_SOURCE
    x = np.stack([resize_square(im, cfg.img_size) for im in images])
    y = np.roll(x, -1, axis=0)  # image i is matched into image i + 1
    kps = np.repeat(grid_keypoints(cfg.img_size, n_kps)[None], len(x), axis=0)
    valid = np.ones(kps.shape[:2], dtype=bool)
    valid[:, -1] = False
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    pred, peak, mass, fsrc, ftgt = run_match_graph(sess, x, y, kps, valid, batch)
    ref_feats = torch_features(model, x)
    res = compare_features(ref_feats, fsrc, cfg, n_kps)
    args = (cfg.img_size, cfg.fine_window, cfg.beta, cfg.coord)
    np_m = np_match(fsrc, ftgt, kps, *args)
    np_pred, np_peak, np_mass = np_m.pred, np_m.peak_cos, np_m.peak_mass
    with torch.no_grad():
        ref_t = torch.from_numpy(ref_feats)
        t_pred = match_keypoints(
            ref_t, torch.roll(ref_t, -1, 0), torch.from_numpy(kps), *args, with_cues=False
        ).pred.numpy()
    v = valid
    d_np = np.linalg.norm(pred[v].astype(np.float64) - np_pred[v], axis=-1)
    d_torch = np.linalg.norm(pred[v].astype(np.float64) - t_pred[v], axis=-1)
    invalid_ok = bool(np.isnan(pred[~v]).all() and (peak[~v] == 0).all() and (mass[~v] == 0).all())
    res.update(
        {
            "keypoint_agreement": float((d_np <= AGREE_PX).mean()),
            "graph_vs_numpy_max_px": float(d_np.max()),
            "graph_vs_numpy_within_1e-3px": float((d_np <= MATCH_TOL_PX).mean()),
            "graph_vs_torch_agreement": float((d_torch <= AGREE_PX).mean()),
            "graph_vs_torch_max_px": float(d_torch.max()),
            "peak_cos_max_diff": float(np.abs(peak[v] - np_peak[v]).max()),
            "peak_mass_max_diff": float(np.abs(mass[v] - np_mass[v]).max()),
            "invalid_keypoints_masked": invalid_ok,
            "precision": precision,
            "data": source,
            "runtime": "onnxruntime-cpu (one graph)",
        }
    )
    enforce(res, precision)
    if not invalid_ok:
        raise SimpleMatchError(
            "one-graph check failed: invalid keypoints did not come back as NaN with zero cues",
            "report this as a bug",
        )
    return res


def match_graph_eval(
    onnx_path: Path,
    records: list[Any],
    *,
    alphas: tuple[float, ...] = DEFAULT_ALPHAS,
    threshold: str = "bbox",
    batch_size: int = 4,
    compare_numpy: bool = True,
) -> dict[str, Any]:
    """PCK of a one-graph model on annotated pairs, matching *inside the graph* (resized frame, as the
    PyTorch evaluation's default), and the graph's keypoints against the numpy matching of its own features.

    Pairs are batched with keypoints padded to the longest pair and ``kps_valid`` marking the padding (and
    unannotated keypoints), which is what the validity input is for.
    """
    from simplematch.data.records import pck_threshold
    from simplematch.image import to_model_frame
    from simplematch.metrics import PairPrediction, pck_tables
    from simplematch.runtime.backends import OnnxBackend
    from simplematch.runtime.matching import match_keypoints as np_match

    backend = OnnxBackend(onnx_path)
    meta = backend.meta
    size = meta.img_size
    preds: list[PairPrediction] = []
    diffs = []
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        srcs, tgts, hws = [], [], []
        for rec in chunk:
            s_img, t_img = rec.load("src"), rec.load("trg")
            srcs.append(resize_square(s_img, size))
            tgts.append(resize_square(t_img, size))
            hws.append((s_img.shape[:2], t_img.shape[:2]))
        n = max(len(r.src_kps) for r in chunk)
        kps = np.zeros((len(chunk), n, 2), np.float32)
        valid = np.zeros((len(chunk), n), bool)
        for i, rec in enumerate(chunk):
            ok = np.isfinite(rec.src_kps).all(axis=1) & np.isfinite(rec.trg_kps).all(axis=1)
            m = len(rec.src_kps)
            kps[i, :m] = to_model_frame(np.where(ok[:, None], rec.src_kps, 0.0), hws[i][0], size)
            valid[i, :m] = ok
        pred, _, _, fsrc, ftgt = backend.match(np.stack(srcs), np.stack(tgts), kps, valid)
        if compare_numpy:
            ref = np_match(fsrc, ftgt, kps, size, meta.window, meta.beta, meta.coord).pred
            diffs.append(np.linalg.norm(pred[valid].astype(np.float64) - ref[valid], axis=-1))
        for i, rec in enumerate(chunk):
            m = len(rec.src_kps)
            ok = valid[i, :m]
            thr = pck_threshold(rec, threshold, "resized", img_size=size, valid=ok) if ok.any() else np.nan
            preds.append(
                PairPrediction.of_record(
                    start + i, rec, src_kps=kps[i, :m], gt=to_model_frame(rec.trg_kps, hws[i][1], size),
                    pred=np.nan_to_num(pred[i, :m]), valid=ok, threshold=float(thr),
                )
            )  # fmt: skip
    agg = pck_tables(preds, alphas)
    out: dict[str, Any] = {"pck": agg["pck"], "pairs": agg["pairs"], "points": agg["points"]}
    if diffs:
        d = np.concatenate(diffs)
        out["graph_vs_numpy_max_px"] = float(d.max())
        out["graph_vs_numpy_within_1e-3px"] = float((d <= MATCH_TOL_PX).mean())
    return out
