"""PyTorch dataset over :class:`PairRecord` lists: resize to the model frame, optional training augmentation.

Images go through :func:`simplematch.image.resize_square` (the function the runtime uses), so training,
PyTorch evaluation and the exported model see identical pixels. Augmentation is albumentations (keypoint
aware), as the released code: a bbox-safe random crop (p 0.5), rotation +-30 deg (+-180 for bottles) with
p 0.5 applied to the source, the target or both, per-image photometric changes, and a source/target swap
(p 0.5) for PF-PASCAL. Keypoints pushed out of the image are marked invalid, never dropped, so index i of the
source still corresponds to index i of the target. Every random choice is drawn from (seed, epoch, index).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from simplematch.config import THRESHOLDS
from simplematch.data.records import PairRecord, pck_threshold
from simplematch.errors import SimpleMatchError
from simplematch.image import resize_square, to_model_frame

ROT_LIMIT = 30.0
ROT_LIMIT_WIDE = 180.0  # bottles are rotation-symmetric enough that any angle is plausible (released code)
WIDE_ROTATION_CATEGORIES = ("bottle",)
SWAP_DATASETS = ("pfpascal",)


def _build_pipelines() -> dict[str, Any]:
    import albumentations as A
    import cv2

    kp = dict(format="xy", remove_invisible=False)  # keep every keypoint; validity is decided afterwards

    def geo(transform: Any) -> Any:
        return A.Compose(
            [transform],
            bbox_params=A.BboxParams(format="pascal_voc", label_fields=["bbox_labels"]),
            keypoint_params=A.KeypointParams(**kp),
        )

    rot = dict(interpolation=cv2.INTER_LINEAR, border_mode=cv2.BORDER_CONSTANT, fill=0, p=1.0)
    photometric = A.Compose(
        [
            A.ToGray(p=0.1),
            A.Posterize(p=0.2),
            A.Equalize(p=0.2),
            A.Sharpen(p=0.2),
            A.RandomBrightnessContrast(p=0.2),
            A.Solarize(p=0.2),
            A.ColorJitter(p=0.2),
        ]
    )
    return {
        "crop": geo(A.BBoxSafeRandomCrop(erosion_rate=0.0, p=0.5)),
        "rotate": geo(A.Rotate(limit=ROT_LIMIT, **rot)),
        "rotate_wide": geo(A.Rotate(limit=ROT_LIMIT_WIDE, **rot)),
        "photometric": photometric,
    }


def _safe_bbox(bbox: np.ndarray | None, kps: np.ndarray, w: int, h: int) -> list[float]:
    """The object box clipped to the image; without a box, the keypoints' box (the crop must keep them)."""
    if bbox is None:
        bbox = (
            np.concatenate([kps.min(axis=0), kps.max(axis=0)]) if len(kps) else np.array([0, 0, w, h], float)
        )
    x1, y1, x2, y2 = (float(v) for v in bbox)
    x1, x2 = min(max(x1, 0.0), w - 1.0), min(max(x2, 0.0), float(w))
    y1, y2 = min(max(y1, 0.0), h - 1.0), min(max(y2, 0.0), float(h))
    return [x1, y1, max(x2, x1 + 1.0), max(y2, y1 + 1.0)]


class PairDataset(Dataset):
    """Items (dicts of tensors and strings) for training/evaluation; batch them with :func:`collate_pairs`."""

    def __init__(
        self,
        records: list[PairRecord],
        img_size: int,
        augment: bool = False,
        seed: int = 0,
        *,
        threshold_kind: str | None = None,
    ) -> None:
        self.records = list(records)
        self.img_size = int(img_size)
        self.augment = bool(augment)
        self.seed = int(seed)
        self.epoch = 0
        self.threshold_kind = threshold_kind
        self._pipes: dict[str, Any] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Call once per epoch so augmentation differs between epochs yet stays reproducible."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.records)

    def _kind(self, rec: PairRecord) -> str:
        kind = self.threshold_kind or THRESHOLDS.get(rec.dataset)
        if kind is None:
            raise SimpleMatchError(
                f"no PCK threshold kind for dataset '{rec.dataset}'", "pass threshold_kind"
            )
        return kind

    # --- augmentation ------------------------------------------------------------------------------------
    def _augment_one(
        self,
        img: np.ndarray,
        kps: np.ndarray,
        bbox: np.ndarray | None,
        rotate: str | None,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray]:
        pipes = self._pipes or {}
        h, w = img.shape[:2]
        boxes = [_safe_bbox(bbox, kps, w, h)]
        for name in ("crop", rotate):
            if name is None:
                continue
            pipe = pipes[name]
            pipe.set_random_seed(int(rng.integers(2**31)))
            out = pipe(
                image=img, bboxes=boxes, bbox_labels=[0], keypoints=kps.astype(np.float32).reshape(-1, 2)
            )
            img, kps = out["image"], np.asarray(out["keypoints"], dtype=np.float64).reshape(-1, 2)[:, :2]
            boxes = [list(b) for b in out["bboxes"]] or [[0.0, 0.0, float(img.shape[1]), float(img.shape[0])]]
            boxes = [_safe_bbox(np.asarray(boxes[0]), kps, img.shape[1], img.shape[0])]
        pipes["photometric"].set_random_seed(int(rng.integers(2**31)))
        img = pipes["photometric"](image=img)["image"]
        return np.ascontiguousarray(img), kps

    # --- items -------------------------------------------------------------------------------------------
    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, self.epoch, int(index)])
        if self.augment and rec.dataset in SWAP_DATASETS and rng.random() < 0.5:
            rec = dataclasses.replace(
                rec,
                src_image=rec.trg_image,
                trg_image=rec.src_image,
                src_kps=rec.trg_kps,
                trg_kps=rec.src_kps,
                src_bbox=rec.trg_bbox,
                trg_bbox=rec.src_bbox,
                src_size=rec.trg_size,
                trg_size=rec.src_size,
            )
        src, trg = rec.load("src"), rec.load("trg")
        trg_size = (int(trg.shape[1]), int(trg.shape[0]))
        src_kps, trg_kps = rec.src_kps.copy(), rec.trg_kps.copy()
        valid = np.ones(len(src_kps), dtype=bool)
        if self.augment:
            if self._pipes is None:
                self._pipes = _build_pipelines()
            rot_name = "rotate_wide" if rec.category in WIDE_ROTATION_CATEGORIES else "rotate"
            which = int(rng.integers(3)) if rng.random() < 0.5 else -1  # 0 src, 1 trg, 2 both, -1 none
            src, src_kps = self._augment_one(
                src, src_kps, rec.src_bbox, rot_name if which in (0, 2) else None, rng
            )
            trg, trg_kps = self._augment_one(
                trg, trg_kps, rec.trg_bbox, rot_name if which in (1, 2) else None, rng
            )
            for img, pts in ((src, src_kps), (trg, trg_kps)):
                h, w = img.shape[:2]
                valid &= np.isfinite(pts).all(axis=1)
                valid &= (pts[:, 0] >= 0) & (pts[:, 0] <= w) & (pts[:, 1] >= 0) & (pts[:, 1] <= h)
        s = self.img_size
        src_m = to_model_frame(src_kps, src.shape[:2], s)
        trg_m = to_model_frame(trg_kps, trg.shape[:2], s)
        src_m[~valid] = 0.0  # invalid points carry no coordinates (they may lie far outside the image)
        trg_m[~valid] = 0.0
        kind = self._kind(rec)
        arrays = {"trg_kps": rec.trg_kps, "trg_bbox": rec.trg_bbox, "trg_size": trg_size}
        if self.augment:  # thresholds are for evaluation; here they follow the un-augmented target
            arrays["trg_size"] = rec.image_size("trg")
        return {
            "src_img": torch.from_numpy(resize_square(src, s)),
            "trg_img": torch.from_numpy(resize_square(trg, s)),
            "src_kps": torch.from_numpy(src_m.astype(np.float32)),
            "trg_kps": torch.from_numpy(trg_m.astype(np.float32)),
            "valid": torch.from_numpy(valid),
            "threshold": float(pck_threshold(arrays, kind, "resized", s)),
            # the released threshold exists in the resized frame only (records.check_threshold_frame)
            "threshold_original": (
                float("nan") if kind == "released" else float(pck_threshold(arrays, kind, "original"))
            ),
            "trg_size": torch.tensor(arrays["trg_size"], dtype=torch.float32),
            "trg_kps_original": torch.from_numpy(rec.trg_kps.astype(np.float32)),
            "category": rec.category,
            "pair_id": rec.pair_id,
        }


def collate_pairs(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack items; keypoint arrays are zero-padded to the batch's largest N with ``valid=False``."""
    if not batch:
        raise SimpleMatchError("empty batch", "use a non-empty dataset")
    n_max = max(int(item["src_kps"].shape[0]) for item in batch)
    b = len(batch)
    out: dict[str, Any] = {
        "src_img": torch.stack([item["src_img"] for item in batch]),
        "trg_img": torch.stack([item["trg_img"] for item in batch]),
        "src_kps": torch.zeros(b, n_max, 2),
        "trg_kps": torch.zeros(b, n_max, 2),
        "trg_kps_original": torch.zeros(b, n_max, 2),
        "valid": torch.zeros(b, n_max, dtype=torch.bool),
        "n_kps": torch.tensor([int(item["src_kps"].shape[0]) for item in batch]),
        "threshold": torch.tensor([float(item["threshold"]) for item in batch]),
        "threshold_original": torch.tensor([float(item["threshold_original"]) for item in batch]),
        "trg_size": torch.stack([torch.as_tensor(item["trg_size"], dtype=torch.float32) for item in batch]),
        "category": [item["category"] for item in batch],
        "pair_id": [item["pair_id"] for item in batch],
    }
    for i, item in enumerate(batch):
        n = int(item["src_kps"].shape[0])
        for key in ("src_kps", "trg_kps", "trg_kps_original", "valid"):
            out[key][i, :n] = item[key]
    return out
