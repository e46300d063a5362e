"""Calibration: the fit recovers known coefficients, the quality measures match hand counts, the numpy and
torch matchers give the same calibrated confidence, and an exported model carries and applies its
calibration (a mutated coefficient is caught)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from simplematch import calibration as cal
from simplematch import confidence
from simplematch.config import resolve_config
from simplematch.errors import SimpleMatchError
from simplematch.runtime import matching as npm
from tests.helpers import make_meta, make_onnx, write_image
from tests.runtime.test_matching import _random_case

S = 32


def _raw_cues(rng: np.random.Generator, n: int, img_size: int) -> dict[str, np.ndarray]:
    """Raw cues spread like real ones: cosines in (-1, 1) with the runner-up below the peak, a mass in
    (0, 1), cycle errors from 0 to a few times 0.1 S."""
    peak = rng.uniform(0.2, 0.99, n)
    return {
        "peak_cos": peak,
        "second_cos": peak - rng.uniform(0.0, 0.8, n),
        "peak_mass": rng.beta(2.0, 2.0, n),
        "cycle_px": rng.exponential(0.1 * img_size, n),
    }


def _features_by_hand(raw: dict[str, np.ndarray], img_size: int) -> np.ndarray:
    """The documented features, written out independently of calibration.features (one point at a time)."""
    rows = []
    for c, s, m, e in zip(raw["peak_cos"], raw["second_cos"], raw["peak_mass"], raw["cycle_px"], strict=True):
        ratio = min(max(1 - math.sqrt(max(2 - 2 * c, 0)) / max(math.sqrt(max(2 - 2 * s, 0)), 1e-12), 1e-6), 1)
        rows.append([c, math.log(max(m, 1e-6)), math.log(ratio), s, e / (0.1 * img_size)])
    return np.array(rows)


def _prob_by_hand(c: cal.Calibration, raw: dict[str, np.ndarray], img_size: int) -> np.ndarray:
    z = _features_by_hand(raw, img_size) @ np.array(c.coef) + c.intercept
    return np.array([1.0 / (1.0 + math.exp(-v)) for v in z])


def test_features_and_apply_match_the_definitions() -> None:
    rng = np.random.default_rng(0)
    raw = _raw_cues(rng, 50, 64)
    raw["peak_mass"][:2] = [0.0, 1.0]  # floored, still finite
    raw["second_cos"][2] = raw["peak_cos"][2]  # ratio 0, floored
    np.testing.assert_allclose(cal.features(raw, 64), _features_by_hand(raw, 64), rtol=1e-12, atol=1e-12)
    c = cal.Calibration(coef=(1.5, 0.7, -2.0, 0.3, -1.1), intercept=0.2)
    np.testing.assert_allclose(cal.apply(c, raw, 64), _prob_by_hand(c, raw, 64), rtol=0, atol=1e-12)


def test_fit_recovers_known_coefficients() -> None:
    rng = np.random.default_rng(1)
    img_size = 128
    raw = _raw_cues(rng, 40000, img_size)
    true = cal.Calibration(coef=(2.0, 0.8, 1.5, -1.0, -1.2), intercept=-0.5)
    y = rng.uniform(size=40000) < _prob_by_hand(true, raw, img_size)
    got = cal.fit(raw, y, img_size, l2=1e-6, dataset="synthetic", split="val", pairs=1)
    np.testing.assert_allclose(got.coef, true.coef, atol=0.25)
    assert abs(got.intercept - true.intercept) < 0.3
    assert got.points == 40000 and got.positives == int(y.sum()) and got.alpha == 0.1
    # Its probabilities are calibrated on fresh points from the same law.
    raw2 = _raw_cues(rng, 20000, img_size)
    y2 = rng.uniform(size=20000) < _prob_by_hand(true, raw2, img_size)
    assert cal.expected_calibration_error(cal.apply(got, raw2, img_size), y2) < 0.02


def test_fit_penalty_shrinks_and_one_class_is_refused() -> None:
    rng = np.random.default_rng(2)
    raw = _raw_cues(rng, 2000, 64)
    y = rng.uniform(size=2000) < _prob_by_hand(cal.Calibration(coef=(3, 1, 2, -1, -2), intercept=0), raw, 64)
    loose = cal.fit(raw, y, 64, l2=1e-6)
    tight = cal.fit(raw, y, 64, l2=10.0)
    assert np.abs(tight.coef).sum() < 0.2 * np.abs(loose.coef).sum()
    with pytest.raises(SimpleMatchError, match="all 2000 calibration points are wrong"):
        cal.fit(raw, np.zeros(2000, bool), 64)


def test_ece_brier_reliability_by_hand() -> None:
    p = np.array([0.05, 0.05, 0.05, 0.05, 0.5, 0.5, 0.95, 1.0])
    y = np.array([0, 0, 0, 1, 1, 0, 1, 1], bool)
    rows = cal.reliability(p, y, bins=15)
    assert [r["count"] for r in rows if r["count"]] == [4, 2, 2]  # 1.0 falls in the last (closed) bin
    # Bins: {0.05 x4: acc 0.25}, {0.5 x2: acc 0.5}, {0.95, 1.0: conf 0.975, acc 1}.
    want = (4 * abs(0.25 - 0.05) + 2 * abs(0.5 - 0.5) + 2 * abs(1.0 - 0.975)) / 8
    assert cal.expected_calibration_error(p, y) == pytest.approx(want, abs=1e-12)
    want_brier = (3 * 0.05**2 + 0.95**2 + 2 * 0.25 + 0.05**2 + 0.0) / 8
    assert cal.brier_score(p, y) == pytest.approx(want_brier, abs=1e-12)


@pytest.mark.parametrize("window", [0, 3, 5])
def test_numpy_and_torch_give_the_same_calibrated_confidence(window: int) -> None:
    torch = pytest.importorskip("torch")
    from simplematch import matching as tm

    c = cal.Calibration(coef=(1.5, 0.7, -2.0, 0.3, -1.1), intercept=0.2)
    for seed in range(3):
        src, trg, kps = _random_case(seed)
        t = tm.match_keypoints(
            torch.from_numpy(src), torch.from_numpy(trg), torch.from_numpy(kps), 50, window, 0.02
        )
        n = npm.match_keypoints(src, trg, kps, 50, window, 0.02)
        raw_t = {k: v.double().numpy() for k, v in t._asdict().items() if k != "pred"}
        raw_n = {k: v for k, v in n._asdict().items() if k != "pred"}
        np.testing.assert_allclose(cal.apply(c, raw_n, 50), cal.apply(c, raw_t, 50), rtol=0, atol=1e-4)


def test_calibration_lives_in_the_config_and_is_checked() -> None:
    c = cal.Calibration(coef=(1.0, 0.5, 0.0, 0.0, -1.0), intercept=0.1, dataset="synthetic", split="val")
    cfg = resolve_config("demo_cpu", {"calibration": c.to_dict()})
    assert cal.from_config(cfg.to_dict()) == c
    assert cal.from_config(resolve_config("demo_cpu").to_dict()) is None
    bad = {**c.to_dict(), "coef": [1.0, float("nan"), 0.0, 0.0, 0.0]}
    with pytest.raises(SimpleMatchError, match="non-finite"):
        resolve_config("demo_cpu", {"calibration": bad})
    with pytest.raises(SimpleMatchError, match="not the one this version applies"):
        resolve_config("demo_cpu", {"calibration": {**c.to_dict(), "coef": [1.0, 2.0]}})
    assert cal.resolve("calibrated", None) == "mass_ratio_cycle"
    assert cal.resolve("calibrated", c) == "calibrated" and cal.resolve("ratio", None) == "ratio"


# ------------------------------------------------------------------------------------------------------------
# An exported model carries and applies its calibration
# ------------------------------------------------------------------------------------------------------------
CAL = cal.Calibration(coef=(2.0, 0.3, 1.0, -0.5, -1.5), intercept=-0.4, dataset="synthetic", split="val")


def _calibrated_onnx(path: Path, c: cal.Calibration) -> Path:
    meta = make_meta(config={"dataset": "synthetic", "img_size": S, "calibration": c.to_dict()})
    return make_onnx(path, meta=meta)


def _check_applies(model: Path, c: cal.Calibration, images: tuple[Path, Path]) -> None:
    """The Matcher's default confidence is the calibration's probability of its own raw cues."""
    from simplematch.runtime import Matcher

    res = Matcher(model).match_images(*images, np.array([[3.0, 4.0], [20.0, 11.0], [30.0, 20.0]]))
    assert res.confidence_kind == "calibrated"
    np.testing.assert_allclose(res.confidence, _prob_by_hand(c, res.raw, S), rtol=0, atol=1e-9)


def test_exported_model_applies_its_calibration_and_a_mutation_is_caught(tmp_path: Path) -> None:
    images = (write_image(tmp_path / "a.png", 40, 30, 1), write_image(tmp_path / "b.png", 35, 45, 2))
    _check_applies(_calibrated_onnx(tmp_path / "m.onnx", CAL), CAL, images)
    mutated = cal.Calibration(**{**CAL.to_dict(), "coef": (2.0, 0.3, 1.0, -0.5, -1.0)})
    with pytest.raises(AssertionError):
        _check_applies(_calibrated_onnx(tmp_path / "mut.onnx", mutated), CAL, images)


def test_uncalibrated_model_keeps_the_default_and_says_so(tmp_path: Path) -> None:
    from simplematch.runtime import Matcher

    m = Matcher(make_onnx(tmp_path / "m.onnx"))
    res = m.match_images(
        write_image(tmp_path / "a.png", 40, 30), write_image(tmp_path / "b.png", 40, 30), [[5, 5]]
    )
    assert res.confidence_kind == "mass_ratio_cycle" and "calibrated" not in res.cues
    np.testing.assert_array_equal(res.confidence, res.cues["mass_ratio_cycle"])
    assert m.calibration_note()["calibrated"] is False and res.calibration == m.calibration_note()


def test_calibrate_onnx_writes_a_calibrated_copy(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("skimage")  # the synthetic pairs
    from simplematch.calibrate import CalibrateRequest, calibrate_model
    from simplematch.runtime import Matcher

    model = make_onnx(tmp_path / "m.onnx")
    before = model.read_bytes()
    out = tmp_path / "cal.onnx"
    # alpha 0.3: the random tiny model must get some points right and some wrong.
    req = CalibrateRequest(dataset="synthetic", split="val", alpha=0.3, limit=6, device="cpu")
    res = calibrate_model(model, req, out)
    assert model.read_bytes() == before  # the input is never modified
    got = Matcher(out).calibration
    assert got is not None and got.to_dict() == res["calibration"]
    assert (got.dataset, got.split, got.alpha, got.pairs) == ("synthetic", "val", 0.3, 6)
    assert json.loads(json.dumps(res["quality"]))["points"] == got.points
    images = (write_image(tmp_path / "a.png", 40, 30, 1), write_image(tmp_path / "b.png", 35, 45, 2))
    _check_applies(out, got, images)
    with pytest.raises(SimpleMatchError, match="already exists"):
        calibrate_model(model, req, out)
    with pytest.raises(SimpleMatchError, match="is this command's input|input"):
        calibrate_model(model, req, model, force=True)


def test_calibrating_on_the_training_split_is_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from simplematch.calibrate import CalibrateRequest, calibrate_model

    out = tmp_path / "cal"
    req = CalibrateRequest(dataset="synthetic", split="train", limit=2, device="cpu")  # the model's dataset
    with pytest.raises(SimpleMatchError, match="holds the pairs .* was trained on"):
        calibrate_model(tiny_checkpoint, req, out)
    assert not out.exists()


def _predictions(rng: np.random.Generator, pairs: int, n: int, img_size: int) -> list:
    """Per-pair predictions whose correctness follows a known law of the raw cues."""
    from simplematch.metrics import PairPrediction

    truth = cal.Calibration(coef=(2.0, 0.8, 1.5, -1.0, -1.2), intercept=-0.5)
    out = []
    for i in range(pairs):
        raw = _raw_cues(rng, n, img_size)
        ok = rng.uniform(size=n) < _prob_by_hand(truth, raw, img_size)
        gt = rng.uniform(0, img_size, (n, 2))
        pred = gt + np.where(ok, 1.0, 0.5 * img_size)[:, None] * np.array([1.0, 0.0])  # 1 px or 0.5 S off
        out.append(
            PairPrediction(
                index=i, pair_id=str(i), category="c", src_image=None, trg_image=None, src_kps=gt, gt=gt,
                pred=pred, valid=np.ones(n, bool), threshold=float(img_size), raw=raw,
                cues=confidence.confidence_cues(npm.Matches(pred, **raw), img_size),
            )
        )  # fmt: skip
    return out


def test_training_calibrates_the_saved_model_on_its_validation_pairs() -> None:
    pytest.importorskip("torch")
    from simplematch.metrics import confidence_points
    from simplematch.train import _calibrated

    preds = _predictions(np.random.default_rng(3), 60, 30, 128)
    raw, ok, pair = confidence_points(preds)
    assert len(ok) == 1800 and set(np.bincount(pair)) == {30}
    cfg = resolve_config("demo_cpu")
    got = cal.from_config(_calibrated(cfg, preds, {"threshold": "img"}).to_dict())
    assert got is not None and (got.split, got.pairs, got.points) == ("val", 60, 1800)
    assert got.score == "all"  # the law uses every feature: the free model wins the cross-validation
    assert cfg.calibration is None  # the run's own config is not changed
    # Nothing to fit when every validation point is wrong: the config stays uncalibrated.
    for p in preds:
        p.pred = p.gt + 0.5 * 128
    assert _calibrated(cfg, preds, {"threshold": "img"}).calibration is None


def test_eval_json_reports_calibration_quality() -> None:
    from simplematch.metrics import evaluation_json

    preds = _predictions(np.random.default_rng(4), 40, 30, 128)
    c = cal.fit(*confidence_points_of(preds), 128)
    for p in preds:
        p.cues = cal.with_calibrated(p.cues, p.raw, 128, c)
    cfg = {"img_size": 128, "calibration": c.to_dict()}
    kw = dict(dataset="synthetic", split="test", threshold="img", frame="resized", model={}, config=cfg)
    res = evaluation_json(preds, [0.1], confidence="calibrated", **kw)["confidence"]
    assert res["default"] == "calibrated" and res["calibration"]["calibrated"] is True
    assert set(res["ece"]) == set(res["brier"]) == set(res["auroc"]) == {*confidence.CUES, "calibrated"}
    assert res["ece"]["calibrated"] < 0.05 < res["ece"]["peak_cos"]
    assert sum(r["count"] for r in res["reliability"]) == 1200 and len(res["reliability"]) == 15
    plain = evaluation_json(preds, [0.1], confidence="calibrated", **{**kw, "config": {"img_size": 128}})
    assert plain["confidence"]["default"] == "mass_ratio_cycle"
    assert plain["confidence"]["calibration"]["calibrated"] is False


def confidence_points_of(preds: list) -> tuple:
    from simplematch.metrics import confidence_points

    raw, ok, _ = confidence_points(preds)
    return raw, ok


def test_choose_score_prefers_one_cue_unless_the_free_model_is_clearly_better() -> None:
    base = np.random.default_rng(5).uniform(0.2, 0.8, 1000)
    singles = {k: base + 0.05 for k in cal.CUE_DIRECTIONS}
    singles["ratio"] = base  # the best single cue
    swing = 0.05 * np.where(np.arange(1000) % 2, 1.0, -1.0)  # paired differences: std 0.05, SE 0.00158
    # The free model 0.001 better on average, inside one standard error: the single cue wins.
    assert cal.choose_score({"all": base - 0.001 + swing, **singles}) == "ratio"
    # 0.01 better, about six standard errors: the free model wins.
    assert cal.choose_score({"all": base - 0.01 + swing, **singles}) == "all"
    # A single cue that is best outright is taken as it is.
    assert cal.choose_score({"all": base + 0.1, **singles}) == "ratio"
    # Nothing judged (every fold had one class only): the uncalibrated default's score.
    nothing = {k: np.full(3, np.nan) for k in ("all", *cal.CUE_DIRECTIONS)}
    assert cal.choose_score(nothing) == "mass_ratio_cycle"


def test_calibrate_checkpoint_writes_a_calibrated_folder(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("skimage")
    from simplematch.calibrate import CalibrateRequest, calibrate_model
    from simplematch.checkpoint import load_checkpoint, save_checkpoint
    from simplematch.model import SimpleMatch
    from tests.helpers import tiny_config

    cfg = tiny_config()
    ckpt = tmp_path / "ckpt"
    save_checkpoint(SimpleMatch(cfg), cfg, ckpt)
    save_checkpoint(SimpleMatch(cfg), cfg, ckpt / "ckpt-00000002")  # a resumable state: not copied
    before = (ckpt / "config.json").read_text()
    req = CalibrateRequest(dataset="synthetic", split="val", alpha=0.3, limit=4, device="cpu")
    res = calibrate_model(ckpt, req, tmp_path / "cal")
    assert (ckpt / "config.json").read_text() == before  # the input is never modified
    assert sorted(p.name for p in (tmp_path / "cal").iterdir()) == ["config.json", "model.safetensors"]
    _, got = load_checkpoint(tmp_path / "cal")
    assert got.calibration == res["calibration"] and {**got.to_dict(), "calibration": None} == cfg.to_dict()
    with pytest.raises(SimpleMatchError, match="holds this command's input"):
        calibrate_model(ckpt, req, tmp_path, force=True)
    with pytest.raises(SimpleMatchError, match="cannot calibrate"):
        calibrate_model(write_image(tmp_path / "x.png", 8, 8), req, tmp_path / "y")
