"""Confidence cues of a match, from the two feature maps that matching already has (torch-free).

Raw cues (``docs/confidence.md``), returned by both matchers (:func:`simplematch.matching.match_keypoints`,
:func:`simplematch.runtime.matching.match_keypoints`) and by the one-graph export:

* ``peak_cos``: the largest cosine similarity; ``peak_mass``: the soft-argmax probability of the peak cell;
* ``second_cos``: the best similarity *outside* the k x k window (a ratio test, best vs runner-up);
* ``cycle_px``: match the prediction back into the source (same window soft-argmax) and measure the
  distance to the query keypoint, in pixels of the S x S frame.

:func:`confidence_cues` maps them to [0, 1] (higher = more likely correct) and forms the combinations. One
module for every caller (PyTorch evaluation, runtime matcher, infer), so the cues cannot drift apart.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from simplematch import config

# The cues :func:`confidence_cues` computes, in its order; ``calibrated`` is added by a model's calibration
# (simplematch.calibration), so it is a choice of the config but not one of these.
CUES = tuple(c for c in config.CONFIDENCE_CUES if c != "calibrated")
DEFAULT_CONFIDENCE = config.DEFAULT_CONFIDENCE

# The cycle error is expressed in units of alpha * S with alpha = 0.1 (the "img" PCK threshold of the model
# frame): a threshold that needs no ground truth, so the confidence is the same at inference and in eval.
CYCLE_ALPHA = 0.1


class RawCues(Protocol):
    """Anything holding the raw cues as arrays of one shape (a ``Matches`` of either matcher)."""

    peak_cos: Any
    peak_mass: Any
    second_cos: Any
    cycle_px: Any


def confidence_cues(m: RawCues, img_size: int) -> dict[str, np.ndarray]:
    """Raw cues -> each confidence in [0, 1] (higher = more likely correct), keyed by :data:`CUES`.

    ``peak_cos`` (c + 1) / 2; ``peak_mass`` as is; ``ratio`` 1 - d1 / d2 with d = sqrt(2 - 2 cos) the
    chordal distance of unit vectors (Lowe's ratio on the best vs the best outside the window);
    ``cycle`` exp(-e) with e the cycle error in units of ``CYCLE_ALPHA * img_size``; the combinations are
    geometric means (a match must score on every cue).
    """
    d1 = np.sqrt(np.clip(2.0 - 2.0 * np.asarray(m.peak_cos, np.float64), 0.0, None))
    d2 = np.sqrt(np.clip(2.0 - 2.0 * np.asarray(m.second_cos, np.float64), 0.0, None))
    ratio = np.clip(1.0 - d1 / np.maximum(d2, 1e-12), 0.0, 1.0)
    cycle = np.exp(-np.asarray(m.cycle_px, np.float64) / (CYCLE_ALPHA * img_size))
    mass = np.asarray(m.peak_mass, np.float64)
    return {
        "peak_cos": np.clip((np.asarray(m.peak_cos, np.float64) + 1.0) / 2.0, 0.0, 1.0),
        "peak_mass": mass,
        "ratio": ratio,
        "cycle": cycle,
        "mass_cycle": np.sqrt(mass * cycle),
        "ratio_cycle": np.sqrt(ratio * cycle),
        "mass_ratio_cycle": np.cbrt(mass * ratio * cycle),
    }
