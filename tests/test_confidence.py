"""Confidence cues, AUROC, precision-coverage, rejection and the --limit sample, each against an independent
brute-force reference (loops over keypoints / point pairs, hand-built feature maps with a known answer)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from simplematch import confidence, metrics
from simplematch.runtime import matching as npm


def _brute_best_outside(sim: np.ndarray, k: int) -> np.ndarray:
    b, n, h, w = sim.shape
    out = np.empty((b, n))
    for bi, ni in itertools.product(range(b), range(n)):
        s = sim[bi, ni]
        cy, cx = divmod(int(np.argmax(s)), w)
        ky = h if k <= 0 or k >= h else k
        kx = w if k <= 0 or k >= w else k
        y0 = min(max(cy - ky // 2, 0), h - ky)
        x0 = min(max(cx - kx // 2, 0), w - kx)
        vals = [s[y, x] for y in range(h) for x in range(w) if not (y0 <= y < y0 + ky and x0 <= x < x0 + kx)]
        out[bi, ni] = max(vals) if vals else -1.0
    return out


@pytest.mark.parametrize("k", [0, 1, 3, 4, 7, 11, 20])
def test_best_outside_window_matches_brute_force(k: int) -> None:
    rng = np.random.default_rng(k)
    sim = rng.uniform(-1, 1, (2, 5, 9, 11))
    sim[0, 0, 0, 0] = 2.0  # peaks at corners / borders: the window is clamped inside the map
    sim[1, 1, 8, 10] = 2.0
    sim[1, 2, 4, 0] = 2.0
    np.testing.assert_allclose(npm.best_outside_window(sim, k), _brute_best_outside(sim, k), atol=0)


def test_best_outside_window_torch_twin() -> None:
    torch = pytest.importorskip("torch")
    from simplematch import matching as tm

    sim = np.random.default_rng(1).uniform(-1, 1, (2, 6, 8, 10)).astype(np.float32)
    for k in (0, 3, 5, 8, 12):
        np.testing.assert_allclose(
            tm.best_outside_window(torch.from_numpy(sim), k).numpy(), npm.best_outside_window(sim, k), atol=0
        )


def _permuted_maps(h: int = 8, c: int = 80, seed: int = 0):
    """Source cells have orthogonal features; the target holds them at permuted cells -> a known warp."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((c, c)))[0][:, : h * h]  # (C, h*h) orthonormal columns
    perm = rng.permutation(h * h)  # target cell j holds source cell perm[j]
    src = basis.reshape(c, h, h)
    trg = basis[:, perm].reshape(c, h, h)
    return src.astype(np.float32), trg.astype(np.float32), perm


@pytest.mark.parametrize("coord", ["corner", "center"])
def test_cycle_is_zero_for_a_bijection_and_the_cell_gap_for_a_collision(coord: str) -> None:
    h, size = 8, 32
    stride = size / h
    src, trg, perm = _permuted_maps(h)
    # Query at each source cell's own reference pixel: the cycle error of a bijective warp is exactly 0.
    cells = np.array([(x, y) for y in range(h) for x in range(h)], dtype=np.float64)
    kps = npm.cells_to_pixels(cells, stride, coord)
    m = npm.match_keypoints(src, trg, kps, size, window=3, beta=1e-4, coord=coord)
    inv = np.argsort(perm)  # source cell i sits at target cell inv[i]
    expect = npm.cells_to_pixels(np.stack((inv % h, inv // h), -1).astype(np.float64), stride, coord)
    np.testing.assert_allclose(m.pred, expect, atol=1e-3)
    np.testing.assert_allclose(m.cycle_px, 0.0, atol=1e-3)
    # Collision: target cell 0 now also carries source cell 9's feature best -> query 9 maps back to 0's twin.
    trg2 = trg.reshape(trg.shape[0], -1).copy()
    j9 = int(inv[9])
    trg2[:, j9] = 0.0  # cell 9's feature gone from the target ...
    trg2[:, int(inv[0])] = src.reshape(src.shape[0], -1)[:, 0] + 0.9 * src.reshape(src.shape[0], -1)[:, 9]
    m2 = npm.match_keypoints(
        src, trg2.reshape(trg.shape), kps[[0, 9]], size, window=3, beta=1e-4, coord=coord
    )
    # ... so query 9 lands on target cell inv[0], whose back-match is source cell 0: the gap from 9 to 0.
    np.testing.assert_allclose(m2.pred[1], expect[0], atol=1e-3)
    np.testing.assert_allclose(m2.cycle_px[1], np.linalg.norm(kps[9] - kps[0]), atol=1e-3)
    np.testing.assert_allclose(m2.cycle_px[0], 0.0, atol=1e-3)


def test_confidence_cue_formulas() -> None:
    m = npm.Matches(
        pred=np.zeros((3, 2)),
        peak_cos=np.array([1.0, 0.5, 0.9]),
        peak_mass=np.array([0.8, 0.1, 0.4]),
        second_cos=np.array([0.0, 0.5, -1.0]),
        cycle_px=np.array([0.0, 12.8, 6.4]),
    )
    cues = confidence.confidence_cues(m, img_size=128)  # cycle unit 0.1 * 128 = 12.8 px
    assert list(cues) == list(confidence.CUES)
    np.testing.assert_allclose(cues["peak_cos"], [1.0, 0.75, 0.95])
    d = lambda c: np.sqrt(2 - 2 * c)  # noqa: E731
    np.testing.assert_allclose(cues["ratio"], [1.0, 0.0, 1 - d(0.9) / 2.0])
    np.testing.assert_allclose(cues["cycle"], [1.0, np.exp(-1.0), np.exp(-0.5)])
    np.testing.assert_allclose(cues["mass_cycle"], np.sqrt(m.peak_mass * cues["cycle"]))
    np.testing.assert_allclose(cues["mass_ratio_cycle"], np.cbrt(m.peak_mass * cues["ratio"] * cues["cycle"]))
    for v in cues.values():
        assert ((v >= 0) & (v <= 1)).all()


def _brute_auroc(s: np.ndarray, y: np.ndarray) -> float:
    pos, neg = s[y], s[~y]
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def test_auroc_matches_brute_force_pair_count_with_ties() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(2, 60))
        s = rng.integers(0, 6, n).astype(float)  # many ties
        y = rng.random(n) < 0.4
        if y.all() or not y.any():
            assert metrics.auroc(s, y) is None
            continue
        assert metrics.auroc(s, y) == pytest.approx(_brute_auroc(s, y), abs=1e-12)
    assert metrics.auroc([0.1, 0.9], [False, True]) == 1.0
    assert metrics.auroc([0.9, 0.1], [False, True]) == 0.0


def test_precision_coverage_matches_brute_force() -> None:
    rng = np.random.default_rng(2)
    conf = rng.random(200)
    correct = rng.random(200) < conf  # a predictive confidence
    rows = metrics.precision_coverage(conf, correct, coverages=(1.0, 0.5, 0.1))
    for row, c in zip(rows, (1.0, 0.5, 0.1), strict=True):
        k = int(round(c * 200))
        top = np.argsort(-conf)[:k]
        assert row["coverage"] == pytest.approx(k / 200)
        assert row["precision"] == pytest.approx(correct[top].mean() * 100)
        assert row["min_confidence"] == pytest.approx(np.sort(conf)[::-1][k - 1])
    assert rows[2]["precision"] > rows[0]["precision"]


def _pred(index: int, cat: str, pred: np.ndarray, conf: np.ndarray, valid=None) -> metrics.PairPrediction:
    n = len(pred)
    return metrics.PairPrediction(
        index=index, pair_id=str(index), category=cat, src_image=None, trg_image=None,
        src_kps=np.zeros((n, 2)), gt=np.zeros((n, 2)), pred=np.asarray(pred, float),
        valid=np.ones(n, bool) if valid is None else np.asarray(valid), threshold=100.0,
        raw={}, cues={"peak_cos": np.asarray(conf, float), "mass_cycle": np.asarray(conf, float)},
    )  # fmt: skip


def test_rejection_precision_and_kept_fraction_by_hand() -> None:
    # Errors 5, 20, 5, 30 px against threshold 100: correct at alpha 0.1 (< 10 px) = T F T F.
    p1 = _pred(0, "a", [[5, 0], [20, 0]], [0.9, 0.2])
    p2 = _pred(1, "b", [[0, 5], [30, 0], [0, 0]], [0.8, 0.7, 0.99], valid=[True, True, False])
    res = metrics.evaluation_tables([p1, p2], [0.1, 0.25], confidence="mass_cycle", min_confidence=0.5)
    conf = res["confidence"]
    rej = conf["rejection"]
    # Kept (>= 0.5, valid only): 0.9 (correct), 0.8 (correct), 0.7 (wrong at 0.1, right at 0.25 < 25? no: 30).
    assert rej["kept"] == 3 and rej["kept_fraction"] == pytest.approx(3 / 4)
    assert rej["precision"]["0.1"] == pytest.approx(200 / 3)
    assert rej["precision"]["0.25"] == pytest.approx(200 / 3)
    assert conf["auroc"]["mass_cycle"] == pytest.approx(1.0)  # correct ones 0.9, 0.8 > wrong 0.7, 0.2
    assert res["pck_per_point"]["0.1"] == pytest.approx(50.0)  # the PCK itself ignores the rejection
    line = metrics.prediction_record(p2, [0.1], confidence="mass_cycle", min_confidence=0.75)
    assert line["pred"][1] is None and line["rejected"] == [False, True, False]
    assert line["correct"]["0.1"] == [True, False, False]


def test_limit_samples_across_categories() -> None:
    from simplematch.evaluation import sample_pairs

    class R:
        def __init__(self, cat: str) -> None:
            self.category = cat

    recs = [R("car")] * 90 + [R("duck")] * 90 + [R("bottle")] * 5
    chosen, info = sample_pairs(recs, 40, seed=3)
    assert len(chosen) == 40 and info["per_category"] == {"bottle": 5, "car": 18, "duck": 17}
    assert info["indices"] == sorted(info["indices"]) and len(set(info["indices"])) == 40
    assert sample_pairs(recs, 40, seed=3)[1] == info  # seeded
    assert sample_pairs(recs, 40, seed=4)[1]["indices"] != info["indices"]


def _cli_help(command: str) -> str:
    from typer.testing import CliRunner

    from simplematch.cli.app import app

    return CliRunner().invoke(app, [command, "--help"], terminal_width=200).output


def test_cli_defaults_are_the_library_default() -> None:
    import inspect

    from simplematch.cli import app

    for fn in (app.infer, app.eval_cmd):
        default = inspect.signature(fn).parameters["confidence"].default
        assert default == confidence.DEFAULT_CONFIDENCE
    for command in ("infer", "eval"):  # the help lists every cue
        help_text = " ".join(_cli_help(command).split())
        assert all(cue in help_text for cue in confidence.CUES)


def test_pck_curve_by_hand() -> None:
    from simplematch.plots import pck_curve

    # Errors 5, 20 (pair 0) and 5, 30, invalid (pair 1); threshold 100.
    p1 = _pred(0, "a", [[5, 0], [20, 0]], [0.9, 0.2])
    p2 = _pred(1, "b", [[0, 5], [30, 0], [0, 0]], [0.8, 0.7, 0.99], valid=[True, True, False])
    np.testing.assert_allclose(pck_curve([p1, p2], [0.1, 0.25]), [50.0, 75.0])
