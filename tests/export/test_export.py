"""``smatch export``: ONNX graph, metadata, batch handling, parity gate, fp16, TensorRT and error paths.

Models are tiny (ViT: patch 14, 56 px, depth 2, width 32; ResNet18 at 64 px) and every dynamo export
(~5-10 s on a shared CPU) is done once per module and reused; the error-path tests fail before exporting.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from simplematch.checkpoint import save_checkpoint
from simplematch.cli.app import main
from simplematch.config import Config
from simplematch.errors import SimpleMatchError
from simplematch.export import default_output, export_checkpoint
from simplematch.export.parity import (
    AGREE_PX,
    FP32_MAX_ABS,
    FP32_MIN_AGREEMENT,
    compare_features,
    images_from_dir,
    torch_features,
)
from simplematch.image import IMAGENET_MEAN, IMAGENET_STD
from simplematch.metadata import PREFIX, ModelMeta
from simplematch.model import SimpleMatch
from simplematch.runtime.backends import OnnxBackend
from tests.helpers import WILLOW

VIT_SIZE, RN_SIZE = 56, 64
TINY_VIT = dict(depth=2, embed_dim=32, num_heads=2)
FP16_MAX_ABS = 5e-3  # fp16 is reported, not gated; this only catches a broken conversion (measured ~6e-4)
FP16_MIN_AGREEMENT = 0.95
PF_WILLOW = WILLOW
HAS_TRT = importlib.util.find_spec("tensorrt") is not None


# ---------------------------------------------------------------------------------------------------------
# fixtures: tiny checkpoints and their exports (module scope: each dynamo export is done once)
# ---------------------------------------------------------------------------------------------------------


def _vit_ckpt(root: Path) -> Path:
    torch.manual_seed(0)
    cfg = Config(backbone="vit_small_patch14_dinov2", img_size=VIT_SIZE, finetune="lora", dropout=0.0)
    model = SimpleMatch(cfg, backbone_kwargs=TINY_VIT)
    with torch.no_grad():  # LoRA B starts at zero; make the update real so the merge is exercised
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    save_checkpoint(model, cfg, root / "vit" / "checkpoint")
    return root / "vit" / "checkpoint"


def _resnet_ckpt(root: Path) -> Path:
    torch.manual_seed(0)
    cfg = Config(
        backbone="resnet18",
        img_size=RN_SIZE,
        align_dim=32,
        multiscale=True,
        finetune="full",
        windows=[0, 9, 15],
    )
    model = SimpleMatch(cfg)
    g = torch.Generator().manual_seed(1)
    for m in model.modules():  # non-trivial running statistics: eval-mode BN must be what is exported
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    save_checkpoint(model, cfg, root / "rn" / "checkpoint")
    return root / "rn" / "checkpoint"


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    return {"vit": _vit_ckpt(root), "resnet": _resnet_ckpt(root)}


@pytest.fixture(scope="module")
def exports(ckpts, tmp_path_factory) -> dict[str, dict]:
    """fp32 dynamic-batch ONNX of both models through the CLI (default --out), plus the ViT in fp16."""
    out: dict[str, dict] = {}
    for name, ckpt in ckpts.items():
        assert main(["export", str(ckpt)]) == 0
        path = ckpt / "model.onnx"
        out[name] = {"path": path, "ckpt": ckpt, "meta": _meta(path)}
    fp16 = tmp_path_factory.mktemp("fp16") / "vit.fp16.onnx"
    res = export_checkpoint(ckpts["vit"], fp16=True, out=fp16)
    out["vit_fp16"] = {"path": fp16, "ckpt": ckpts["vit"], "meta": _meta(fp16), "res": res}
    return out


def _meta(path: Path) -> ModelMeta:
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    return ModelMeta.from_props(props, source=str(path))


def _images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, size, size), dtype=np.float32)


def _one_line_error(capsys, rc: int, *needles: str) -> str:
    """The CLI contract for user errors: exit code 2, exactly one non-empty stderr line, no traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix in (".onnx", ".engine", ".tmp", ".json"))


# ---------------------------------------------------------------------------------------------------------
# graph, checker, metadata
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vit", "resnet"])
def test_export_passes_checker_and_has_the_contracted_io(exports, name):
    path = exports[name]["path"]
    assert path == default_output(exports[name]["ckpt"], "onnx", False)
    assert path.parent == exports[name]["ckpt"]  # inside the checkpoint folder
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    assert model.opset_import[0].version >= 17
    assert not any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer)
    extra = sorted(
        p.name for p in path.parent.iterdir() if p.name not in ("model.safetensors", "config.json")
    )
    assert extra == ["model.onnx"], "one file next to the checkpoint's own files, no external data"
    (inp,), (out,) = model.graph.input, model.graph.output
    assert (inp.name, out.name) == ("image", "features")
    assert inp.type.tensor_type.elem_type == out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    in_dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    size = VIT_SIZE if name == "vit" else RN_SIZE
    assert isinstance(in_dims[0], str) and in_dims[1:] == [3, size, size]  # dynamic batch, fixed H, W
    assert os.stat(path).st_mode & 0o044 == 0o044, "exported model must be readable by others"


def test_vit_graph_has_no_position_embedding_resize(exports):
    """Every Resize must act on data computed from the image (the decoder's upsampling), never on weights."""
    graph = onnx.load(str(exports["vit"]["path"])).graph
    from_image = {"image"}
    for node in graph.node:  # nodes are topologically sorted
        if any(i in from_image for i in node.input):
            from_image.update(node.output)
    resizes = [n for n in graph.node if n.op_type == "Resize"]
    assert all(n.input[0] in from_image for n in resizes)


@pytest.mark.parametrize("name", ["vit", "resnet", "vit_fp16"])
def test_metadata_round_trip(exports, name):
    entry = exports[name]
    meta = entry["meta"]
    cfg = Config.load(entry["ckpt"] / "config.json")
    import hashlib

    import simplematch

    sha = hashlib.sha256((entry["ckpt"] / "model.safetensors").read_bytes()).hexdigest()
    assert meta.version == simplematch.__version__
    assert (meta.backbone, meta.img_size, meta.window, meta.beta, meta.coord) == (
        cfg.backbone, cfg.img_size, cfg.fine_window, cfg.beta, cfg.coord,
    )  # fmt: skip
    assert meta.stride == 4.0
    assert meta.mean == pytest.approx(list(IMAGENET_MEAN)) and meta.std == pytest.approx(list(IMAGENET_STD))
    assert meta.precision == ("fp16" if name.endswith("fp16") else "fp32")
    assert meta.opset == onnx.load(str(entry["path"])).opset_import[0].version
    assert meta.checkpoint_sha256 == sha
    assert Config.from_dict(meta.config) == cfg  # the resolved config, complete
    assert {"max_abs_feature_diff", "mean_abs_feature_diff", "keypoint_agreement"} <= set(meta.parity)
    # serialising again gives the same props: nothing is lost or re-typed on the way
    props = {p.key: p.value for p in onnx.load(str(entry["path"])).metadata_props if p.key.startswith(PREFIX)}
    assert meta.to_props() == props
    assert ModelMeta.from_props(meta.to_props()) == meta


# ---------------------------------------------------------------------------------------------------------
# onnxruntime: batch sizes and parity against PyTorch (the export gate's tolerances)
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["vit", "resnet"])
def test_dynamic_batch_1_and_3_match_torch(exports, name):
    from simplematch.checkpoint import load_checkpoint

    model, cfg = load_checkpoint(exports[name]["ckpt"])
    backend = OnnxBackend(exports[name]["path"])
    assert backend.max_batch is None
    side = cfg.img_size // 4
    for n in (1, 3):
        x = _images(n, cfg.img_size, seed=n)
        got = backend.encode(x)
        ref = torch_features(model, x)
        assert got.shape == ref.shape == (n, ref.shape[1], side, side)
        assert np.abs(got - ref).max() <= FP32_MAX_ABS
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # L2-normalised along C


@pytest.mark.parametrize("name", ["vit", "resnet"])
def test_fp32_parity_meets_the_gate(exports, name):
    parity = exports[name]["meta"].parity
    assert parity["precision"] == "fp32" and parity["runtime"] == "onnxruntime-cpu"
    assert parity["data"] == "bundled photo pairs" and parity["images"] >= 2 and parity["keypoints"] >= 30
    assert parity["max_abs_feature_diff"] <= FP32_MAX_ABS
    assert parity["mean_abs_feature_diff"] <= FP32_MAX_ABS / 10
    assert parity["keypoint_agreement"] >= FP32_MIN_AGREEMENT


def test_fp16_passes_checker_keeps_float32_io_and_reports_error(exports, capsys):
    entry = exports["vit_fp16"]
    onnx.checker.check_model(str(entry["path"]), full_check=True)
    model = onnx.load(str(entry["path"]))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    ln = [n for n in model.graph.node if n.op_type in ("LayerNormalization", "Softmax")]
    assert ln, "expected LayerNorm/Softmax nodes in the ViT graph"
    fp32_size = entry["path"].stat().st_size / exports["vit"]["path"].stat().st_size
    assert fp32_size < 0.85  # weights really are half precision
    parity = entry["meta"].parity
    assert parity == entry["res"]["parity"] and parity["precision"] == "fp16"
    assert 0 < parity["max_abs_feature_diff"] <= FP16_MAX_ABS
    assert parity["keypoint_agreement"] >= FP16_MIN_AGREEMENT
    with capsys.disabled():  # the fp16 error is reported, not gated
        print(
            f"\nfp16 tiny ViT: max abs {parity['max_abs_feature_diff']:.2e}, mean abs "
            f"{parity['mean_abs_feature_diff']:.2e}, keypoint agreement {parity['keypoint_agreement']:.2%}"
        )
    # and the fp16 model runs at batch 1 and 3 with float32 output
    backend = OnnxBackend(entry["path"])
    for n in (1, 3):
        feats = backend.encode(_images(n, VIT_SIZE))
        assert feats.dtype == np.float32 and feats.shape[0] == n


@pytest.mark.parametrize("n", [1, 3])
def test_static_batch_export(ckpts, tmp_path, n):
    out = tmp_path / f"vit_b{n}.onnx"
    assert main(["export", str(ckpts["vit"]), "--batch", str(n), "--out", str(out)]) == 0
    model = onnx.load(str(out))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == n
    assert _meta(out).parity["max_abs_feature_diff"] <= FP32_MAX_ABS
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (feats,) = sess.run(None, {"image": _images(n, VIT_SIZE)})
    assert feats.shape == (n, 32, VIT_SIZE // 4, VIT_SIZE // 4)
    assert _leftovers(tmp_path) == [out.name]


def test_parity_on_real_images_when_check_data_given(ckpts, exports, tmp_path):
    """--check-data: PF-WILLOW when present (else a folder of generated PNGs), classes taken in turn."""
    data = PF_WILLOW
    if not data.is_dir():
        from PIL import Image

        data = tmp_path / "imgs"
        for cls in ("a", "b"):
            (data / cls).mkdir(parents=True)
            for i in range(3):
                rgb = (np.random.default_rng(i).random((40, 50, 3)) * 255).astype(np.uint8)
                Image.fromarray(rgb).save(data / cls / f"{i}.png")
    images = images_from_dir(data, limit=4)
    assert len(images) == 4
    from simplematch.checkpoint import load_checkpoint
    from simplematch.export.parity import parity_check

    model, cfg = load_checkpoint(ckpts["resnet"])
    res = parity_check(model, exports["resnet"]["path"], cfg, images=images)
    assert res["data"] == "4 real images" and res["images"] == 4
    assert res["max_abs_feature_diff"] <= FP32_MAX_ABS and res["keypoint_agreement"] >= FP32_MIN_AGREEMENT


def test_compare_features_counts_agreement_within_half_a_pixel():
    cfg = Config(backbone="resnet18", img_size=64, windows=[0, 9, 15])
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((2, 8, 16, 16)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    same = compare_features(feats, feats.copy(), cfg)
    assert same["keypoint_agreement"] == 1.0 and same["max_abs_feature_diff"] == 0.0
    noisy = compare_features(feats, feats + rng.standard_normal(feats.shape).astype(np.float32), cfg)
    assert noisy["keypoint_agreement"] < 1.0 and noisy["max_keypoint_diff_px"] > AGREE_PX


def test_failing_parity_exits_nonzero_and_leaves_no_file(ckpts, tmp_path, monkeypatch, capsys):
    """Force a failure by corrupting what onnxruntime returns; the temp file must be gone too."""
    import simplematch.export.parity as parity

    real = parity.run_in_batches
    monkeypatch.setattr(parity, "run_in_batches", lambda fn, x, batch: real(fn, x, batch) + 1e-3)
    out = tmp_path / "sub" / "model.onnx"
    rc = main(["export", str(ckpts["vit"]), "--out", str(out), "--batch", "2"])
    _one_line_error(capsys, rc, "parity check failed", "no file was written")
    assert not out.exists()
    assert _leftovers(out.parent) == []


def test_no_check_skips_parity(ckpts, tmp_path, monkeypatch):
    import simplematch.export.parity as parity

    def boom(*args, **kwargs):
        raise AssertionError("parity must not run with --no-check")

    monkeypatch.setattr(parity, "parity_check", boom)
    out = tmp_path / "model.onnx"
    assert main(["export", str(ckpts["vit"]), "--no-check", "--out", str(out), "--batch", "1"]) == 0
    assert _meta(out).parity == {}


def test_export_does_not_modify_the_model(ckpts):
    """LoRA is merged into a copy: the caller's model keeps its LoRA modules (parity compares against it)."""
    from simplematch.checkpoint import load_checkpoint
    from simplematch.export.onnx_export import prepare_for_export

    model, _ = load_checkpoint(ckpts["vit"])
    merged = prepare_for_export(__import__("copy").deepcopy(model))
    assert not getattr(model, "lora_merged", False) and merged.lora_merged
    x = torch.from_numpy(_images(2, VIT_SIZE))
    with torch.no_grad():
        assert (model.encode(x) - merged.encode(x)).abs().max() <= FP32_MAX_ABS


# ---------------------------------------------------------------------------------------------------------
# user errors: one line, exit code 2, nothing written
# ---------------------------------------------------------------------------------------------------------


def test_missing_checkpoint(tmp_path, capsys):
    rc = main(["export", str(tmp_path / "nope")])
    _one_line_error(capsys, rc, "checkpoint folder not found")
    assert list(tmp_path.iterdir()) == []


def test_missing_checkpoint_library_call_creates_nothing(tmp_path):
    with pytest.raises(SimpleMatchError, match="checkpoint folder not found"):
        export_checkpoint(tmp_path / "runs" / "nope")
    assert list(tmp_path.iterdir()) == []  # the default --out folder was not created either


def test_checkpoint_folder_without_weights(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc = main(["export", str(tmp_path / "empty")])
    _one_line_error(capsys, rc, "no model.safetensors")


def test_unknown_format_library():
    with pytest.raises(SimpleMatchError, match="unknown export format 'bogus'") as info:
        export_checkpoint(Path("."), fmt="bogus")
    assert "\n" not in str(info.value)


def test_unknown_format_cli(ckpts, capsys):
    rc = main(["export", str(ckpts["vit"]), "--format", "bogus"])
    _one_line_error(capsys, rc, "bogus")


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--batch", "0"], "--batch 0 is invalid"),
        (["--batch", "many"], "--batch 'many' is invalid"),
        (["--opset", "13"], "opset 13 is too old"),
        (["--opset", "17"], "opset 17 is too old"),  # dynamo cannot down-convert these graphs to 17
        (["--opset", "99"], "opset 99 is newer"),
    ],
)
def test_bad_options(ckpts, tmp_path, capsys, args, needle):
    rc = main(["export", str(ckpts["vit"]), "--out", str(tmp_path / "m.onnx"), *args])
    _one_line_error(capsys, rc, needle)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output(ckpts, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where the output folder should be: fails even for root
    rc = main(["export", str(ckpts["vit"]), "--out", str(blocker / "model.onnx")])
    _one_line_error(capsys, rc, f"cannot write --out {blocker / 'model.onnx'}: {blocker} is not a folder")
    assert blocker.read_text() == "x"


def test_output_check_creates_nothing(tmp_path):
    """The option check only checks: a missing output folder is made by the writer, not by the check."""
    from simplematch.export import check_output_path

    out = tmp_path / "new" / "sub" / "model.onnx"
    assert check_output_path(out, "onnx") == out
    assert list(tmp_path.iterdir()) == []


def test_output_is_a_folder(ckpts, tmp_path, capsys):
    rc = main(["export", str(ckpts["vit"]), "--out", str(tmp_path)])
    _one_line_error(capsys, rc, "is a folder")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only folders")
def test_read_only_output_folder(ckpts, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        rc = main(["export", str(ckpts["vit"]), "--out", str(ro / "model.onnx")])
        _one_line_error(capsys, rc, "not writable")
    finally:
        ro.chmod(0o700)


# ---------------------------------------------------------------------------------------------------------
# TensorRT
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here")
def test_trt_missing_is_one_line(ckpts, tmp_path, capsys):
    out = tmp_path / "model.engine"
    rc = main(["export", str(ckpts["vit"]), "--format", "trt", "--out", str(out)])
    line = _one_line_error(
        capsys, rc, "TensorRT is not installed", "pip install 'simplematch[trt]'", "NVIDIA GPU"
    )
    assert line.startswith("error: ")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.gpu
@pytest.mark.parametrize("fp16", [False, True])
def test_trt_build_and_parity(ckpts, tmp_path, fp16):
    pytest.importorskip("tensorrt")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from simplematch.runtime.backends import TensorRTBackend

    out = tmp_path / ("model.fp16.engine" if fp16 else "model.engine")
    args = ["export", str(ckpts["vit"]), "--format", "trt", "--out", str(out)]
    assert main(args + (["--fp16"] if fp16 else [])) == 0
    assert out.is_file() and out.with_suffix(".engine.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "staging folder left behind"
    backend = TensorRTBackend(out)
    try:
        parity = backend.meta.parity
        assert backend.meta.precision == ("fp16" if fp16 else "fp32")
        assert parity["runtime"] == "tensorrt" and "onnx_vs_torch" in parity
        if not fp16:
            assert parity["max_abs_feature_diff"] <= FP32_MAX_ABS
            assert parity["keypoint_agreement"] >= FP32_MIN_AGREEMENT
        for n in (1, 3):
            feats = backend.encode(_images(n, VIT_SIZE))
            assert feats.shape == (n, 32, VIT_SIZE // 4, VIT_SIZE // 4)
    finally:
        backend.close()


def test_topological_sort_orders_a_shuffled_graph_and_refuses_a_cycle():
    from onnx import TensorProto, helper

    from simplematch.export.onnx_export import topological_sort

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("z", TensorProto.FLOAT, [1])
    first, second = helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Neg", ["y"], ["z"])
    graph = helper.make_graph([second, first], "g", [x], [y])  # consumer before its producer
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(helper.make_model(graph))
    topological_sort(graph)
    assert [n.op_type for n in graph.node] == ["Relu", "Neg"]
    onnx.checker.check_model(helper.make_model(graph))
    cycle = helper.make_graph(
        [helper.make_node("Relu", ["w"], ["v"]), helper.make_node("Neg", ["v"], ["w"])], "c", [x], [y]
    )
    with pytest.raises(SimpleMatchError, match="not sortable"):
        topological_sort(cycle)


def test_bundled_parity_images_are_four_pairs_of_one_scene_each():
    from simplematch.export.parity import bundled_images

    images = bundled_images()
    assert len(images) == 8 and all(im.dtype == np.uint8 and im.ndim == 3 for im in images)
    # consecutive images are two crops of one photo: far more alike than images of different photos
    means = np.array([im.reshape(-1, 3).mean(0) for im in images])
    same = [np.abs(means[i] - means[i + 1]).sum() for i in range(0, 8, 2)]
    other = [np.abs(means[i] - means[j]).sum() for i in range(0, 8, 2) for j in range(0, 8, 2) if i != j]
    assert max(same) < min(other)
