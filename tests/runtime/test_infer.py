"""``smatch infer`` (simplematch.runtime.infer, .viz): the JSON and PNG, --pairs, chaining, bad inputs.

ONNX models are the tiny graphs of tests/helpers.py (make_onnx).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simplematch.errors import SimpleMatchError
from simplematch.runtime import Matcher
from simplematch.runtime.infer import find_default_model, run_infer
from simplematch.runtime.viz import canvas_size
from tests.helpers import S, make_meta, make_onnx, unstamped, write_image


# ----------------------------------------------------------------------------------------------------------
# infer + viz
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture
def infer_inputs(tmp_path: Path) -> dict[str, Path]:
    kps = tmp_path / "kps.json"
    kps.write_text(json.dumps([[5, 6], [30.5, 20], [0, 0]]))
    return {
        "src": write_image(tmp_path / "src.png", 40, 30, seed=1),
        "trg": write_image(tmp_path / "trg.jpg", 50, 60, seed=2),
        "kps": kps,
        "out": tmp_path / "res" / "out.json",
        "viz": tmp_path / "res" / "viz.png",
    }


def test_run_infer_writes_json_and_png(models: dict[str, Path], infer_inputs: dict[str, Path]) -> None:
    pytest.importorskip("simplematch.keypoints", reason="simplematch/keypoints.py not written yet")
    io = infer_inputs
    rep = run_infer(io["src"], io["trg"], io["kps"], model=models["conv"], out=io["out"], viz=io["viz"])
    assert set(unstamped(rep, "infer")) == {
        "source", "target", "model", "provider", "confidence", "calibration", "min_confidence", "keypoints",
        "timing_ms",
    }  # fmt: skip
    assert rep["calibration"]["calibrated"] is False and rep["confidence"] == "mass_ratio_cycle"
    assert set(rep["timing_ms"]) == {"preprocess", "encode", "match"}
    assert rep["provider"] == "CPUExecutionProvider" and len(rep["keypoints"]) == 3
    assert set(rep["keypoints"][0]) == {
        "source", "target", "score", "confidence", "rejected", "cues", "raw_cues"
    }  # fmt: skip
    assert json.loads(io["out"].read_text()) == json.loads(json.dumps(rep))  # the stamp included
    with Image.open(io["viz"]) as im:
        assert im.format == "PNG" and im.size == canvas_size((30, 40), (60, 50)) == (
            int(round(40 * 2)) + 50,
            60,
        )
    m = Matcher(models["conv"])
    direct = m.match_images(io["src"], io["trg"], [[5, 6], [30.5, 20], [0, 0]])
    np.testing.assert_allclose([k["target"] for k in rep["keypoints"]], direct.target_kps, atol=1e-9)


def test_infer_pairs_skips_a_bad_pair_in_the_middle(models: dict[str, Path], tmp_path: Path) -> None:
    from simplematch.cli.app import main
    from simplematch.runtime.infer import run_infer_pairs

    a = write_image(tmp_path / "a.png", 40, 30, seed=1)
    write_image(tmp_path / "b.png", 50, 60, seed=2)
    c = write_image(tmp_path / "c.png", 32, 32, seed=3)
    (tmp_path / "k.json").write_text(json.dumps([[5, 6], [30.5, 20]]))
    (tmp_path / "far.json").write_text(json.dumps([[5, 6], [300, 20]]))  # outside a.png: a bad pair
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(
        "src,tgt,kps\n"
        "a.png,b.png,k.json\n"
        "a.png,missing.png,k.json\n"  # bad: no such target
        "a.png,c.png,far.json\n"  # bad: keypoint outside the source
        "a.png,c.png,k.json\n"
        "b.png,a.png,k.json\n"
    )
    out = tmp_path / "res" / "m.jsonl"
    encoded: list[int] = []
    m = Matcher(models["conv"])
    orig = m.backend.encode
    m.backend.encode = lambda x: (encoded.append(len(x)), orig(x))[1]  # type: ignore[method-assign]
    import simplematch.runtime.infer as inf

    real = inf.Matcher
    inf.Matcher = lambda *a, **k: m  # type: ignore[assignment,misc]
    try:
        summary = run_infer_pairs(pairs, out, model=models["conv"], min_confidence=0.0)
    finally:
        inf.Matcher = real  # type: ignore[misc]
    assert summary["pairs"] == 5 and summary["written"] == 3 and summary["failed"] == 2
    assert [f["line"] for f in summary["failures"]] == [3, 4]
    assert "missing.png" in summary["failures"][0]["error"] and "outside" in summary["failures"][1]["error"]
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["line"] for r in recs] == [2, 5, 6]
    assert [Path(r["target"]).name for r in recs] == ["b.png", "c.png", "a.png"]
    # Each good record equals a single-pair match; each image was encoded once (a, b, c: 3 encodes).
    direct = Matcher(models["conv"]).match_images(a, c, [[5, 6], [30.5, 20]])
    np.testing.assert_allclose([k["target"] for k in recs[1]["keypoints"]], direct.target_kps, atol=1e-9)
    assert sum(encoded) == 3
    # JSONL: one source against several targets, inline keypoints, and a line that is not JSON.
    jl = tmp_path / "pairs.jsonl"
    jl.write_text(
        json.dumps({"src": "a.png", "tgt": ["b.png", "c.png"], "kps": [[5, 6], [30.5, 20]]}) + "\n{oops\n"
    )
    s2 = run_infer_pairs(jl, tmp_path / "j.jsonl", model=models["conv"])
    assert (s2["pairs"], s2["written"], s2["failed"]) == (3, 2, 1)
    recs2 = [json.loads(x) for x in (tmp_path / "j.jsonl").read_text().splitlines()]
    assert recs2[1]["keypoints"] == recs[1]["keypoints"]  # a -> c, same as from the CSV
    # CLI: the summary line and exit code 1 (some pairs failed); no temporary file left behind.
    out2 = tmp_path / "cli.jsonl"
    rc = main(["infer", "--pairs", str(pairs), "--model", str(models["conv"]), "--out", str(out2)])
    assert rc == 1 and len(out2.read_text().splitlines()) == 3
    assert not any(p.name.endswith(".tmp") for p in tmp_path.rglob("*"))


def test_infer_out_chains_as_kps_and_truth_errors(
    models: dict[str, Path], infer_inputs, tmp_path: Path
) -> None:
    io = infer_inputs
    first = run_infer(io["src"], io["trg"], io["kps"], model=models["position"], out=io["out"])
    # The report's targets become the sources of the next step (target -> source image).
    second = run_infer(io["trg"], io["src"], io["out"], model=models["position"])
    assert [k["source"] for k in second["keypoints"]] == [k["target"] for k in first["keypoints"]]
    truth = tmp_path / "truth.json"
    targets = np.array([k["target"] for k in first["keypoints"]])
    true = np.clip(targets + [3.0, 4.0], 0, [49, 59])  # target image 50 x 60: threshold max side 60
    truth.write_text(json.dumps({"target": true.tolist()}))  # the examples/truth.json form
    rep = run_infer(io["src"], io["trg"], io["kps"], model=models["position"], truth=truth)
    err = np.linalg.norm(true - targets, axis=1)
    assert err.max() > 1.0
    np.testing.assert_allclose([k["error_px"] for k in rep["keypoints"]], err, atol=1e-9)
    np.testing.assert_allclose([k["error_rel"] for k in rep["keypoints"]], err / 60, atol=1e-9)
    # Rejection: every match below confidence 1.01 is impossible (refused); at 1.0 all are rejected
    # unless exactly 1; rejected rows have target null and chaining them is refused.
    with pytest.raises(SimpleMatchError, match="outside"):
        run_infer(io["src"], io["trg"], io["kps"], model=models["position"], min_confidence=1.5)
    rej = run_infer(  # over the first report: --force (never silently)
        io["src"],
        io["trg"],
        io["kps"],
        model=models["position"],
        out=io["out"],
        min_confidence=1.0,
        force=True,
    )
    flags = [k["rejected"] for k in rej["keypoints"]]
    assert all((k["target"] is None) == k["rejected"] for k in rej["keypoints"])
    assert all(k["rejected"] == (k["confidence"] < 1.0) for k in rej["keypoints"])
    if any(flags):
        with pytest.raises(SimpleMatchError, match="cannot chain"):
            run_infer(io["trg"], io["src"], io["out"], model=models["position"])


def _bad_cases(tmp: Path, models: dict[str, Path], io: dict[str, Path]) -> dict[str, dict]:
    def write(name: str, text: str) -> Path:
        (tmp / name).write_text(text)
        return tmp / name

    corrupt_img = tmp / "corrupt.png"
    corrupt_img.write_bytes(io["src"].read_bytes()[:60])
    no_meta = make_onnx(tmp / "nometa.onnx", with_meta=False)
    wrong = make_onnx(tmp / "wrong.onnx", input_size=64, meta=make_meta(img_size=S))
    return {
        "missing source": {"src": tmp / "nope.png"},
        "corrupt target": {"trg": corrupt_img},
        "not an image": {"trg": write("text.png", "hello")},
        "malformed json": {"kps": write("bad.json", "[[1, 2], [3")},
        "empty list": {"kps": write("empty.json", "[]")},
        "outside source": {"kps": write("out.json", "[[5, 6], [41, 3]]")},
        "negative": {"kps": write("neg.json", "[[-1, 6]]")},
        "missing kps file": {"kps": tmp / "none.json"},
        "model without metadata": {"model": no_meta},
        "model size != metadata": {"model": wrong},
        "missing model": {"model": tmp / "missing.onnx"},
        "viz not png": {"viz": tmp / "res" / "viz.jpg"},
    }


def test_run_infer_rejects_bad_inputs_without_writing(
    models: dict[str, Path], infer_inputs, tmp_path: Path
) -> None:
    pytest.importorskip("simplematch.keypoints", reason="simplematch/keypoints.py not written yet")
    io = infer_inputs
    for name, change in _bad_cases(tmp_path, models, io).items():
        args = {
            "src": io["src"],
            "trg": io["trg"],
            "kps": io["kps"],
            "model": models["conv"],
            "viz": io["viz"],
        }
        args.update(change)
        with pytest.raises(SimpleMatchError):
            run_infer(
                args["src"], args["trg"], args["kps"], model=args["model"], out=io["out"], viz=args["viz"]
            )
        assert not io["out"].exists() and not io["viz"].exists(), name
        assert not any(p.name.endswith(".tmp") for p in tmp_path.rglob("*")), name


def test_default_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, models: dict[str, Path]) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SimpleMatchError, match="smatch demo"):
        find_default_model()
    target = tmp_path / "runs" / "demo" / "model.onnx"
    target.parent.mkdir(parents=True)
    target.write_bytes(models["conv"].read_bytes())
    assert find_default_model() == target


def test_a_pairs_csv_the_csv_module_refuses_is_one_line(tmp_path: Path) -> None:
    from simplematch.runtime.infer import read_pairs

    pairs = tmp_path / "pairs.csv"
    pairs.write_bytes(b"src,tgt,kps\na.png,b.png," + b"k" * 200_000 + b"\n")  # over the csv field limit
    with pytest.raises(SimpleMatchError, match=f"--pairs {pairs} is not a valid CSV"):
        read_pairs(pairs)
