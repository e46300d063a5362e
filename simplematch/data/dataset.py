"""PyTorch dataset over :class:`PairRecord` lists: resize to the model frame, optional training augmentation.

Images go through :func:`simplematch.image.resize_square` / :func:`simplematch.image.resize_bilinear` (the
functions the runtime uses, OpenCV bilinear as released), so training, PyTorch evaluation and the exported
model see identical pixels.

Training augmentation follows the released pipelines, per dataset (:func:`train_transforms`):

* SPair-71k: crop -> rotation -> photometric.
* PF-PASCAL: crop -> photometric -> source/target exchange (p 0.5); rotation too for iBOT, as released.
* AP-10K: plain resize -> photometric (no crop, no rotation).

``crop``: one decision per pair (p 0.5): both images are squash-resized to S x S, or each is cropped around
its object box (albumentations ``BBoxSafeRandomCrop``) and resized to S x S; keypoints the crop cut off are
clipped to [0, S-1] and kept as supervision (released ``RandomCrop``). ``rotate`` (p 0.5): one angle per
pair, uniform in +-30 deg (+-180 for bottles), applied to the source, the target or both (1/3 each) about
the centre on an enlarged canvas (albumentations ``Affine(fit_output=True)``), so no keypoint is lost; then
every image is resized to S x S (released ``RandomRotation``). ``photometric``: the released ``NormalAug``,
per image. Every random choice is drawn from (seed, epoch, index).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from simplematch.config import THRESHOLDS, backbone_family
from simplematch.data.records import PairRecord, pck_threshold
from simplematch.errors import SimpleMatchError
from simplematch.image import resize_bilinear, resize_square, to_model_frame

ROT_LIMIT = 30.0
ROT_LIMIT_WIDE = 180.0  # bottles are rotation-symmetric enough that any angle is plausible (released code)
WIDE_ROTATION_CATEGORIES = ("bottle",)
CROP_P = ROTATE_P = SWAP_P = 0.5

# The released train pipelines (configs/task_*.py), step names in order.
_SPAIR = ("crop", "rotate", "photometric")
TRAIN_TRANSFORMS: dict[str, tuple[str, ...]] = {
    "spair": _SPAIR,
    "pfpascal": ("crop", "photometric", "swap"),
    "pfpascal/ibot": ("crop", "rotate", "photometric", "swap"),
    "ap10k": ("photometric",),
    "synthetic": _SPAIR,  # not a released dataset: the SPair pipeline (demo_cpu)
    "pfwillow": (),  # test-only benchmark
    "coco": _SPAIR,  # your own COCO keypoints: the SPair-71k pipeline (its crop keeps the annotation's bbox)
}


def train_transforms(dataset: str, backbone: str | None = None) -> tuple[str, ...]:
    """The released training augmentation of ``dataset`` (PF-PASCAL rotates only for iBOT ViT-B/16)."""
    if dataset == "pfpascal" and backbone is not None and _is_ibot(backbone):
        return TRAIN_TRANSFORMS["pfpascal/ibot"]
    if dataset not in TRAIN_TRANSFORMS:
        raise SimpleMatchError(f"no training augmentation for dataset '{dataset}'", "use a known dataset")
    return TRAIN_TRANSFORMS[dataset]


def _is_ibot(backbone: str) -> bool:
    # iBOT ViT-B/16 is built as timm's vit_base_patch16_224 (see config.py's ibot presets)
    return backbone_family(backbone) == "vit" and "patch16" in backbone and "dinov2" not in backbone


def _build_pipelines() -> dict[str, Any]:
    import albumentations as A

    kp = A.KeypointParams(format="xy", remove_invisible=False)  # keep every keypoint
    crop = A.Compose(
        [A.BBoxSafeRandomCrop(erosion_rate=0.0, p=1.0)],
        bbox_params=A.BboxParams(format="pascal_voc", label_fields=["bbox_labels"]),
        keypoint_params=kp,
    )
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
    return {"crop": crop, "photometric": photometric, "keypoints": kp}


def _rotate(img: np.ndarray, kps: np.ndarray, angle: float, kp_params: Any) -> tuple[np.ndarray, np.ndarray]:
    """Rotate by ``angle`` degrees about the centre on a canvas enlarged to hold the whole image."""
    import albumentations as A
    import cv2

    rot = A.Compose(
        [
            A.Affine(
                rotate=(angle, angle),
                fit_output=True,
                interpolation=cv2.INTER_LINEAR,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                p=1.0,
            )  # fmt: skip
        ],
        keypoint_params=kp_params,
    )
    out = rot(image=img, keypoints=kps.astype(np.float32).reshape(-1, 2))
    return out["image"], np.asarray(out["keypoints"], dtype=np.float64).reshape(-1, 2)[:, :2]


def _squash(img: np.ndarray, kps: np.ndarray, s: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize to s x s with the shared (released) interpolation; keypoints scaled per axis."""
    return resize_bilinear(img, s, s), to_model_frame(kps, img.shape[:2], s)


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
        transforms: tuple[str, ...] | None = None,
    ) -> None:
        """``transforms``: the training augmentation steps (default: :func:`train_transforms` of each
        record's dataset); only used with ``augment``."""
        self.records = list(records)
        self.img_size = int(img_size)
        self.augment = bool(augment)
        self.transforms = transforms
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
    def _crop(self, img: np.ndarray, kps: np.ndarray, bbox: np.ndarray | None, rng: np.random.Generator):
        """Random bbox-safe crop (library), resized to S x S; cut-off keypoints clipped to [0, S-1], kept."""
        pipe = (self._pipes or {})["crop"]
        pipe.set_random_seed(int(rng.integers(2**31)))
        h, w = img.shape[:2]
        out = pipe(
            image=img, bboxes=[_safe_bbox(bbox, kps, w, h)], bbox_labels=[0],
            keypoints=kps.astype(np.float32).reshape(-1, 2),
        )  # fmt: skip
        crop, pts = out["image"], np.asarray(out["keypoints"], dtype=np.float64).reshape(-1, 2)[:, :2]
        crop, pts = _squash(crop, pts, self.img_size)
        return crop, np.clip(pts, 0.0, self.img_size - 1.0)

    def _rotate(self, img: np.ndarray, kps: np.ndarray, angle: float):
        return _rotate(img, kps, angle, (self._pipes or {})["keypoints"])

    def _photometric(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        pipe = (self._pipes or {})["photometric"]
        pipe.set_random_seed(int(rng.integers(2**31)))
        return np.ascontiguousarray(pipe(image=img)["image"])

    def _augment(self, rec: PairRecord, src, src_kps, trg, trg_kps, rng: np.random.Generator):
        """The released pipeline of this record's dataset, step by step (see the module docstring)."""
        if self._pipes is None:
            self._pipes = _build_pipelines()
        steps = self.transforms if self.transforms is not None else train_transforms(rec.dataset)
        s = self.img_size
        if "crop" in steps:
            if rng.random() < CROP_P:  # one decision per pair, each image its own window
                src, src_kps = self._crop(src, src_kps, rec.src_bbox, rng)
                trg, trg_kps = self._crop(trg, trg_kps, rec.trg_bbox, rng)
            else:
                (src, src_kps), (trg, trg_kps) = _squash(src, src_kps, s), _squash(trg, trg_kps, s)
        if "rotate" in steps:
            if src.shape[:2] != (s, s):  # released RandomRotation works on S x S images
                (src, src_kps), (trg, trg_kps) = _squash(src, src_kps, s), _squash(trg, trg_kps, s)
            if rng.random() < ROTATE_P:
                limit = ROT_LIMIT_WIDE if rec.category in WIDE_ROTATION_CATEGORIES else ROT_LIMIT
                angle = float(rng.uniform(-limit, limit))  # the same angle for both images
                which = int(rng.integers(3))  # 0 source, 1 target, 2 both
                if which in (0, 2):
                    src, src_kps = self._rotate(src, src_kps, angle)
                if which in (1, 2):
                    trg, trg_kps = self._rotate(trg, trg_kps, angle)
        if "photometric" in steps:
            src, trg = self._photometric(src, rng), self._photometric(trg, rng)
        return src, src_kps, trg, trg_kps

    # --- items -------------------------------------------------------------------------------------------
    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, self.epoch, int(index)])
        steps = self.transforms if self.transforms is not None else train_transforms(rec.dataset)
        if self.augment and "swap" in steps and rng.random() < SWAP_P:
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
            src, src_kps, trg, trg_kps = self._augment(rec, src, src_kps, trg, trg_kps, rng)
            for img, pts in ((src, src_kps), (trg, trg_kps)):
                h, w = img.shape[:2]
                valid &= np.isfinite(pts).all(axis=1)  # nothing is cut off any more; a safety net only
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
