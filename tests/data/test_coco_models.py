"""COCO keypoints with models: the PF-WILLOW <-> COCO cross-check (exact PCK, PyTorch and ONNX runtime),
training and evaluating on a COCO file (held-out split from the run), and ``smatch train --init``."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from simplematch.checkpoint import save_checkpoint
from simplematch.cli.app import main
from simplematch.data import load_records
from simplematch.data.coco_pairs import CocoOptions
from simplematch.evaluation import EvalRequest, run_evaluation
from simplematch.model import SimpleMatch
from simplematch.train import load_init
from tests.helpers import ROOT, WILLOW, need_willow, tiny_config, write_tiny_config


def _convert():
    spec = importlib.util.spec_from_file_location("willow_to_coco", ROOT / "scripts" / "willow_to_coco.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.convert


@pytest.fixture(scope="module")
def willow_coco(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    need_willow()
    out = tmp_path_factory.mktemp("willow_coco") / "willow.json"
    return out, _convert()(WILLOW, out)


def _tables(res: dict) -> tuple:
    return res["pairs"], res["points"], res["pck"], res["pck_per_point"], res["per_category"]


def _both(model: Path, willow_coco: tuple[Path, Path], **kw) -> tuple[dict, dict]:
    coco_json, pairs = willow_coco
    ref = run_evaluation(model, EvalRequest(dataset="pfwillow", data_root=WILLOW, device="cpu", **kw))
    req = EvalRequest(
        dataset="coco",
        data_root=coco_json,
        threshold="kps",
        device="cpu",
        coco={"coco_pairs": str(pairs)},
        **kw,
    )
    return ref, run_evaluation(model, req)


def test_willow_as_coco_holds_the_pfwillow_pairs(willow_coco) -> None:
    coco_json, pairs = willow_coco
    ref = load_records("pfwillow", WILLOW, "test")
    recs = load_records("coco", coco_json, "test", coco=CocoOptions(pairs=str(pairs)))
    assert len(recs) == len(ref) == 360
    for a, b in zip(ref, recs, strict=True):
        assert Path(a.src_image).resolve() == Path(b.src_image).resolve() and a.category == b.category
        assert Path(a.trg_image).resolve() == Path(b.trg_image).resolve()
        np.testing.assert_array_equal(a.src_kps, b.src_kps)  # bit-identical coordinates
        np.testing.assert_array_equal(a.trg_kps, b.trg_kps)


@pytest.mark.slow
def test_willow_as_coco_gives_exactly_the_pfwillow_pck_pytorch(tiny_checkpoint: Path, willow_coco) -> None:
    ref, coco = _both(tiny_checkpoint, willow_coco)
    assert ref["pairs"] == 360 and ref["threshold"] == coco["threshold"] == "kps"
    assert _tables(coco) == _tables(ref)  # exact: same pairs, keypoints and thresholds
    assert coco["data"]["mode"] == "pairs file" and coco["data"]["pairs"] == 360
    # the per-keypoint table pools the same points as the per-category one
    for cat, rows in coco["per_keypoint"].items():
        assert list(rows) == [str(k) for k in range(1, 11)]
        assert sum(r["points"] for r in rows.values()) == 10 * ref["per_category"][cat]["pairs"]


@pytest.mark.slow
def test_willow_as_coco_gives_exactly_the_pfwillow_pck_runtime(tiny_onnx: Path, willow_coco) -> None:
    ref, coco = _both(tiny_onnx, willow_coco)
    assert ref["runtime"] == coco["runtime"] and ref["pairs"] == 360
    assert _tables(coco) == _tables(ref)


def test_train_then_eval_on_the_held_out_images(tmp_path: Path, willow_coco, capsys) -> None:
    coco_json, _ = willow_coco
    cfg = write_tiny_config(tmp_path / "tiny.json", dataset="coco", max_steps=2)
    run = tmp_path / "run"
    flags = ["--data-root", str(coco_json), "--split-seed", "3", "--split-fractions", "0.5,0.2,0.3"]
    assert main(["train", "--config", str(cfg), "--out", str(run), *flags]) == 0
    out = capsys.readouterr().out
    assert "0 annotation(s) skipped" in out and "seed 3" in out
    recorded = json.loads((run / "data.json").read_text())
    assert recorded["trn"]["split_seed"] == 3 and len(recorded["trn"]["image_ids"]) == 20
    # eval takes the split from the run: its test images, none of them trained on
    res = run_evaluation(run, EvalRequest(dataset="coco", device="cpu"))  # --data-root: the run's own
    assert res["data"]["split_seed"] == 3 and res["data"]["split_fractions"] == [0.5, 0.2, 0.3]
    assert res["threshold"] == "bbox" and res["data"]["images"] == 12
    # another split would score training images: refused in one line, for the checkpoint and its ONNX
    from simplematch.export import export_checkpoint

    onnx = tmp_path / "run.onnx"
    export_checkpoint(run, out=onnx, check=False)
    runtime = run_evaluation(onnx, EvalRequest(dataset="coco", data_root=coco_json, device="cpu"))
    assert runtime["data"] == res["data"]  # the split recorded in the ONNX metadata
    capsys.readouterr()
    for model in (run, onnx):
        args = ["eval", str(model), "--dataset", "coco", "--data-root", str(coco_json), "--split-seed", "0"]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "are training images of" in err
    # --split trn scores the training images on purpose
    assert run_evaluation(onnx, EvalRequest(dataset="coco", data_root=coco_json, split="trn"))["pairs"] > 0
    # calibrate takes the run's split too (its test pairs, not a default split that holds training images)
    cal_out = tmp_path / "cal.onnx"
    args = ["calibrate", str(onnx), "--dataset", "coco", "--data-root", str(coco_json), "--split", "test"]
    assert main([*args, "--alpha", "0.5", "--out", str(cal_out)]) == 0, capsys.readouterr().err
    from simplematch.runtime.matcher import Matcher

    cal = Matcher(cal_out).calibration
    assert cal is not None and (cal.dataset, cal.split, cal.pairs) == ("coco", "test", res["pairs"])


# --- --init ------------------------------------------------------------------------------------------------
def _first_loss(run: Path) -> float:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return next(r["loss"] for r in rows if r.get("step") == 1 and "loss" in r)


def test_init_loads_the_source_weights_and_records_them(tmp_path: Path, capsys) -> None:
    cfg = write_tiny_config(tmp_path / "tiny.json", max_steps=3)
    source = tmp_path / "source"
    assert main(["train", "--config", str(cfg), "--out", str(source)]) == 0
    weights = load_file(str(source / "model.safetensors"))
    # the model --init builds holds exactly the source's weights
    model = SimpleMatch(tiny_config(max_steps=3))
    started = load_init(model, str(source))
    for key, value in model.state_dict().items():
        assert torch.equal(value, weights[key]), key
    assert started["weights"] == str(source / "model.safetensors") and len(started["sha256"]) == 64
    # a run started with --init (its config taken from the source) starts from another loss than scratch
    scratch, fine = tmp_path / "scratch", tmp_path / "fine"
    assert main(["train", "--config", str(cfg), "--out", str(scratch), "--max-steps", "1"]) == 0
    assert main(["train", "--init", str(source), "--out", str(fine), "--max-steps", "1"]) == 0
    assert _first_loss(fine) != _first_loss(scratch)
    saved = json.loads((fine / "config.json").read_text())
    assert saved["init"] == str(source) and saved["backbone"] == "resnet10t" and saved["weights"] is None
    assert json.loads((fine / "init.json").read_text())["sha256"] == started["sha256"]
    # --resume continues from the run's own checkpoint: the --init folder is no longer needed
    shutil.rmtree(source)
    assert main(["train", "--resume", str(fine), "--max-steps", "2"]) == 0


def test_init_refuses_another_architecture_in_one_line(tmp_path: Path, capsys) -> None:
    source = tmp_path / "source"
    save_checkpoint(SimpleMatch(tiny_config()), tiny_config(), source)
    other = write_tiny_config(tmp_path / "other.json", align_dim=8)
    capsys.readouterr()
    rc = main(["train", "--config", str(other), "--init", str(source), "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--init" in err and "does not fit" in err
    assert not (tmp_path / "x").exists()  # a failed start leaves nothing behind
    assert main(["train", "--init", str(tmp_path / "nope"), "--out", str(tmp_path / "y")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    rc = main(["train", "--init", str(source), "--weights", str(source / "model.safetensors"), "--out", "z"])
    assert rc == 2 and "--init loads the whole model" in capsys.readouterr().err
    # a run's weights given as a backbone file: the one-line answer is --init
    cfg = write_tiny_config(tmp_path / "tiny.json")
    rc = main(["train", "--config", str(cfg), "--weights", str(source / "model.safetensors"), "--out", "w"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and f"--init {source}" in err


def test_init_from_a_converted_official_checkpoint_fine_tunes_on_coco(tmp_path: Path, willow_coco) -> None:
    from simplematch.official import convert_official
    from tests.test_official import TINY_RESNET, _save, official_resnet

    official = official_resnet(layers=(1, 1, 1, 1), planes=(8, 16, 32, 64), align=64)
    model, cfg, _ = convert_official(
        _save(tmp_path, official), "resnet101", 64, backbone_kwargs=TINY_RESNET, overrides={"align_dim": 64},
        any_img_size=True,  # a tiny ResNet at 64 px, not a released size
    )  # fmt: skip
    converted = tmp_path / "official_r101"
    save_checkpoint(model, cfg, converted)  # what `smatch convert` writes
    run = tmp_path / "fine"
    args = ["train", "--init", str(converted), "--dataset", "coco", "--data-root", str(willow_coco[0])]
    assert main([*args, "--out", str(run), "--max-steps", "1", "--batch-size", "2", "--device", "cpu"]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["backbone"] == "resnet101" and saved["dataset"] == "coco" and saved["init"] == str(converted)
