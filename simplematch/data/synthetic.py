"""Synthetic pairs with exact correspondences, built offline from scikit-image's bundled sample photos.

Pair ``i`` of split ``s`` with seed ``k`` is a pure function of ``(k, s, i)``: a random crop of a photo is the
source; the target is the source warped by a random homography composed with a smooth thin-plate-spline
displacement (skimage.transform), followed by a photometric change (per-channel gain, gamma, offset). Source
keypoints are Harris corners (textured locations) of the photo that fall inside the crop; each is mapped into
the target by solving ``G(y) = x`` for the target->source map ``G`` that also warps the pixels, so the
correspondence is exact up to the solver tolerance (1e-6 px); points that land outside the target are dropped.

Held-out means held out: the training split uses ``TRAIN_PHOTOS`` and the val/test splits use the disjoint
``HELDOUT_PHOTOS`` (different scenes; ``chelsea`` and ``cat`` are the same photo, so neither is in training).
Images are 160-256 px per side. Records carry lazy image sources: thousands of records cost no image memory.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from PIL import Image

from simplematch.data.records import PairRecord, normalise_split
from simplematch.errors import SimpleMatchError

TRAIN_PHOTOS = ("astronaut", "coffee", "rocket", "immunohistochemistry", "motorcycle_left", "camera")
HELDOUT_PHOTOS = ("chelsea", "hubble_deep_field", "coins")
SPLIT_CODE = {"trn": 0, "val": 1, "test": 2}
DEFAULT_PAIRS = {"trn": 2000, "val": 64, "test": 64}
SIZE_RANGE = (160, 256)
PHOTO_MAX_SIDE = 384  # photos are pre-shrunk once: crops are resized to <= 256 px anyway
KPS_RANGE = (8, 30)
MIN_KPS = 4
SOLVER_TOL = 1e-6


@functools.cache
def _photo(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(photo (H, W, 3) uint8, Harris corners (M, 2) x, y) for a bundled skimage sample (no network)."""
    import skimage.data
    from skimage.feature import corner_harris, corner_peaks

    if name == "motorcycle_left":
        arr = skimage.data.stereo_motorcycle()[0]
    else:
        arr = getattr(skimage.data, name)()
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    pil = Image.fromarray(arr[:, :, :3].astype(np.uint8))
    scale = PHOTO_MAX_SIDE / max(pil.size)
    if scale < 1:
        pil = pil.resize((round(pil.size[0] * scale), round(pil.size[1] * scale)), Image.Resampling.BILINEAR)
    arr = np.asarray(pil)
    gray = arr.astype(np.float64).mean(axis=2) / 255.0
    peaks = corner_peaks(
        corner_harris(gray, sigma=1.5), min_distance=4, threshold_rel=0.005, exclude_border=6
    )
    return arr, peaks[:, ::-1].astype(np.float64)  # (row, col) -> (x, y)


@dataclass(frozen=True)
class SyntheticPairSpec:
    """Everything needed to regenerate one pair's pixels (small and picklable for DataLoader workers)."""

    photo: str
    crop: tuple[float, float, float, float]  # x0, y0, x1, y1 in photo pixels
    src_size: tuple[int, int]  # (w, h)
    trg_size: tuple[int, int]
    homography: tuple[float, ...]  # 9 values, source -> target (row-major 3x3)
    tps_ctrl: tuple[float, ...]  # K x 2 control points in the homography-unwarped source frame
    tps_dst: tuple[float, ...]  # where they map in the source frame (smooth near-identity displacement)
    gain: tuple[float, float, float]
    gamma: float
    offset: float

    @functools.cached_property
    def _maps(self):
        from skimage.transform import ProjectiveTransform, ThinPlateSplineTransform

        hom = ProjectiveTransform(np.asarray(self.homography, dtype=np.float64).reshape(3, 3))
        tps = ThinPlateSplineTransform.from_estimate(
            np.asarray(self.tps_ctrl).reshape(-1, 2), np.asarray(self.tps_dst).reshape(-1, 2)
        )
        if not tps:
            raise SimpleMatchError(f"synthetic pair for {self.photo}: degenerate warp", "use another seed")
        return hom, tps

    def inverse_map(self, points: np.ndarray) -> np.ndarray:
        """Target pixel (x, y) -> source pixel: G = TPS(H^-1(y)). The SAME map warps the pixels."""
        hom, tps = self._maps
        return np.asarray(tps(hom.inverse(np.asarray(points, dtype=np.float64).reshape(-1, 2))))

    def forward_homography(self, points: np.ndarray) -> np.ndarray:
        return np.asarray(self._maps[0](np.asarray(points, dtype=np.float64).reshape(-1, 2)))

    def source(self) -> np.ndarray:
        photo = _photo(self.photo)[0]
        pil = Image.fromarray(photo).resize(self.src_size, Image.Resampling.BILINEAR, box=self.crop)
        return np.asarray(pil)

    def warp(self, image: np.ndarray) -> np.ndarray:
        """Any (h, w[, c]) float image in the source frame -> the target frame (bilinear, zero outside)."""
        from skimage.transform import warp

        w, h = self.trg_size
        return warp(image, self.inverse_map, output_shape=(h, w), order=1, mode="constant", cval=0.0)

    def target(self) -> np.ndarray:
        img = self.warp(self.source().astype(np.float64) / 255.0)
        img = np.clip(img * np.asarray(self.gain), 0.0, 1.0) ** self.gamma + self.offset
        return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


class SyntheticImage:
    """Lazy image source: calling it renders the pair's source or target image."""

    def __init__(self, spec: SyntheticPairSpec, side: str) -> None:
        self.spec, self.side = spec, side

    def __call__(self) -> np.ndarray:
        return _render(self.spec, self.side)

    def __repr__(self) -> str:
        return f"SyntheticImage({self.spec.photo}, {self.side})"


@functools.lru_cache(maxsize=4096)
def _render(spec: SyntheticPairSpec, side: str) -> np.ndarray:
    """Rendered pixels, cached: rendering a warped target costs ~50 ms and training revisits every pair once
    per epoch (4096 images of <= 256 px stay under ~800 MB). Read-only, so a cached array stays pristine."""
    img = spec.source() if side == "src" else spec.target()
    img.setflags(write=False)
    return img


def _solve_targets(spec: SyntheticPairSpec, src: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Target points y with G(y) = src, by batched Newton steps (finite-difference 2x2 Jacobians).

    Hand-written because skimage's ThinPlateSplineTransform has no inverse and scipy.optimize.root works one
    point at a time (~100x slower for 30 points); G is a near-identity-composed homography, so Newton from the
    homography guess converges in a few steps. Returns (y, converged mask).
    """
    y = spec.forward_homography(src)
    eps = 1e-3
    ex, ey = np.array([eps, 0.0]), np.array([0.0, eps])
    for _ in range(30):
        r = spec.inverse_map(y) - src
        if np.all(np.abs(r) < SOLVER_TOL * 1e-2):
            break
        jx = (spec.inverse_map(y + ex) - spec.inverse_map(y - ex)) / (2 * eps)
        jy = (spec.inverse_map(y + ey) - spec.inverse_map(y - ey)) / (2 * eps)
        jac = np.stack([jx, jy], axis=2)  # d G / d (x, y): (N, 2, 2)
        det = np.linalg.det(jac)
        ok = np.abs(det) > 1e-8
        step = np.zeros_like(y)
        if ok.any():
            step[ok] = np.linalg.solve(jac[ok], -r[ok][:, :, None])[:, :, 0]
        y = y + np.clip(step, -50.0, 50.0)
    err = np.abs(spec.inverse_map(y) - src).max(axis=1)
    return y, np.isfinite(y).all(axis=1) & (err < SOLVER_TOL)


def _make_spec(rng: np.random.Generator, photos: tuple[str, ...]) -> tuple[SyntheticPairSpec, np.ndarray]:
    from skimage.transform import ProjectiveTransform

    name = photos[int(rng.integers(len(photos)))]
    photo, corners = _photo(name)
    ph, pw = photo.shape[:2]
    cw, ch = rng.uniform(0.55, 1.0) * pw, rng.uniform(0.55, 1.0) * ph
    x0, y0 = rng.uniform(0, pw - cw), rng.uniform(0, ph - ch)
    sw, sh = (int(v) for v in rng.integers(SIZE_RANGE[0], SIZE_RANGE[1] + 1, size=2))
    tw, th = (int(v) for v in rng.integers(SIZE_RANGE[0], SIZE_RANGE[1] + 1, size=2))

    # Homography: the source rectangle goes to a rotated, scaled, shifted, corner-jittered target quad.
    src_quad = np.array([[0, 0], [sw - 1, 0], [sw - 1, sh - 1], [0, sh - 1]], dtype=np.float64)
    unit = (src_quad / [sw - 1, sh - 1] - 0.5) * rng.uniform(0.8, 1.15)
    ang = np.deg2rad(rng.uniform(-25, 25))
    rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    quad = unit @ rot.T + 0.5 + rng.uniform(-0.08, 0.08, size=2) + rng.uniform(-0.07, 0.07, size=(4, 2))
    hom = ProjectiveTransform.from_estimate(src_quad, quad * [tw - 1, th - 1])
    if not hom:
        raise SimpleMatchError("synthetic homography estimation failed", "use another seed")

    # Smooth displacement: a thin-plate spline through a jittered 4x4 grid (amplitude ~3% of the size).
    gx, gy = np.meshgrid(np.linspace(0, sw - 1, 4), np.linspace(0, sh - 1, 4))
    ctrl = np.stack([gx.ravel(), gy.ravel()], axis=1)
    dst = ctrl + rng.normal(0.0, 0.03, size=ctrl.shape) * [sw, sh]

    spec = SyntheticPairSpec(
        photo=name,
        crop=(float(x0), float(y0), float(x0 + cw), float(y0 + ch)),
        src_size=(sw, sh),
        trg_size=(tw, th),
        homography=tuple(float(v) for v in np.asarray(hom.params).ravel()),
        tps_ctrl=tuple(float(v) for v in ctrl.ravel()),
        tps_dst=tuple(float(v) for v in dst.ravel()),
        gain=tuple(float(v) for v in rng.uniform(0.8, 1.2, size=3)),  # type: ignore[arg-type]
        gamma=float(rng.uniform(0.75, 1.35)),
        offset=float(rng.uniform(-0.06, 0.06)),
    )
    # Photo corners -> source pixels (PIL's box resize maps pixel centres linearly), away from the border.
    pts = (corners + 0.5 - [x0, y0]) * [sw / cw, sh / ch] - 0.5
    pts = pts[(pts[:, 0] >= 4) & (pts[:, 0] <= sw - 5) & (pts[:, 1] >= 4) & (pts[:, 1] <= sh - 5)]
    n = int(rng.integers(KPS_RANGE[0], KPS_RANGE[1] + 1))
    if len(pts) >= n:
        pts = pts[rng.choice(len(pts), size=n, replace=False)]
    else:  # low-texture crop: top up with uniform points so every pair has enough keypoints
        extra = rng.uniform([4, 4], [sw - 5, sh - 5], size=(n - len(pts), 2))
        pts = np.concatenate([pts, extra])
    return spec, pts


def make_synthetic_pair(split: str, index: int, seed: int = 0) -> PairRecord:
    """Pair ``index`` of ``split`` (trn uses TRAIN_PHOTOS; val/test HELDOUT_PHOTOS); deterministic."""
    split = normalise_split(split)
    photos = TRAIN_PHOTOS if split == "trn" else HELDOUT_PHOTOS
    for attempt in range(20):
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, SPLIT_CODE[split], int(index), attempt])
        spec, src = _make_spec(rng, photos)
        trg, ok = _solve_targets(spec, src)
        tw, th = spec.trg_size
        ok &= (trg[:, 0] >= 0) & (trg[:, 0] <= tw - 1) & (trg[:, 1] >= 0) & (trg[:, 1] <= th - 1)
        if ok.sum() >= MIN_KPS:
            return PairRecord(
                src_image=SyntheticImage(spec, "src"),
                trg_image=SyntheticImage(spec, "trg"),
                src_kps=src[ok],
                trg_kps=trg[ok],
                category=spec.photo,
                pair_id=f"synthetic-{split}-{seed}-{index:06d}",
                src_size=spec.src_size,
                trg_size=spec.trg_size,
                dataset="synthetic",
                meta={"spec": spec},
            )
    raise SimpleMatchError(f"could not build synthetic pair {index} of {split}", "use another seed")


def read_synthetic(split: str, *, seed: int = 0, n_pairs: int | None = None) -> list[PairRecord]:
    split = normalise_split(split)
    n = DEFAULT_PAIRS[split] if n_pairs is None else int(n_pairs)
    if n < 1:
        raise SimpleMatchError(f"synthetic n_pairs={n_pairs}", "pass n_pairs >= 1")
    return [make_synthetic_pair(split, i, seed) for i in range(n)]
