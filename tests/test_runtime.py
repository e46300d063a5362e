"""The torch-free runtime: numpy matching == torch matching, backends, Matcher, infer, viz, evaluation.

ONNX models here are tiny graphs built with ``onnx.helper`` (a stride-4 conv + L2 normalisation along C, or
a "position" model whose features are one-hot cell codes, so every keypoint matches its own cell), stamped
with :class:`ModelMeta` the way ``smatch export`` does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simplematch import confidence
from simplematch.errors import SimpleMatchError
from simplematch.image import to_image_frame, to_model_frame
from simplematch.metadata import ModelMeta
from simplematch.metrics import aggregate_pck, pck_correct
from simplematch.runtime import Matcher, OnnxBackend, load_backend
from simplematch.runtime import matching as npm
from simplematch.runtime.backends import TensorRTBackend, engine_sidecar
from simplematch.runtime.infer import find_default_model, run_infer
from simplematch.runtime.viz import canvas_size, render_matches

REPO = Path(__file__).resolve().parents[1]
S = 32  # model input side of the tiny test models (feature map 8 x 8)


# ----------------------------------------------------------------------------------------------------------
# Tiny ONNX models
# ----------------------------------------------------------------------------------------------------------
def make_meta(img_size: int = S, **overrides: object) -> ModelMeta:
    values: dict = dict(
        version="0.1.0",
        backbone="tiny",
        img_size=img_size,
        stride=4.0,
        window=5,
        beta=0.02,
        coord="corner",
        mean=[0.485, 0.456, 0.406],
        std=[0.229, 0.224, 0.225],
        precision="fp32",
        opset=17,
        checkpoint_sha256="0" * 64,
        config={"dataset": "synthetic", "img_size": img_size},
    )
    values.update(overrides)
    return ModelMeta(**values)


def make_onnx(
    path: Path,
    *,
    kind: str = "conv",
    input_size: int = S,
    channels: int = 8,
    meta: ModelMeta | None = None,
    with_meta: bool = True,
    seed: int = 0,
) -> Path:
    """(B, 3, input_size, input_size) -> stride-4 (B, C, input_size/4, input_size/4), L2-normalised along C.

    kind="conv": random 4x4 stride-4 conv (features depend on the image);
    kind="position": conv * 0 + one-hot code of the cell (C = h*w), so cell (i, j) matches only itself.
    """
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    side = input_size // 4
    rng = np.random.default_rng(seed)
    if kind == "position":
        channels = side * side
    weight = rng.standard_normal((channels, 3, 4, 4)).astype(np.float32)
    inits = [numpy_helper.from_array(weight, "w")]
    nodes = [helper.make_node("Conv", ["image", "w"], ["conv"], kernel_shape=[4, 4], strides=[4, 4])]
    last = "conv"
    if kind == "position":
        code = np.eye(side * side, dtype=np.float32).reshape(side * side, side, side)[None]
        inits += [
            numpy_helper.from_array(np.zeros(1, np.float32), "zero"),
            numpy_helper.from_array(code, "code"),
        ]
        nodes += [
            helper.make_node("Mul", ["conv", "zero"], ["zeroed"]),
            helper.make_node("Add", ["zeroed", "code"], ["pos"]),
        ]
        last = "pos"
    nodes.append(helper.make_node("LpNormalization", [last], ["features"], axis=1, p=2))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["B", 3, input_size, input_size])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["B", channels, side, side])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if with_meta:
        for key, value in (meta or make_meta(img_size=input_size)).to_props().items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "conv": make_onnx(root / "conv.onnx"),
        "position": make_onnx(root / "position.onnx", kind="position"),
        "position_center": make_onnx(
            root / "position_center.onnx", kind="position", meta=make_meta(coord="center")
        ),
    }


def write_image(path: Path, w: int, h: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


# ----------------------------------------------------------------------------------------------------------
# numpy matching == torch matching
# ----------------------------------------------------------------------------------------------------------
def _random_case(seed: int, b: int = 2, n: int = 17, c: int = 16, h: int = 13, img_size: int = 50):
    rng = np.random.default_rng(seed)
    src = rng.standard_normal((b, c, h, h)).astype(np.float32)
    trg = rng.standard_normal((b, c, h, h)).astype(np.float32)
    kps = rng.uniform(0, img_size, (b, n, 2)).astype(np.float32)
    stride = img_size / h
    # Borders and exact cell edges: 0, the last pixel, the image edge itself (clamped) and multiples of s.
    kps[:, :6] = np.array(
        [
            [0, 0],
            [img_size - 1e-3, img_size - 1e-3],
            [img_size, 0],
            [stride, 2 * stride],
            [5 * stride, 0],
            [0, 12 * stride],
        ],
        dtype=np.float32,
    )
    return src, trg, kps


@pytest.mark.parametrize("coord", ["corner", "center"])
@pytest.mark.parametrize("window", [0, 1, 2, 3, 4, 5, 8, 12, 13, 40])
def test_match_keypoints_matches_torch(window: int, coord: str) -> None:
    torch = pytest.importorskip("torch")
    from simplematch import matching as tm

    for seed in range(3):
        src, trg, kps = _random_case(seed * 100 + window)
        for beta in (0.02, 0.1):
            t = tm.match_keypoints(
                torch.from_numpy(src), torch.from_numpy(trg), torch.from_numpy(kps), 50, window, beta, coord
            )
            got = npm.match_keypoints(src, trg, kps, 50, window, beta, coord)
            assert type(got) is npm.Matches and type(t) is tm.Matches and t._fields == got._fields
            np.testing.assert_allclose(got.pred, t.pred.double().numpy(), rtol=0, atol=1e-3)
            np.testing.assert_allclose(got.peak_cos, t.peak_cos.double().numpy(), rtol=0, atol=1e-5)
            np.testing.assert_allclose(got.peak_mass, t.peak_mass.double().numpy(), rtol=0, atol=1e-5)
            np.testing.assert_allclose(got.second_cos, t.second_cos.double().numpy(), rtol=0, atol=1e-5)
            np.testing.assert_allclose(got.cycle_px, t.cycle_px.double().numpy(), rtol=0, atol=2e-3)
            # Single pair (C, h, w) / (N, 2) gives the same as the batch's first element, every field.
            single = npm.match_keypoints(src[0], trg[0], kps[0], 50, window, beta, coord)
            for a, b in zip(single, got, strict=True):
                np.testing.assert_allclose(a, b[0], rtol=0, atol=1e-9)


def test_cells_and_window_indices_agree_exactly() -> None:
    torch = pytest.importorskip("torch")
    from simplematch import matching as tm

    src, trg, kps = _random_case(7, n=64)
    stride = 50 / 13
    np.testing.assert_array_equal(
        npm.keypoint_cells(kps, stride, (13, 13)),
        tm.keypoint_cells(torch.from_numpy(kps), stride, (13, 13)).numpy(),
    )
    feats = npm.sample_keypoint_features(src, kps, stride)
    np.testing.assert_array_equal(
        feats, tm.sample_keypoint_features(torch.from_numpy(src), torch.from_numpy(kps), stride).numpy()
    )
    sim = npm.cosine_similarity(feats, trg)
    t_sim = tm.cosine_similarity(torch.from_numpy(feats), torch.from_numpy(trg)).numpy()
    np.testing.assert_allclose(sim, t_sim, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(sim.argmax(-1), t_sim.argmax(-1))
    # Non-square map and windows on both sides of each axis length: same cells, positions within 1e-3.
    rng = np.random.default_rng(3)
    sim4 = rng.standard_normal((2, 9, 7, 11)).astype(np.float32)
    for window in (0, 3, 6, 7, 8, 11, 12):
        pos, mass = npm.window_soft_argmax(sim4, window, 0.05)
        t_pos, t_mass = tm.window_soft_argmax(torch.from_numpy(sim4), window, 0.05)
        np.testing.assert_allclose(pos, t_pos.double().numpy(), rtol=0, atol=1e-4)
        np.testing.assert_allclose(mass, t_mass.double().numpy(), rtol=0, atol=1e-5)
        np.testing.assert_array_equal(np.floor(pos + 1e-9) >= 0, True)


def test_window_stays_inside_map_and_peak_is_exact() -> None:
    # A single spike: the soft-argmax is the spike's cell, wherever the clamped window lands.
    for cell in [(0, 0), (7, 7), (0, 7), (3, 4)]:
        sim = np.full((1, 1, 8, 8), -1.0, np.float32)
        sim[0, 0, cell[1], cell[0]] = 1.0
        for window in (0, 1, 3, 4, 5, 8, 9):
            pos, mass = npm.window_soft_argmax(sim, window, 0.02)
            np.testing.assert_allclose(pos[0, 0], cell, atol=1e-6)
            assert mass[0, 0] == pytest.approx(1.0, abs=1e-6)
    assert list(npm.window_starts(np.array([0, 1, 4, 7]), 5, 8)) == [0, 0, 2, 3]
    np.testing.assert_allclose(npm.cells_to_pixels(np.array([1.0, 2.0]), 4.0, "center"), [6.0, 10.0])
    with pytest.raises(ValueError):
        npm.cells_to_pixels(np.zeros(2), 4.0, "middle")


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


# ----------------------------------------------------------------------------------------------------------
# Backends
# ----------------------------------------------------------------------------------------------------------
def test_onnx_backend_encodes_and_validates(models: dict[str, Path], tmp_path: Path) -> None:
    be = load_backend(models["conv"], "cpu")
    assert isinstance(be, OnnxBackend) and be.provider == "CPUExecutionProvider"
    assert be.meta.img_size == S
    out = be.encode(np.random.default_rng(0).random((3, 3, S, S), dtype=np.float32))
    assert out.shape == (3, 8, S // 4, S // 4) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    with pytest.raises(SimpleMatchError, match="model input must be"):
        be.encode(np.zeros((1, 3, 16, 16), np.float32))
    # The public match of the Backend protocol: a features-only file says how to get the matching graph.
    from simplematch.runtime.backends import Backend

    assert isinstance(be, Backend) and not be.matches
    kps = np.zeros((1, 1, 2), np.float32)
    with pytest.raises(SimpleMatchError, match="--with-matching"):
        be.match(
            np.zeros((1, 3, S, S), np.float32), np.zeros((1, 3, S, S), np.float32), kps, np.ones((1, 1), bool)
        )

    no_meta = make_onnx(tmp_path / "nometa.onnx", with_meta=False)
    with pytest.raises(SimpleMatchError, match="no simplematch metadata"):
        OnnxBackend(no_meta)
    wrong = make_onnx(tmp_path / "wrong.onnx", input_size=64, meta=make_meta(img_size=S))
    with pytest.raises(SimpleMatchError, match="metadata says img_size=32"):
        OnnxBackend(wrong)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(models["conv"].read_bytes()[:200])
    with pytest.raises(SimpleMatchError, match="cannot load ONNX model"):
        OnnxBackend(corrupt)
    with pytest.raises(SimpleMatchError, match="model not found"):
        OnnxBackend(tmp_path / "missing.onnx")
    with pytest.raises(SimpleMatchError, match="unknown model format"):
        load_backend(tmp_path / "model.pt")
    with pytest.raises(SimpleMatchError, match="unknown device"):
        OnnxBackend(models["conv"], device="tpu")


def test_cuda_request_without_cuda_provider(
    models: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import onnxruntime as ort

    fallback = OnnxBackend(models["conv"], device="cuda", allow_fallback=True)
    if fallback.provider != "CPUExecutionProvider":
        pytest.skip(f"CUDA is usable here ({fallback.provider})")
    # One line on stderr, no Python warning with its source line.
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "warning: CUDA unavailable to onnxruntime; running on CPU (--allow-fallback)"
    )
    assert fallback.encode(np.zeros((1, 3, S, S), np.float32)).shape == (1, 8, 8, 8)
    # Even if the wheel *claims* CUDA, what the session really runs on decides.
    monkeypatch.setattr(
        ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    with pytest.raises(SimpleMatchError, match="onnxruntime-gpu"):
        OnnxBackend(models["conv"], device="cuda")


def test_tensorrt_backend_errors_without_tensorrt(
    models: dict[str, Path], tmp_path: Path, monkeypatch
) -> None:
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not an engine")
    with pytest.raises(SimpleMatchError, match="GPU only"):
        load_backend(engine, "cpu")
    with pytest.raises(SimpleMatchError, match="sidecar"):
        TensorRTBackend(engine)
    engine_sidecar(engine).write_text(make_meta().to_json())
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    with pytest.raises(
        SimpleMatchError, match=r"TensorRT Python package is not installed.*simplematch\[trt\]"
    ):
        load_backend(engine, "cuda")


@pytest.mark.gpu
def test_tensorrt_engine_matches_onnxruntime(models: dict[str, Path], tmp_path: Path) -> None:
    trt = pytest.importorskip("tensorrt")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(models["conv"].read_bytes())
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("image", (1, 3, S, S), (2, 3, S, S), (4, 3, S, S))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    engine = tmp_path / "model.engine"
    engine.write_bytes(bytes(serialized))
    engine_sidecar(engine).write_text(make_meta().to_json())
    be = load_backend(engine, "cuda")
    images = np.random.default_rng(0).random((6, 3, S, S), dtype=np.float32)  # > max batch: chunked
    np.testing.assert_allclose(be.encode(images), OnnxBackend(models["conv"]).encode(images), atol=1e-3)


# ----------------------------------------------------------------------------------------------------------
# Matcher
# ----------------------------------------------------------------------------------------------------------
def test_encode_once_match_many_equals_match_images(models: dict[str, Path]) -> None:
    rng = np.random.default_rng(1)
    src = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    trg = rng.integers(0, 256, (50, 30, 3), dtype=np.uint8)
    kps = rng.uniform(0, 1, (12, 2)) * [59, 39]
    m = Matcher(models["conv"], batch_size=1)
    once = m.match_images(src, trg, kps)
    assert set(once.timing_ms) == {"preprocess", "encode", "match"}
    fsrc, ftrg = m.encode([m.prepare(src), trg])
    parts = [m.match(fsrc, ftrg, kps[:5]), m.match(fsrc, ftrg, kps[5:])]
    np.testing.assert_allclose(np.concatenate([p.target_kps for p in parts]), once.target_kps, atol=1e-9)
    np.testing.assert_allclose(np.concatenate([p.score for p in parts]), once.score, atol=1e-9)
    assert once.target_kps.shape == (12, 2) and once.peak_mass.shape == (12,)
    assert m.match(fsrc, ftrg, np.zeros((0, 2))).target_kps.shape == (0, 2)
    with pytest.raises(SimpleMatchError, match=r"\(N, 2\)"):
        m.match(fsrc, ftrg, np.array([[1.0, np.nan]]))


@pytest.mark.parametrize("model", ["position", "position_center"])
def test_keypoint_scaling_round_trip(models: dict[str, Path], model: str) -> None:
    """The position model maps every cell to itself: a kp comes back at its own relative position."""
    m = Matcher(models[model])
    src_hw, trg_hw = (48, 64), (90, 120)  # different sizes and aspect ratios
    src = np.zeros((*src_hw, 3), np.uint8)
    trg = np.zeros((*trg_hw, 3), np.uint8)
    rng = np.random.default_rng(0)
    kps = rng.uniform(0, 1, (20, 2)) * [src_hw[1] - 1, src_hw[0] - 1]
    res = m.match_images(src, trg, kps)
    stride = m.meta.stride
    cells = np.floor(to_model_frame(kps, src_hw, S) / stride)
    offset = 0.5 if m.meta.coord == "center" else 0.0
    expected = to_image_frame((cells + offset) * stride, trg_hw, S)
    np.testing.assert_allclose(res.target_kps, expected, atol=1e-3)
    np.testing.assert_allclose(res.target_kps_model, (cells + offset) * stride, atol=1e-3)
    # ... which is the kp itself in relative terms, up to one cell of quantisation.
    rel_err = np.abs(res.target_kps / [trg_hw[1], trg_hw[0]] - kps / [src_hw[1], src_hw[0]])
    assert (rel_err <= stride / S + 1e-9).all()
    np.testing.assert_allclose(res.score, 1.0, atol=1e-5)


def test_matcher_refuses_keypoints_the_cli_refuses(models: dict[str, Path], tmp_path: Path) -> None:
    """The border rule of `smatch infer --kps` (0 <= x <= w-1, 0 <= y <= h-1 in source pixels), same text."""
    from simplematch.keypoints import parse_keypoints_json

    m = Matcher(models["conv"])
    src = np.zeros((30, 40, 3), np.uint8)  # w = 40, h = 30
    fsrc, ftrg = m.encode([src, np.zeros((50, 20, 3), np.uint8)])
    ok = [[0.0, 0.0], [39.0, 29.0]]  # both corners are inside
    assert m.match(fsrc, ftrg, ok).target_kps.shape == (2, 2)
    assert m.match_images(src, src, ok).target_kps.shape == (2, 2)
    for bad in ([[-0.5, 3.0]], [[39.01, 3.0]], [[3.0, 29.5]], [[3.0, -1.0]]):
        with pytest.raises(SimpleMatchError) as cli:
            parse_keypoints_json(bad, image_size=(40, 30))
        for call in (lambda b=bad: m.match(fsrc, ftrg, b), lambda b=bad: m.match_images(src, src, b)):
            with pytest.raises(SimpleMatchError) as api:
                call()
            assert str(api.value) == str(cli.value) and "outside the 40x30 image" in str(api.value)
    # The target image's size does not enter the source rule: 39 is inside a 40-wide source only.
    with pytest.raises(SimpleMatchError, match="outside the 20x50 image"):
        m.match(ftrg, fsrc, [[39.0, 3.0]])


def test_matcher_encode_refuses_one_image_and_folders(models: dict[str, Path], tmp_path: Path) -> None:
    m = Matcher(models["conv"])
    img = write_image(tmp_path / "a.png", 40, 30)
    for single in (str(img), img, np.zeros((30, 40, 3), np.uint8), Image.open(img)):
        with pytest.raises(SimpleMatchError, match=r"list of images.*encode\(\[image\]\)"):
            m.encode(single)
    assert len(m.encode([str(img)])) == 1
    folder = tmp_path / "photos.png"
    folder.mkdir()
    for call in (
        lambda: m.encode([folder]),
        lambda: m.prepare(str(folder)),
        lambda: m.match_images(folder, img, []),
    ):
        with pytest.raises(SimpleMatchError, match="is a folder, not an image file"):
            call()


def test_matcher_warns_once_on_normalised_looking_keypoints(models: dict[str, Path]) -> None:
    import warnings

    m = Matcher(models["conv"])
    big, tiny = np.zeros((30, 40, 3), np.uint8), np.zeros((2, 2, 3), np.uint8)
    fbig, ftiny = m.encode([big, tiny])
    with pytest.warns(UserWarning, match="look normalised") as caught:
        m.match(fbig, fbig, [[0.1, 0.2], [0.9, 1.0], [0.0, 0.5]])
    assert len(caught) == 1
    with pytest.warns(UserWarning, match="look normalised") as caught:
        m.match_images(big, big, [[0.5, 0.5]])
    assert len(caught) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails
        m.match(fbig, fbig, [[0.1, 0.2], [1.5, 0.5]])  # one point beyond 1: pixels
        m.match(ftiny, ftiny, [[0.0, 1.0], [1.0, 0.0]])  # a 2x2 image: [0, 1] is all there is
        m.match(fbig, fbig, np.zeros((0, 2)))


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
    assert set(rep) == {
        "source", "target", "model", "provider", "confidence", "calibration", "min_confidence", "keypoints",
        "timing_ms",
    }  # fmt: skip
    assert rep["calibration"]["calibrated"] is False and rep["confidence"] == "mass_ratio_cycle"
    assert set(rep["timing_ms"]) == {"preprocess", "encode", "match"}
    assert rep["provider"] == "CPUExecutionProvider" and len(rep["keypoints"]) == 3
    assert set(rep["keypoints"][0]) == {
        "source", "target", "score", "confidence", "rejected", "cues", "raw_cues"
    }  # fmt: skip
    assert json.loads(io["out"].read_text()) == json.loads(json.dumps(rep))
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


def test_viz_size_colours_and_labels() -> None:
    src = np.zeros((30, 40, 3), np.uint8)
    trg = np.zeros((90, 45, 3), np.uint8)
    kps = np.array([[1.0, 1.0], [20, 15], [39, 29]])
    pic = render_matches(src, trg, kps, kps, [0.9, 0.5, 0.1])
    assert pic.size == canvas_size((30, 40), (90, 45)) == (120 + 45, 90)
    arr = np.asarray(pic)
    colours = {tuple(c) for c in arr.reshape(-1, 3)}
    assert len(colours) > 10  # distinct line colours + white score labels
    assert (255, 255, 255) in colours


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
    res = json.loads((tmp_path / "r.json").read_text())
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
    from PIL import Image

    for name in ("pck_alpha.png", "per_category.png", "precision_coverage.png", "worst_pairs.png",
                 "reliability.png"):  # fmt: skip
        with Image.open(tmp_path / "plots" / name) as im:
            assert im.format == "PNG" and im.width > 300


# ----------------------------------------------------------------------------------------------------------
# No torch anywhere in the runtime
# ----------------------------------------------------------------------------------------------------------
def test_runtime_imports_no_torch(models: dict[str, Path], tmp_path: Path) -> None:
    src = write_image(tmp_path / "s.png", 40, 30)
    trg = write_image(tmp_path / "t.png", 50, 60, seed=3)
    kps = tmp_path / "k.json"
    kps.write_text("[[3, 4], [20, 10]]")
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        try:
            import torch  # noqa: F401
        except ImportError:
            pass
        else:
            raise SystemExit("torch import did not fail")
        import simplematch.runtime, simplematch.runtime.infer  # noqa: E401
        import simplematch.evaluation, simplematch.evaluation.runtime_predictor  # noqa: E401
        import simplematch.runtime.viz, simplematch.metrics  # noqa: E401
        from simplematch.runtime import Matcher
        m = Matcher({str(models["conv"])!r})
        res = m.match_images({str(src)!r}, {str(trg)!r}, [[3.0, 4.0], [20.0, 10.0]])
        assert res.target_kps.shape == (2, 2)
        from simplematch.runtime.infer import run_infer
        rep = run_infer({str(src)!r}, {str(trg)!r}, {str(kps)!r}, model={str(models["conv"])!r},
                        out={str(tmp_path / "o.json")!r}, viz={str(tmp_path / "o.png")!r})
        assert len(rep["keypoints"]) == 2
        loaded = [k for k, v in sys.modules.items() if v is not None and k.split(".")[0] == "torch"]
        assert not loaded, loaded
        print("ok")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("ok")
    assert (tmp_path / "o.json").is_file() and (tmp_path / "o.png").is_file()
