"""The training-free reference matchers used to judge whether a model learned anything."""

from __future__ import annotations

import numpy as np
import pytest

from simplematch.baselines import evaluate_baseline, predict_relative, predict_sift
from simplematch.data import load_records
from tests.helpers import HAVE_WILLOW, NO_WILLOW, WILLOW


def test_relative_position_maps_image_frames() -> None:
    rec = load_records("synthetic", None, "test", n_pairs=1)[0]
    pred = predict_relative(rec)
    sw, sh = rec.image_size("src")
    tw, th = rec.image_size("trg")
    np.testing.assert_allclose(pred, rec.src_kps * [tw / sw, th / sh])


def test_sift_finds_synthetic_correspondences() -> None:
    """Held-out synthetic warps are mild: dense SIFT must localise most points within 0.1 * image size."""
    recs = load_records("synthetic", None, "test", n_pairs=4)
    res = evaluate_baseline("sift", recs, "img", alphas=(0.1,))
    assert res["pck"]["0.1"] > 50.0
    assert predict_sift(recs[0]).shape == recs[0].src_kps.shape


@pytest.mark.skipif(not HAVE_WILLOW, reason=NO_WILLOW)
def test_relative_baseline_on_pfwillow_matches_reference() -> None:
    """The reference value quoted in the project guide: ~15 PCK@0.1 (kps threshold) on this subset."""
    recs = load_records("pfwillow", WILLOW, "test")
    res = evaluate_baseline("relative", recs, "kps", alphas=(0.1,))
    assert res["pairs"] == 360
    assert 14.0 < res["pck"]["0.1"] < 17.0
