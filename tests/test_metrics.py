"""The one evaluation stack (simplematch.metrics): the PCK rule, counting, aggregation, the shared last step.

Every evaluator (PyTorch, runtime, baselines, the export's one-graph check) counts through these functions,
so each rule is pinned here once: strict ``<`` (``<=`` with ``inclusive``), the per-image mean, pairs
without valid keypoints skipped by the means.
"""

from __future__ import annotations

import numpy as np
import pytest

from simplematch import metrics
from simplematch.metrics import PairPrediction, aggregate_pck, pck_correct


def _pairs(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray, thr: np.ndarray, cats: list[str]) -> list:
    return [
        PairPrediction(
            index=i,
            pair_id=str(i),
            category=c,
            src_image=None,
            trg_image=None,
            src_kps=gt[i],
            gt=gt[i],
            pred=pred[i],
            valid=valid[i],
            threshold=float(thr[i]),
        )  # fmt: skip
        for i, c in enumerate(cats)
    ]


def test_pck_per_image_mean_and_strict_threshold() -> None:
    pred = np.array([[[0.0, 0.0], [10.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    gt = np.zeros((2, 2, 2))
    valid = np.array([[True, True], [True, False]])
    thr = np.array([100.0, 100.0])
    # alpha 0.1 -> radius 10: the point at exactly 10 px is NOT correct (strict "<").
    counts = pck_correct(pred, gt, valid, thr, [0.1, 0.2])
    assert counts.tolist() == [[1, 2], [1, 1]]
    res = aggregate_pck(counts, valid.sum(1), ["a", "a"], [0.1, 0.2])["pck"]
    assert res["0.1"] == pytest.approx((0.5 + 1.0) / 2 * 100)
    assert res["0.2"] == pytest.approx(100.0)


def test_pck_counts_and_aggregation_match_reference() -> None:
    """Against a loop written straight from the paper's formula (torch distances, as training computes)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    pred = rng.uniform(0, 100, (5, 9, 2))
    gt = pred + rng.normal(0, 8, (5, 9, 2))
    valid = rng.random((5, 9)) > 0.3
    valid[4] = False  # a pair without valid keypoints: skipped by the means
    thr = rng.uniform(50, 120, 5)
    alphas = (0.05, 0.1, 0.15)
    dist = torch.linalg.vector_norm(torch.from_numpy(pred) - torch.from_numpy(gt), dim=-1).numpy()
    ref = np.array(
        [[sum(d < a * t for d in dr[vr]) for a in alphas] for dr, vr, t in zip(dist, valid, thr, strict=True)]
    )
    counts = pck_correct(pred, gt, valid, thr, alphas)
    np.testing.assert_array_equal(counts, ref)
    agg = aggregate_pck(counts, valid.sum(1), ["a", "b", "a", "b", "c"], alphas)
    per_image = [ref[i] / valid[i].sum() for i in range(4)]
    assert agg["pck"] == pytest.approx(
        {metrics.alpha_key(a): float(np.mean([r[j] for r in per_image]) * 100) for j, a in enumerate(alphas)},
        abs=1e-9,
    )
    assert agg["per_category"]["c"]["pck"] == {"0.05": None, "0.1": None, "0.15": None}
    # The per-pair path (what the evaluators, baselines and the export check feed) counts alike.
    pairs = _pairs(pred, gt, valid, thr, ["a", "b", "a", "b", "c"])
    assert metrics.pck_tables(pairs, alphas) == agg
    np.testing.assert_array_equal(metrics.pair_counts(pairs, alphas)[0], ref)


def test_score_predictions_is_the_evaluators_last_step() -> None:
    gt = np.zeros((1, 2, 2))
    pred = np.array([[[10.0, 0.0], [1.0, 0.0]]])  # 10 px: wrong under "<", right under "<="
    pairs = _pairs(pred, gt, np.ones((1, 2), bool), np.array([100.0]), ["a"])
    for p in pairs:
        p.cues = {"mass_cycle": np.ones(2)}
    fields = dict(dataset="d", split="s", threshold="kps", frame="resized", model={}, confidence="mass_cycle")
    handed: list = []
    res = metrics.score_predictions(
        pairs, [0.1], config={"img_size": 8}, window=5, released_compat=True, predictions=handed, **fields
    )
    assert res["pck"] == {"0.1": 100.0} and handed[0].inclusive and not pairs[0].inclusive
    assert res["config"] == {"img_size": 8, "eval_window": 5, "eval_released_compat": True}
    plain = metrics.score_predictions(
        pairs, [0.1], config={"img_size": 8}, window=None, released_compat=False, **fields
    )
    assert plain["pck"] == {"0.1": 50.0} and plain["config"] == {"img_size": 8}
    assert list(plain) == [
        "dataset", "split", "pairs", "points", "threshold", "frame", "pck", "pck_per_point", "per_category",
        "confidence", "model", "config",
    ]  # fmt: skip


def test_aggregate_pck_by_hand() -> None:
    agg = aggregate_pck([[2, 4], [2, 2], [0, 0]], [4, 2, 0], ["cat", "dog", "dog"], [0.05, 0.1])
    assert agg["pairs"] == 3 and agg["points"] == 6
    assert agg["pck"] == pytest.approx({"0.05": 75.0, "0.1": 100.0})
    assert agg["pck_per_point"] == pytest.approx({"0.05": 400 / 6, "0.1": 100.0})
    assert agg["per_category"]["cat"] == {"pairs": 1, "pck": {"0.05": 50.0, "0.1": 100.0}}
    assert agg["per_category"]["dog"] == {"pairs": 2, "pck": {"0.05": 100.0, "0.1": 100.0}}
    empty = aggregate_pck(np.zeros((1, 1)), [0], ["x"], [0.1])
    assert empty["pck"] == {"0.1": None} and empty["pck_per_point"] == {"0.1": None}
    # strict inequality: exactly on the threshold is wrong
    assert pck_correct(np.array([[10.0, 0.0]]), np.zeros((1, 2)), np.array([True]), 100.0, [0.1])[0] == 0
