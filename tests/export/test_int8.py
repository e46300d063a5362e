"""``smatch export --int8 --calib-data DIR``: static QDQ INT8 through onnxruntime, gated against fp32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from simplematch.checkpoint import save_checkpoint
from simplematch.cli.app import main
from simplematch.config import Config
from simplematch.metadata import ModelMeta
from simplematch.model import SimpleMatch


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("i8")
    torch.manual_seed(0)
    cfg = Config(backbone="resnet18", img_size=64, align_dim=32, finetune="full")
    save_checkpoint(SimpleMatch(cfg), cfg, root / "checkpoint")
    for cls in ("a", "b"):  # smooth random images, two "classes" (sub-folders)
        (root / "imgs" / cls).mkdir(parents=True)
        for i in range(12):
            small = np.random.default_rng(100 * len(cls) + i + ord(cls)).random((6, 8, 3))
            img = Image.fromarray((small * 255).astype(np.uint8)).resize((80, 60), Image.BILINEAR)
            img.save(root / "imgs" / cls / f"{i:02d}.png")
    return {"ckpt": root / "checkpoint", "imgs": root / "imgs"}


def _meta(path: Path) -> ModelMeta:
    return ModelMeta.from_props({p.key: p.value for p in onnx.load(str(path)).metadata_props})


def test_int8_export_is_qdq_and_reports_agreement(setup):
    ck, imgs = setup["ckpt"], setup["imgs"]
    assert main(["export", str(ck), "--int8", "--calib-data", str(imgs), "--check-data", str(imgs)]) == 0
    path = ck / "model.int8.onnx"
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    meta = _meta(path)
    assert meta.precision == "int8" and meta.parity["calib_images"] == 16 and meta.parity["images"] == 8
    assert meta.parity["keypoint_agreement"] >= meta.parity["min_agreement"] == 0.9
    assert 0.9 < meta.parity["feature_cosine_mean"] <= 1.0 + 1e-6
    from simplematch.runtime.backends import OnnxBackend

    x = np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)
    assert OnnxBackend(path).encode(x).shape == (2, 32, 16, 16)


def test_parity_of_a_model_with_itself_is_perfect(setup, tiny_onnx):
    from simplematch.export.int8 import int8_parity
    from simplematch.export.parity import images_from_dir

    res = int8_parity(tiny_onnx, tiny_onnx, images_from_dir(setup["imgs"], limit=4))
    assert res["keypoint_agreement"] == 1.0 and res["median_keypoint_diff_px"] == 0.0
    assert abs(res["feature_cosine_min"] - 1.0) < 1e-5


@pytest.mark.slow
def test_low_agreement_is_refused_and_leaves_nothing(setup, tmp_path, monkeypatch, capsys):
    import simplematch.export.int8 as int8

    real = int8.int8_parity
    monkeypatch.setattr(int8, "int8_parity", lambda *a, **k: {**real(*a, **k), "keypoint_agreement": 0.5})
    out = tmp_path / "m.int8.onnx"
    rc = main(["export", str(setup["ckpt"]), "--int8", "--calib-data", str(setup["imgs"]), "--out", str(out)])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2 and len(err) == 1 and "int8 keypoint agreement with fp32 is 50.0%" in err[0]
    assert "--int8-min-agreement" in err[0] and list(tmp_path.iterdir()) == []
    # the stated bar is overridable
    rc = main(["export", str(setup["ckpt"]), "--int8", "--calib-data", str(setup["imgs"]), "--out", str(out),
               "--int8-min-agreement", "0.4"])  # fmt: skip
    assert rc == 0 and _meta(out).parity["min_agreement"] == 0.4


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--int8"], "--int8 needs --calib-data DIR"),
        (["--int8", "--fp16", "--calib-data", "."], "--int8 quantizes the fp32 features ONNX graph only"),
        (["--int8", "--calib-data", ".", "--calib-method", "kl"], "unknown calibration method 'kl'"),
    ],
)
def test_bad_int8_options(setup, tmp_path, capsys, args, needle):
    rc = main(["export", str(setup["ckpt"]), "--out", str(tmp_path / "m.onnx"), *args])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2 and len(err) == 1 and needle in err[0], err
