"""End to end through the CLI: train demo_cpu (shortened) -> eval -> export -> runtime eval -> infer.

The runtime must reproduce the PyTorch PCK on the same data within 0.1 point at every alpha,
checked on the real PF-WILLOW subset in ../shared/data.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simplematch.cli.app import main
from tests.helpers import HAVE_WILLOW, NO_WILLOW, ROOT, WILLOW, unstamped

EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pipeline") / "ckpt"
    rc = main(["train", "--preset", "demo_cpu", "--img-size", "64", "--max-steps", "12", "--batch-size", "4",
               "--device", "cpu", "--out", str(out)])  # fmt: skip
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def exported(trained: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained model exported once, its parity checked on PF-WILLOW's images when they are there."""
    onnx_path = tmp_path_factory.mktemp("pipeline_onnx") / "model.onnx"
    check = ["--check-data", str(WILLOW)] if HAVE_WILLOW else []
    assert main(["export", str(trained), "--out", str(onnx_path), *check]) == 0
    return onnx_path


@pytest.mark.slow
def test_train_outputs(trained: Path) -> None:
    for name in ("model.safetensors", "config.json", "metrics.jsonl", "best.json", "last.json"):
        assert (trained / name).is_file(), name
    cfg = json.loads((trained / "config.json").read_text())
    assert cfg["img_size"] == 64 and cfg["max_steps"] == 12 and cfg["backbone"] == "resnet18"
    rows = [json.loads(x) for x in (trained / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in r for r in rows) and any("val_pck" in r for r in rows)
    best = json.loads((trained / "best.json").read_text())
    assert 0.0 <= best["pck"]["0.1"] <= 100.0


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_WILLOW, reason=NO_WILLOW)
def test_runtime_reproduces_torch_pck_on_pfwillow(trained: Path, exported: Path, tmp_path: Path) -> None:
    onnx_path = exported
    common = ["--dataset", "pfwillow", "--data-root", str(WILLOW), "--device", "cpu"]
    common += ["--min-confidence", "0.3"]
    assert main(["eval", str(trained), *common, "--json", str(tmp_path / "torch.json"),
                 "--predictions", str(tmp_path / "torch.jsonl")]) == 0  # fmt: skip
    assert main(["eval", str(onnx_path), *common, "--json", str(tmp_path / "onnx.json"),
                 "--predictions", str(tmp_path / "onnx.jsonl")]) == 0  # fmt: skip
    t = json.loads((tmp_path / "torch.json").read_text())
    o = json.loads((tmp_path / "onnx.json").read_text())
    # One evaluation stack: same predictions file fields, same pairs, cues and correctness within parity.
    tl = [json.loads(x) for x in (tmp_path / "torch.jsonl").read_text().splitlines()]
    ol = [json.loads(x) for x in (tmp_path / "onnx.jsonl").read_text().splitlines()]
    assert len(tl) == len(ol) == 360 and set(tl[0]) == set(ol[0])
    assert [r["id"] for r in tl] == [r["id"] for r in ol] and tl[0]["src_image"] == ol[0]["src_image"]
    agree = sum(
        a == b
        for r, q in zip(tl, ol, strict=True)
        for a, b in zip(r["correct"]["0.1"], q["correct"]["0.1"], strict=True)
    )
    assert agree / 3600 > 0.99
    for cue, v in t["confidence"]["auroc"].items():
        assert abs(v - o["confidence"]["auroc"][cue]) < 0.01, cue
    # The trained model's calibration travels into the export; both paths give the same probability.
    assert t["confidence"]["default"] == o["confidence"]["default"] == "calibrated"
    assert t["confidence"]["calibration"] == o["confidence"]["calibration"]
    gap = max(abs(a - b) for r, q in zip(tl, ol, strict=True)
              for a, b in zip(r["cues"]["calibrated"], q["cues"]["calibrated"], strict=True))  # fmt: skip
    assert gap < 1e-3
    assert (
        abs(t["confidence"]["rejection"]["kept_fraction"] - o["confidence"]["rejection"]["kept_fraction"])
        < 0.01
    )
    assert t["pairs"] == o["pairs"] == 360 and t["points"] == o["points"] == 3600
    assert set(t) | {"runtime", "provider"} == set(o)
    assert o["provider"] == "CPUExecutionProvider"
    for a in ("0.05", "0.1", "0.15"):
        assert abs(t["pck"][a] - o["pck"][a]) <= 0.1, (a, t["pck"], o["pck"])
        assert abs(t["pck_per_point"][a] - o["pck_per_point"][a]) <= 0.1
    assert set(t["per_category"]) == {"car(G)", "duck(S)", "motorbike(M)", "winebottle(wC)"}  # sub-classes


def test_infer_on_examples(exported: Path, tmp_path: Path) -> None:
    onnx_path = exported
    out, viz = tmp_path / "res.json", tmp_path / "viz.png"
    kps = str(EXAMPLES / "kps.json")
    rc = main(["infer", str(EXAMPLES / "src.png"), str(EXAMPLES / "tgt.png"), "--kps", kps,
               "--model", str(onnx_path), "--out", str(out), "--viz", str(viz)])  # fmt: skip
    assert rc == 0
    res = unstamped(json.loads(out.read_text()), "infer")
    assert set(res) == {
        "source", "target", "model", "provider", "confidence", "calibration", "min_confidence", "keypoints",
        "timing_ms",
    }  # fmt: skip
    # A trained model carries the calibration fitted on its validation pairs, and the export keeps it.
    assert (res["confidence"] == "calibrated") == res["calibration"]["calibrated"]
    n = len(json.loads((EXAMPLES / "kps.json").read_text())["keypoints"])
    assert len(res["keypoints"]) == n
    from PIL import Image

    with Image.open(viz) as im:
        assert im.width > 300 and im.height >= 200
