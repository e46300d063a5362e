"""The runtime evaluator (simplematch.evaluation.runtime_predictor) and `smatch eval MODEL.onnx`: the result
JSON, --limit, --predictions, --plots. ONNX models are the tiny graphs of tests/helpers.py (make_onnx).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simplematch import confidence
from tests.helpers import unstamped, write_image


# ----------------------------------------------------------------------------------------------------------
# Runtime evaluation
# ----------------------------------------------------------------------------------------------------------
def test_evaluate_runtime_json(models: dict[str, Path], tmp_path: Path) -> None:
    from simplematch.data.records import PairRecord
    from simplematch.evaluation.runtime_predictor import evaluate_runtime

    rng = np.random.default_rng(0)
    src_path = write_image(tmp_path / "a.png", 64, 48)
    records = []
    for i, (w, h) in enumerate([(64, 48), (100, 120), (40, 40)]):
        kps = rng.uniform(0, 1, (6, 2)) * [63, 47]
        trg = np.zeros((h, w, 3), np.uint8)
        trg_kps = kps / [64, 48] * [w, h]
        records.append(
            PairRecord(
                src_path, trg, kps, trg_kps, category="cat" if i else "dog", pair_id=str(i), trg_size=(w, h)
            )
        )
    records.append(
        PairRecord(src_path, np.zeros((8, 8, 3), np.uint8), np.zeros((0, 2)), np.zeros((0, 2)), "dog", "e")
    )
    for frame in ("resized", "original"):
        res = evaluate_runtime(
            models["position"], records, (0.05, 0.15), frame, 2, "cpu", dataset="synthetic"
        )
        assert list(res) == [
            "dataset", "split", "pairs", "points", "threshold", "frame", "pck", "pck_per_point",
            "per_category", "confidence", "model", "config", "runtime", "provider",
        ]  # fmt: skip
        assert (
            res["pairs"] == 4 and res["points"] == 18 and res["threshold"] == "img" and res["frame"] == frame
        )
        # Position model: exact up to one cell (4 px of 32), so within 0.15 * 32 but not always 0.05 * 32.
        assert res["pck"]["0.15"] == 100.0 and res["pck"]["0.05"] < 100.0
        assert res["per_category"]["dog"]["pairs"] == 2
        assert res["runtime"] == "onnxruntime" and res["provider"] == "CPUExecutionProvider"
        assert len(res["model"]["sha256"]) == 64
        json.dumps(res, allow_nan=False)


def test_eval_limit_predictions_plots_cli(
    models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from simplematch.cli.app import main

    pytest.importorskip("skimage")  # the synthetic pairs are built from scikit-image sample photos
    args = ["eval", str(models["position"]), "--dataset", "synthetic", "--split", "test", "--limit", "5",
            "--min-confidence", "0.5", "--device", "cpu"]  # fmt: skip
    outs = ["--json", str(tmp_path / "r.json"), "--predictions", str(tmp_path / "p.jsonl")]
    # matplotlib missing: one line naming the extra, exit 2, nothing written.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main([*args, *outs, "--plots", str(tmp_path / "plots")]) == 2
    assert "simplematch[plots]" in capsys.readouterr().err and not list(tmp_path.iterdir())
    monkeypatch.delitem(sys.modules, "matplotlib")
    pytest.importorskip("matplotlib")
    assert main([*args, *outs, "--plots", str(tmp_path / "plots")]) == 0
    res = unstamped(json.loads((tmp_path / "r.json").read_text()), "eval")
    assert res["pairs"] == 5 and res["sample"]["indices"] == sorted(res["sample"]["indices"])
    assert res["sample"]["limit"] == 5 and res["sample"]["of"] > 5
    rej = res["confidence"]["rejection"]
    assert rej["min_confidence"] == 0.5 and 0.0 <= rej["kept_fraction"] <= 1.0
    assert set(res["confidence"]["auroc"]) == set(confidence.CUES)
    lines = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(lines) == 5 and {"id", "category", "src_kps", "gt", "pred", "raw_cues", "correct"} <= set(
        lines[0]
    )
    # The lines re-score to the JSON's pooled PCK.
    ok = sum(sum(r["correct"]["0.1"]) for r in lines)
    assert 100.0 * ok / res["points"] == pytest.approx(res["pck_per_point"]["0.1"])

    for name in ("pck_alpha.png", "per_category.png", "precision_coverage.png", "worst_pairs.png",
                 "reliability.png"):  # fmt: skip
        with Image.open(tmp_path / "plots" / name) as im:
            assert im.format == "PNG" and im.width > 300
