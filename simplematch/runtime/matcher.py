"""The runtime's public API: encode each image once, match as many keypoint sets as wanted.

>>> m = Matcher("runs/demo/model.onnx")                       # doctest: +SKIP
>>> src, trg = m.encode([m.prepare("a.jpg"), m.prepare("b.jpg")])  # doctest: +SKIP
>>> res = m.match(src, trg, np.array([[10.0, 20.0]]))          # doctest: +SKIP
>>> res.target_kps, res.score                                  # doctest: +SKIP

Keypoints go in and come out in *original image* pixels (x, y): source keypoints are scaled into the
model's ``S x S`` frame with the source image's size, matched there exactly as the PyTorch evaluation does,
and the predictions are scaled back with the *target* image's size. Preprocessing is
:func:`simplematch.image.resize_square`, the one shared with the PyTorch path.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from simplematch import calibration
from simplematch.confidence import DEFAULT_CONFIDENCE, confidence_cues
from simplematch.config import CONFIDENCE_CUES
from simplematch.errors import SimpleMatchError
from simplematch.image import load_image, resize_square, to_image_frame, to_model_frame, to_rgb_uint8
from simplematch.metadata import ModelMeta
from simplematch.runtime.backends import Backend, load_backend
from simplematch.runtime.matching import match_keypoints

ImageLike = np.ndarray | str | Path | Image.Image


@dataclass(frozen=True)
class Prepared:
    """One image ready for the model: ``tensor`` (3, S, S) float32 in [0, 1], original ``hw`` = (h, w)."""

    tensor: np.ndarray
    hw: tuple[int, int]
    name: str | None = None


@dataclass(frozen=True)
class Features:
    """One encoded image: ``map`` (C, h, w) float32 and the original image size ``hw`` = (h, w)."""

    map: np.ndarray
    hw: tuple[int, int]
    name: str | None = None


@dataclass
class MatchResult:
    """Matches of N source keypoints.

    ``source_kps`` / ``target_kps``: (N, 2) pixels (x, y) in the source / target image;
    ``target_kps_model``: (N, 2) the same predictions in the model's S x S frame (what the PyTorch evaluation
    scores in the "resized" frame); ``score``: (N,) peak cosine similarity; ``peak_mass``: (N,) soft-argmax
    mass of the peak cell; ``raw``: every raw cue (N,) of :class:`simplematch.runtime.matching.Matches`
    (``cycle_px`` in S-frame pixels); ``cues``: each confidence in [0, 1]; ``confidence``: the chosen one;
    ``rejected``: (N,) bool, ``confidence < min_confidence`` -- those rows of ``target_kps`` are NaN (the
    prediction is still in ``target_kps_model``); ``timing_ms``: filled by :meth:`Matcher.match_images` only.
    """

    source_kps: np.ndarray
    target_kps: np.ndarray
    target_kps_model: np.ndarray
    score: np.ndarray
    peak_mass: np.ndarray
    target_kps_all: np.ndarray | None = None  # (N, 2) target pixels of every prediction, rejected included
    raw: dict[str, np.ndarray] = field(default_factory=dict)
    cues: dict[str, np.ndarray] = field(default_factory=dict)
    confidence: np.ndarray | None = None
    rejected: np.ndarray | None = None
    timing_ms: dict[str, float] = field(default_factory=dict)
    # The cue ``confidence`` holds: the one asked for, or the fallback of an uncalibrated model; and which
    # calibration made ``calibrated`` (:meth:`Matcher.calibration_note`).
    confidence_kind: str = ""
    calibration: dict = field(default_factory=dict)


def as_rgb_uint8(image: ImageLike) -> np.ndarray:
    """A path, a Pillow image or an (H, W, 3) uint8 array -> (H, W, 3) uint8 RGB."""
    if isinstance(image, (str, Path)):
        return load_image(image)
    if isinstance(image, Image.Image):
        return to_rgb_uint8(image)
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3 or min(arr.shape[:2]) < 2:
        raise SimpleMatchError(
            f"image array must be (H, W, 3) uint8 RGB of at least 2x2 px, got {arr.shape} {arr.dtype}",
            "pass a file path, a PIL image or convert the array (e.g. np.asarray(img.convert('RGB')))",
        )
    return arr


def _check_kps(kps: np.ndarray | Sequence[Sequence[float]], what: str) -> np.ndarray:
    arr = np.asarray(kps, dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, 2)
    if arr.ndim != 2 or arr.shape[1] != 2 or not np.isfinite(arr).all():
        raise SimpleMatchError(
            f"{what} must be an (N, 2) array of finite (x, y) pixels, got {arr.shape}", None
        )
    return arr


def _user_kps(kps: np.ndarray | Sequence[Sequence[float]], hw: tuple[int, int]) -> np.ndarray:
    """Source keypoints from a user: (N, 2) finite pixels inside the (h, w) source image, the CLI's rule."""
    from simplematch.keypoints import check_inside, warn_if_normalised

    arr = _check_kps(kps, "source keypoints")
    size = (hw[1], hw[0])  # (w, h)
    check_inside(arr, size)
    warn_if_normalised(arr, size)
    return arr


def _timing_ms(t0: float, t1: float, t2: float, t3: float) -> dict[str, float]:
    """``timing_ms`` of a match from its four ``perf_counter`` marks: preprocess, encode, match."""
    return {"preprocess": (t1 - t0) * 1e3, "encode": (t2 - t1) * 1e3, "match": (t3 - t2) * 1e3}


def check_confidence(confidence: str, min_confidence: float | None) -> None:
    """A known cue name and a ``min_confidence`` in [0, 1] (outside it every or no match would be kept)."""
    if confidence not in CONFIDENCE_CUES:
        raise SimpleMatchError(
            f"unknown confidence '{confidence}'", f"use one of {', '.join(CONFIDENCE_CUES)}"
        )
    if min_confidence is not None and not (0.0 <= float(min_confidence) <= 1.0):
        raise SimpleMatchError(
            f"--min-confidence {min_confidence} is outside [0, 1]", "confidences lie in [0, 1]: pass e.g. 0.5"
        )


class Matcher:
    """Encode once, match many: a backend (.onnx / .engine) plus the matching of the PyTorch evaluation."""

    def __init__(
        self,
        model_path: str | Path,
        device: str = "cpu",
        allow_fallback: bool = False,
        *,
        backend: Backend | None = None,
        batch_size: int = 8,
    ) -> None:
        self.model_path = Path(model_path)
        self.backend = backend if backend is not None else load_backend(model_path, device, allow_fallback)
        self.batch_size = max(1, int(batch_size))
        # The model's calibration (None: uncalibrated), checked once here rather than at every match.
        self.calibration = calibration.from_config(self.meta.config, source=str(self.model_path))

    @property
    def meta(self) -> ModelMeta:
        return self.backend.meta

    @property
    def provider(self) -> str:
        return self.backend.provider

    @property
    def runtime(self) -> str:
        return self.backend.runtime

    def calibration_note(self) -> dict:
        """Which calibration makes ``calibrated`` (dataset, split, alpha, pairs, date), or that none does."""
        if self.calibration is None:
            return {"calibrated": False, "note": "the model has no calibration (smatch calibrate)"}
        return self.calibration.describe()

    def prepare(self, image: ImageLike) -> Prepared:
        """Image (path / PIL / uint8 RGB array) -> resized model input, keeping the original (h, w)."""
        name = str(image) if isinstance(image, (str, Path)) else None
        rgb = as_rgb_uint8(image)
        return Prepared(resize_square(rgb, self.meta.img_size), (int(rgb.shape[0]), int(rgb.shape[1])), name)

    def encode(self, images: Sequence[Prepared | ImageLike]) -> list[Features]:
        """Encode a list of images in batches of ``batch_size``; unprepared images are prepared first."""
        if isinstance(images, (str, Path, Image.Image, Prepared)) or (
            isinstance(images, np.ndarray) and images.ndim == 3
        ):
            raise SimpleMatchError(
                f"Matcher.encode takes a list of images, got one {type(images).__name__}",
                "wrap it in a list: encode([image])",
            )
        prepared = [im if isinstance(im, Prepared) else self.prepare(im) for im in images]
        out: list[Features] = []
        for start in range(0, len(prepared), self.batch_size):
            chunk = prepared[start : start + self.batch_size]
            feats = self.backend.encode(np.stack([p.tensor for p in chunk]))
            out.extend(Features(f, p.hw, p.name) for f, p in zip(feats, chunk, strict=True))
        return out

    def match(
        self,
        src: Features,
        trg: Features,
        src_kps: np.ndarray | Sequence[Sequence[float]],
        *,
        window: int | None = None,
        confidence: str = DEFAULT_CONFIDENCE,
        min_confidence: float | None = None,
        check_keypoints: bool = True,
    ) -> MatchResult:
        """Match (N, 2) source-image pixels -> target-image pixels (plus scores), with the model's metadata.

        ``window`` overrides the metadata's fine window (0 = whole map), as ``smatch eval --window``.
        ``confidence`` names the cue (:data:`simplematch.confidence.CUES`); a match whose confidence
        is below ``min_confidence`` is rejected (``rejected`` True, its ``target_kps`` row NaN).
        The keypoints follow the CLI's rule (:func:`simplematch.keypoints.check_inside`: 0-based pixels of the
        source image) and warn when they look normalised; ``check_keypoints=False`` is for benchmark
        annotations already checked by their reader (whose 1-based values may reach w and h).
        """
        meta = self.meta
        check_confidence(confidence, min_confidence)
        kps = _user_kps(src_kps, src.hw) if check_keypoints else _check_kps(src_kps, "source keypoints")
        if src.map.shape != trg.map.shape:
            raise SimpleMatchError(
                f"feature maps differ: {src.map.shape} vs {trg.map.shape}",
                "encode both images with this Matcher",
            )
        kps_model = to_model_frame(kps, src.hw, meta.img_size)
        m = match_keypoints(
            src.map,
            trg.map,
            kps_model,
            meta.img_size,
            meta.window if window is None else window,
            meta.beta,
            meta.coord,
        )
        raw = {k: np.asarray(v, np.float64) for k, v in m._asdict().items() if k != "pred"}
        cues = confidence_cues(m, meta.img_size)
        cues = calibration.with_calibrated(cues, raw, meta.img_size, self.calibration)
        kind = calibration.resolve(confidence, self.calibration)
        conf = cues[kind]
        rejected = conf < min_confidence if min_confidence is not None else np.zeros(len(conf), bool)
        target_all = to_image_frame(m.pred, trg.hw, meta.img_size)
        target = np.where(rejected[:, None], np.nan, target_all)
        return MatchResult(
            source_kps=kps,
            target_kps=target,
            target_kps_model=m.pred,
            target_kps_all=target_all,
            score=m.peak_cos.astype(np.float64),
            peak_mass=m.peak_mass,
            raw=raw,
            cues=cues,
            confidence=conf,
            rejected=rejected,
            confidence_kind=kind,
            calibration=self.calibration_note(),
        )

    def match_images(
        self,
        src: ImageLike,
        trg: ImageLike,
        src_kps: np.ndarray | Sequence[Sequence[float]],
        *,
        confidence: str = DEFAULT_CONFIDENCE,
        min_confidence: float | None = None,
    ) -> MatchResult:
        """prepare + encode (one batch of two) + match, with ``timing_ms`` {preprocess, encode, match}."""
        t0 = time.perf_counter()
        prepared = [self.prepare(src), self.prepare(trg)]
        src_kps = _user_kps(src_kps, prepared[0].hw)  # before any model run; match() then skips the check
        t1 = time.perf_counter()
        if self.backend.matches:  # one-graph file: encode + match in one session run
            return self._match_in_graph(*prepared, src_kps, t0, t1, confidence, min_confidence)
        fsrc, ftrg = self.encode(prepared)
        t2 = time.perf_counter()
        result = self.match(
            fsrc, ftrg, src_kps, confidence=confidence, min_confidence=min_confidence, check_keypoints=False
        )
        t3 = time.perf_counter()
        result.timing_ms = _timing_ms(t0, t1, t2, t3)
        return result

    def _match_in_graph(
        self,
        src: Prepared,
        trg: Prepared,
        src_kps: np.ndarray | Sequence[Sequence[float]],
        t0: float,
        t1: float,
        confidence: str = DEFAULT_CONFIDENCE,
        min_confidence: float | None = None,
    ) -> MatchResult:
        """:meth:`match_images` for a one-graph model (``smatch export --with-matching``): the matching runs
        inside the ONNX graph, whose target keypoints are returned; ``timing_ms["encode"]`` covers encoder
        and matching together. The confidence cues the graph does not compute (ratio, cycle) come from the
        numpy twin on the graph's ``features`` output, so every cue and ``min_confidence`` work alike."""
        size = self.meta.img_size
        kps = _check_kps(src_kps, "source keypoints")
        kps_model = to_model_frame(kps, src.hw, size).astype(np.float32)
        if len(kps) == 0:  # the graph's keypoint axis starts at 1; nothing to match anyway
            fs, ft = self.encode([src, trg])
            result = self.match(
                fs, ft, kps, confidence=confidence, min_confidence=min_confidence, check_keypoints=False
            )
            result.timing_ms = _timing_ms(t0, t1, t1, t1)
            return result
        pred, _peak, _mass, fsrc, ftrg = self.backend.match(
            src.tensor[None], trg.tensor[None], kps_model[None], np.ones((1, len(kps)), bool)
        )
        t2 = time.perf_counter()
        result = self.match(
            Features(fsrc[0], src.hw), Features(ftrg[0], trg.hw), kps,
            confidence=confidence, min_confidence=min_confidence, check_keypoints=False,
        )  # fmt: skip
        graph_model = pred[0].astype(np.float64)
        graph_image = to_image_frame(graph_model, trg.hw, size)
        result.target_kps_model = graph_model
        result.target_kps_all = graph_image
        result.target_kps = np.where(result.rejected[:, None], np.nan, graph_image)
        t3 = time.perf_counter()
        result.timing_ms = _timing_ms(t0, t1, t2, t3)
        return result
