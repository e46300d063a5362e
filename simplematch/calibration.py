"""A confidence that is a probability: P(match correct at alpha) from the raw cues (torch-free).

The cues of :mod:`simplematch.runtime.matching` rank matches, but their scale means something different for
every model. A calibration is a small regularised logistic regression, fitted on annotated validation pairs
the model was not trained on, from the raw cues the matcher already computes to "the match lies within
``alpha`` times the PCK threshold of the ground truth":

    P(correct) = sigmoid(intercept + sum_i coef_i * feature_i)

with the features of :data:`FEATURES` (:func:`features`). The linear score is chosen by measurement
(:func:`fit`): the free 5-feature model or one cue's log, whichever has the lowest cross-validated
log-loss on the calibration pairs. Logistic regression rather than isotonic regression: five numbers, a
smooth monotone probability, no steps to overfit on a few thousand points; the fit is maximum likelihood
with an L2 penalty on the standardised coefficients, minimised by ``scipy.optimize`` (scikit-learn is not a
dependency and would be the only reason to add it).
Applying it is a dot product and a sigmoid: a few numpy lines in the runtime.

:class:`Calibration` is the fitted model plus where it came from (dataset, split, alpha, pairs, points,
date). It lives in the checkpoint's config (``calibration``) and so in the ONNX metadata, which carries the
config. The quality measures (:func:`expected_calibration_error`, :func:`brier_score`,
:func:`reliability`) are here too, so ``smatch eval`` and ``smatch calibrate`` report the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from simplematch.errors import SimpleMatchError

# The name of the calibrated probability among the confidence cues, and the cue a model without a
# calibration falls back to (the best ranking cue of docs/confidence.md).
CALIBRATED = "calibrated"
UNCALIBRATED_DEFAULT = "mass_ratio_cycle"
DEFAULT_ALPHA = 0.1
DEFAULT_L2 = 1e-3
ECE_BINS = 15
FAMILY = "logistic"
# Features of the raw cues, in this order (see :func:`features`). Every cue of docs/confidence.md is a
# monotone function of one linear combination of them (the log of each cue is linear in these features).
FEATURES = ("peak_cos", "log_mass", "log_ratio", "second_cos", "cycle_e")
# The linear scores the fit chooses from (besides the free 5-feature model): each cue's log, as a direction
# in feature space. A 1-D logistic on a cue's log ranks exactly as the cue does.
CUE_DIRECTIONS: dict[str, tuple[float, ...]] = {
    "peak_cos": (1, 0, 0, 0, 0),
    "peak_mass": (0, 1, 0, 0, 0),
    "ratio": (0, 0, 1, 0, 0),
    "cycle": (0, 0, 0, 0, -1),
    "mass_cycle": (0, 0.5, 0, 0, -0.5),
    "ratio_cycle": (0, 0, 0.5, 0, -0.5),
    "mass_ratio_cycle": (0, 1 / 3, 1 / 3, 0, -1 / 3),
}
FOLDS = 5
# The cycle error's unit, alpha * S with alpha = 0.1, as the ``cycle`` cue (docs/confidence.md).
CYCLE_ALPHA = 0.1
# Floors of the logs: a peak mass or ratio of exactly 0 stays finite.
_LOG_FLOOR = 1e-6


@dataclass(frozen=True)
class Calibration:
    """A fitted calibration: ``coef`` (one per :data:`FEATURES`) and ``intercept`` on the raw features, and
    its provenance. ``alpha``: "correct" means error < alpha * PCK threshold."""

    coef: tuple[float, ...]
    intercept: float
    alpha: float = DEFAULT_ALPHA
    family: str = FAMILY
    features: tuple[str, ...] = FEATURES
    l2: float = DEFAULT_L2
    score: str = "all"  # "all" (free 5-feature model) or the cue whose log is the linear score
    dataset: str = ""
    split: str = ""
    pairs: int = 0
    points: int = 0
    positives: int = 0
    date: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["coef"] = list(self.coef)
        out["features"] = list(self.features)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "calibration") -> Calibration:
        """The stored form back; anything this version cannot apply is refused with the fix."""
        fix = "recalibrate the model with `smatch calibrate MODEL --dataset ... --split val`"
        if not isinstance(data, Mapping):
            raise SimpleMatchError(f"{source} must be a JSON object", fix)
        try:
            cal = cls(
                **{
                    **data,
                    "coef": tuple(float(c) for c in data["coef"]),
                    "features": tuple(str(f) for f in data.get("features", FEATURES)),
                }
            )
        except (KeyError, TypeError, ValueError) as err:
            raise SimpleMatchError(f"{source} is malformed ({err})", fix) from err
        if (
            cal.family != FAMILY
            or tuple(cal.features) != FEATURES
            or len(cal.coef) != len(FEATURES)
            or cal.score not in ("all", *CUE_DIRECTIONS)
        ):
            raise SimpleMatchError(
                f"{source}: family {cal.family!r} with features {list(cal.features)} is not the one this "
                f"version applies ({FAMILY}, {list(FEATURES)})",
                fix,
            )
        numbers = [*cal.coef, cal.intercept, cal.alpha]
        finite = all(isinstance(v, (int, float)) and math.isfinite(v) for v in numbers)
        if not finite or not 0 < cal.alpha < 1:
            raise SimpleMatchError(f"{source} holds a non-finite coefficient or an alpha outside (0, 1)", fix)
        return cal

    def describe(self) -> dict[str, Any]:
        """What a result JSON records about the calibration behind ``confidence`` (no coefficients)."""
        keys = ("family", "score", "alpha", "dataset", "split", "pairs", "points", "date")
        return {"calibrated": True, **{k: getattr(self, k) for k in keys}}


def features(raw: Mapping[str, Any], img_size: int) -> np.ndarray:
    """Raw cues (``peak_cos``, ``peak_mass``, ``second_cos``, ``cycle_px``; each (...,)) -> (..., F) float64.

    ``peak_cos`` as is; ``log_mass`` log of the peak mass; ``log_ratio`` log of the ratio cue 1 - d1 / d2
    with d = sqrt(2 - 2 cos); ``second_cos`` as is; ``cycle_e`` the cycle error e = ``cycle_px`` / (0.1 S).
    The logs are floored at log(1e-6). So log(cue) is linear in these for every cue (``cycle`` = exp(-e),
    the combinations are geometric means).
    """
    cos = np.asarray(raw["peak_cos"], np.float64)
    second = np.asarray(raw["second_cos"], np.float64)
    mass = np.clip(np.asarray(raw["peak_mass"], np.float64), _LOG_FLOOR, 1.0)
    d1 = np.sqrt(np.clip(2.0 - 2.0 * cos, 0.0, None))
    d2 = np.sqrt(np.clip(2.0 - 2.0 * second, 0.0, None))
    ratio = np.clip(1.0 - d1 / np.maximum(d2, 1e-12), _LOG_FLOOR, 1.0)
    cycle = np.asarray(raw["cycle_px"], np.float64) / (CYCLE_ALPHA * img_size)
    return np.stack((cos, np.log(mass), np.log(ratio), second, cycle), axis=-1)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    # tanh form: never overflows, and needs no scipy.special in the runtime.
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def apply(cal: Calibration, raw: Mapping[str, Any], img_size: int) -> np.ndarray:
    """The calibrated confidence, P(correct at ``cal.alpha``), of every match: (...,) in [0, 1]."""
    return _sigmoid(features(raw, img_size) @ np.asarray(cal.coef, np.float64) + cal.intercept)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = DEFAULT_L2) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression: (N, F) features, (N,) bool -> (coef (F,), intercept).

    Minimises mean log-loss + l2 / 2 * |w|^2 over features standardised to zero mean and unit variance
    (so the penalty treats every cue alike; the intercept is not penalised), then maps the coefficients
    back to the raw features. L-BFGS with the exact gradient: the problem is convex, a few dozen steps.
    """
    from scipy.optimize import minimize  # fitting only; applying a calibration needs numpy alone

    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"features {x.shape} and labels {y.shape} do not fit")
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale = np.where(scale > 1e-12, scale, 1.0)  # a constant feature gets coefficient 0 (penalty)
    z = (x - mean) / scale
    n = len(y)

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:-1], theta[-1]
        s = z @ w + b
        # log(1 + exp(s)) - y s, stable for any s.
        nll = np.logaddexp(0.0, s) - y * s
        r = (_sigmoid(s) - y) / n
        grad = np.concatenate((z.T @ r + l2 * w, [r.sum()]))
        return float(nll.mean() + 0.5 * l2 * w @ w), grad

    res = minimize(loss, np.zeros(x.shape[1] + 1), jac=True, method="L-BFGS-B", options={"maxiter": 500})
    w = res.x[:-1] / scale
    return w, float(res.x[-1] - w @ mean)


def _fit_score(x: np.ndarray, y: np.ndarray, score: str, l2: float) -> tuple[np.ndarray, float]:
    """Coefficients of one candidate: the free model (``all``) or a 1-D logistic on a cue's log."""
    if score == "all":
        return fit_logistic(x, y, l2)
    d = np.asarray(CUE_DIRECTIONS[score], np.float64)
    w, b = fit_logistic((x @ d)[:, None], y, l2)
    return w[0] * d, b


def cross_validated_log_loss(
    x: np.ndarray, y: np.ndarray, groups: np.ndarray, l2: float = DEFAULT_L2, folds: int = FOLDS
) -> dict[str, np.ndarray]:
    """Held-out log-loss of every point under every candidate score, ``folds``-fold over ``groups`` (pairs:
    the points of one pair are never split between fitting and judging). Log-loss: a proper score of a
    probability, so it rewards ranking and calibration at once."""
    ids = np.unique(groups)
    fold_of = dict(zip(ids, np.random.default_rng(0).permutation(len(ids)) % folds, strict=True))
    fold = np.array([fold_of[g] for g in groups])
    out = {}
    for score in ("all", *CUE_DIRECTIONS):
        loss = np.full(len(y), np.nan)  # NaN: a point whose training folds hold one class only
        for k in range(folds):
            train, test = fold != k, fold == k
            if test.any() and y[train].any() and not y[train].all():
                w, b = _fit_score(x[train], y[train], score, l2)
                s = x[test] @ w + b
                loss[test] = np.logaddexp(0.0, s) - y[test] * s
        out[score] = loss
    return out


def choose_score(losses: Mapping[str, np.ndarray]) -> str:
    """The candidate with the lowest mean held-out loss, except that the free model must beat the best
    single-cue score by more than one standard error of their paired difference (the one-standard-error
    rule): with a few thousand noisy points, five free coefficients overfit the classes they saw."""
    judged = np.logical_and.reduce([np.isfinite(v) for v in losses.values()])
    if not judged.any():  # too few points to cross-validate: the default cue's score
        return UNCALIBRATED_DEFAULT
    losses = {k: v[judged] for k, v in losses.items()}
    mean = {k: float(v.mean()) for k, v in losses.items()}
    best = min(mean, key=mean.__getitem__)
    if best != "all":
        return best
    single = min((k for k in mean if k != "all"), key=mean.__getitem__)
    diff = losses[single] - losses["all"]
    return single if diff.mean() <= diff.std() / math.sqrt(len(diff)) else "all"


def fit(
    raw: Mapping[str, Any],
    correct: np.ndarray,
    img_size: int,
    *,
    groups: np.ndarray | None = None,
    alpha: float = DEFAULT_ALPHA,
    l2: float = DEFAULT_L2,
    score: str | None = None,
    **provenance: Any,
) -> Calibration:
    """Fit a :class:`Calibration` on the raw cues of valid points and their "correct at alpha" labels.

    ``score`` None chooses the linear score by measurement (:func:`choose_score`): the candidate (the free
    5-feature model, or one cue's log) with the lowest cross-validated log-loss over ``groups`` (the pair
    of each point; None: every point its own group); the mean losses go into ``extra["cv_log_loss"]``.
    ``provenance``: dataset, split, pairs, date, extra (recorded, not used). Refuses data with only one class.
    """
    y = np.asarray(correct, bool).reshape(-1)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        raise SimpleMatchError(
            f"all {len(y)} calibration points are {'correct' if n_pos else 'wrong'} at alpha {alpha:g}",
            "calibrate on more pairs, or at another --alpha",
        )
    x = features(raw, img_size).reshape(len(y), -1)
    extra = dict(provenance.pop("extra", {}))
    if score is None:
        g = np.arange(len(y)) if groups is None else np.asarray(groups).reshape(-1)
        losses = cross_validated_log_loss(x, y, g, l2)
        score = choose_score(losses)
        judged = np.logical_and.reduce([np.isfinite(v) for v in losses.values()])
        extra["cv_log_loss"] = {
            k: float(v[judged].mean()) if judged.any() else None for k, v in losses.items()
        }
    coef, intercept = _fit_score(x, y, score, l2)
    return Calibration(
        coef=tuple(float(c) for c in coef),
        intercept=float(intercept),
        alpha=float(alpha),
        l2=float(l2),
        score=score,
        points=len(y),
        positives=n_pos,
        extra=extra,
        **provenance,
    )


def resolve(confidence: str, calibration: Calibration | None) -> str:
    """The cue that ``confidence`` means for a model: ``calibrated`` without a calibration falls back to
    :data:`UNCALIBRATED_DEFAULT` (today's default), and the result JSON says so."""
    return UNCALIBRATED_DEFAULT if confidence == CALIBRATED and calibration is None else confidence


def from_config(config: Mapping[str, Any] | None, *, source: str = "model config") -> Calibration | None:
    """The calibration stored in a (checkpoint or ONNX metadata) config, or None when it has none."""
    data = (config or {}).get("calibration")
    return None if data is None else Calibration.from_dict(data, source=f"{source} 'calibration'")


def with_calibrated(
    cues: dict[str, np.ndarray], raw: Mapping[str, Any], img_size: int, cal: Calibration | None
) -> dict[str, np.ndarray]:
    """``cues`` plus ``calibrated`` (last) when the model has a calibration; unchanged otherwise."""
    return cues if cal is None else {**cues, CALIBRATED: apply(cal, raw, img_size)}


# ------------------------------------------------------------------------------------------------------------
# Quality of a probability
# ------------------------------------------------------------------------------------------------------------
def reliability(prob: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> list[dict[str, Any]]:
    """Equal-width bins over [0, 1] (the last one closed): per bin its range, count, mean confidence and
    fraction correct (None when empty). The data of a reliability diagram and of the ECE."""
    p = np.asarray(prob, np.float64).reshape(-1)
    y = np.asarray(correct, bool).reshape(-1)
    idx = np.clip((p * bins).astype(np.int64), 0, bins - 1)
    rows = []
    for b in range(bins):
        sel = idx == b
        n = int(sel.sum())
        rows.append(
            {
                "lo": b / bins,
                "hi": (b + 1) / bins,
                "count": n,
                "confidence": float(p[sel].mean()) if n else None,
                "accuracy": float(y[sel].mean()) if n else None,
            }
        )
    return rows


def expected_calibration_error(prob: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float | None:
    """ECE: sum over equal-width bins of (bin count / N) * |fraction correct - mean confidence|."""
    rows = reliability(prob, correct, bins)
    n = sum(r["count"] for r in rows)
    if n == 0:
        return None
    return float(sum(r["count"] * abs(r["accuracy"] - r["confidence"]) for r in rows if r["count"]) / n)


def brier_score(prob: np.ndarray, correct: np.ndarray) -> float | None:
    """Mean squared difference between the probability and the 0/1 outcome."""
    p = np.asarray(prob, np.float64).reshape(-1)
    return float(np.mean((p - np.asarray(correct, np.float64).reshape(-1)) ** 2)) if len(p) else None
