"""``smatch export --with-matching`` (the one-graph model) and the export options.

The one graph is pinned to independent references: the runtime's numpy matching applied to the graph's own
features (<= 1e-3 px), the PyTorch evaluation's PCK on PF-WILLOW pairs (within 0.1), and the TensorRT 10
operator table (every node). Tiny random-init models keep each export to seconds.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from simplematch.checkpoint import load_checkpoint, save_checkpoint
from simplematch.cli.app import main
from simplematch.config import Config
from simplematch.export import default_output
from simplematch.export.one_graph import make_trt_friendly, trt10_unsupported
from simplematch.export.parity import grid_keypoints, match_graph_eval
from simplematch.metadata import ModelMeta
from simplematch.model import SimpleMatch
from simplematch.runtime.backends import OnnxBackend
from simplematch.runtime.matcher import Matcher
from simplematch.runtime.matching import match_keypoints as np_match
from tests.helpers import NO_WILLOW, ROOT, WILLOW

SIZE = 64
PF_WILLOW = WILLOW


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = Config(backbone="resnet18", img_size=SIZE, align_dim=32, finetune="full", dataset="pfwillow")
    root = tmp_path_factory.mktemp("og") / "checkpoint"
    save_checkpoint(SimpleMatch(cfg), cfg, root)
    return root


@pytest.fixture(scope="module")
def raw_match_graphs() -> list[onnx.ModelProto]:
    """What the exporter gave before the TensorRT rewrite, for the one-graph export of ``graphs``."""
    return []


@pytest.fixture(scope="module")
def graphs(ckpt, raw_match_graphs) -> dict[str, Path]:
    """The one-graph model through the CLI (default --out) and the features-only model of the same weights."""
    import simplematch.export.one_graph as og

    rewrite = og.make_trt_friendly

    def keep_raw(proto: onnx.ModelProto) -> int:
        raw_match_graphs.append(copy.deepcopy(proto))
        return rewrite(proto)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(og, "make_trt_friendly", keep_raw)
        assert main(["export", str(ckpt), "--with-matching"]) == 0
    assert main(["export", str(ckpt)]) == 0
    return {"match": ckpt / "model.match.onnx", "features": ckpt / "model.onnx"}


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, SIZE, SIZE), dtype=np.float32)


@pytest.mark.slow
def test_one_graph_io_dynamic_n_and_metadata(graphs):
    model = onnx.load(str(graphs["match"]))
    ins = {
        i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input
    }
    assert ins["src_image"] == ins["tgt_image"] and ins["src_image"][1:] == [3, SIZE, SIZE]
    assert isinstance(ins["src_kps"][1], str) and ins["src_kps"][2] == 2  # N dynamic
    assert model.graph.input[3].type.tensor_type.elem_type == onnx.TensorProto.BOOL
    props = {p.key: p.value for p in model.metadata_props}
    meta = ModelMeta.from_props(props)
    assert meta.graph == "matching" and meta.parity["graph_vs_numpy_within_1e-3px"] == 1.0
    assert meta.parity["invalid_keypoints_masked"] is True


def test_one_graph_ops_are_in_the_tensorrt10_table(graphs):
    """Every node of the exported file against onnx-tensorrt's 10.x operator table."""
    model = onnx.load(str(graphs["match"]))
    assert trt10_unsupported(model) == []
    assert make_trt_friendly(model) == 0  # nothing left to rewrite


def test_raw_export_needs_the_trt_rewrite(graphs, raw_match_graphs):
    """Without the rewrite the export holds int Clip / bool Equal, which TensorRT 10 does not parse."""
    [raw] = raw_match_graphs  # the --with-matching export of ``graphs``, before its rewrite
    bad = trt10_unsupported(raw)
    assert "Clip(INT64)" in bad and "Equal(BOOL)" in bad
    assert make_trt_friendly(raw) >= 2 and trt10_unsupported(raw) == []
    # The exported file is the rewritten graph.
    assert trt10_unsupported(onnx.load(str(graphs["match"]))) == []


@pytest.mark.parametrize("n_kps", [1, 7, 30])
def test_one_graph_matches_numpy_matching_of_its_features(graphs, ckpt, n_kps):
    """tgt_kps / cues vs the numpy twin on the graph's own features, for several N in one session."""
    _, cfg = load_checkpoint(ckpt)
    backend = OnnxBackend(graphs["match"])
    src, tgt = _images(3, 1), _images(3, 2)
    kps = np.repeat(grid_keypoints(SIZE, n_kps)[None], 3, axis=0)
    kps[1] = kps[1][::-1]  # different keypoint order per pair
    valid = np.ones((3, n_kps), bool)
    pred, peak, mass, fsrc, ftgt = backend.match(src, tgt, kps, valid)
    ref, ref_peak, ref_mass, *_ = np_match(fsrc, ftgt, kps, SIZE, cfg.fine_window, cfg.beta, cfg.coord)
    assert np.abs(pred - ref).max() <= 1e-3
    assert np.abs(peak - ref_peak).max() <= 1e-5 and np.abs(mass - ref_mass).max() <= 1e-5


def test_invalid_keypoints_are_nan_with_zero_cues(graphs):
    backend = OnnxBackend(graphs["match"])
    kps = np.repeat(grid_keypoints(SIZE, 4)[None], 2, axis=0)
    valid = np.array([[True, False, True, False], [False, False, False, True]])
    pred, peak, mass, *_ = backend.match(_images(2, 3), _images(2, 4), kps, valid)
    assert np.isnan(pred[~valid]).all() and np.isfinite(pred[valid]).all()
    assert (peak[~valid] == 0).all() and (mass[~valid] == 0).all() and (mass[valid] > 0).all()


@pytest.mark.parametrize("n", [1, 3, 4])
def test_encode_from_the_one_graph_equals_the_features_model(graphs, n):
    x = _images(n, 5)
    got = OnnxBackend(graphs["match"]).encode(x)
    ref = OnnxBackend(graphs["features"]).encode(x)
    assert got.shape == ref.shape and np.abs(got - ref).max() <= 1e-5


def test_matcher_uses_the_one_graph_and_agrees_with_the_features_model(graphs, monkeypatch):
    rng = np.random.default_rng(0)
    a = (rng.random((50, 70, 3)) * 255).astype(np.uint8)
    b = (rng.random((60, 40, 3)) * 255).astype(np.uint8)
    kps = [[10.0, 20.0], [60.0, 5.0], [35.0, 44.0]]
    one = Matcher(graphs["match"])
    # The targets are the graph's own output (the numpy twin only adds the cues the graph lacks: ratio,
    # cycle, from the graph's `features` output), so the recorded graph run must be what is returned.
    runs = []
    real_run = one.backend.match

    def spy(*args):
        out = real_run(*args)
        runs.append(out)
        return out

    monkeypatch.setattr(one.backend, "match", spy)
    got = one.match_images(a, b, kps)
    monkeypatch.undo()
    assert len(runs) == 1
    np.testing.assert_array_equal(got.target_kps_model, runs[0][0][0].astype(np.float64))
    assert set(got.cues) >= {"peak_cos", "ratio", "cycle"} and got.confidence is not None
    ref = Matcher(graphs["features"]).match_images(a, b, kps)
    assert np.abs(got.target_kps - ref.target_kps).max() <= 1e-3
    assert np.abs(got.score - ref.score).max() <= 1e-5 and np.abs(got.peak_mass - ref.peak_mass).max() <= 1e-5


@pytest.mark.skipif(not PF_WILLOW.is_dir(), reason=NO_WILLOW)
def test_one_graph_pck_equals_pytorch_evaluation_on_pf_willow(graphs, ckpt):
    from simplematch.data import load_records
    from simplematch.evaluation.torch_predictor import evaluate_model

    records = load_records("pfwillow", PF_WILLOW, "test")[::30][:12]
    model, cfg = load_checkpoint(ckpt)
    ref = evaluate_model(model, cfg, records, dataset="pfwillow", split="test", alphas=(0.05, 0.1, 0.15))
    got = match_graph_eval(graphs["match"], records, threshold="kps", batch_size=5)
    assert got["points"] == ref["points"] and got["pairs"] == ref["pairs"]
    for alpha in ("0.05", "0.1", "0.15"):
        assert abs(got["pck"][alpha] - ref["pck"][alpha]) <= 0.1, (alpha, got["pck"], ref["pck"])
    assert got["graph_vs_numpy_max_px"] <= 1e-3


# ---------------------------------------------------------------------------------------------------------
# default path, no overwrite without --force, opset, suffix
# ---------------------------------------------------------------------------------------------------------


def _one_line_error(capsys, rc: int, *needles: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_default_output_is_inside_the_checkpoint(tmp_path):
    ck = tmp_path / "run" / "checkpoint"
    assert default_output(ck, "onnx", False) == ck.absolute() / "model.onnx"
    assert default_output(ck, "trt", True) == ck.absolute() / "model.fp16.engine"
    assert default_output(ck, "onnx", False, with_matching=True) == ck.absolute() / "model.match.onnx"


def test_existing_output_is_refused_without_force(graphs, ckpt, capsys):
    before = graphs["features"].read_bytes()
    rc = main(["export", str(ckpt), "--no-check"])
    _one_line_error(capsys, rc, "already exists", "--force")
    assert graphs["features"].read_bytes() == before


def test_force_replaces(ckpt, tmp_path):
    out = tmp_path / "m.onnx"
    out.write_text("old")
    assert main(["export", str(ckpt), "--no-check", "--out", str(out), "--force", "--batch", "1"]) == 0
    assert onnx.load(str(out)).graph.input[0].name == "image"


def test_missing_output_folder_is_made_by_the_writer(ckpt, tmp_path):
    out = tmp_path / "new" / "sub" / "m.onnx"  # checked (nothing created), then made when the file is written
    assert main(["export", str(ckpt), "--no-check", "--out", str(out), "--batch", "1"]) == 0
    assert onnx.load(str(out)).graph.input[0].name == "image"


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--opset", "0"], ["opset 0 is too old"]),
        (["--out", "m.engine"], ["--out m.engine must end in .onnx", "pass e.g. m.onnx"]),
        (["--out", "model"], ["--out model must end in .onnx"]),
        (["--with-matching", "--fp16"], ["--with-matching exports an fp32 ONNX graph only"]),
    ],
)
def test_bad_export_options_are_refused_up_front(ckpt, tmp_path, capsys, monkeypatch, args, needles):
    monkeypatch.chdir(tmp_path)
    rc = main(["export", str(ckpt), "--out", str(tmp_path / "x.onnx"), *args])
    _one_line_error(capsys, rc, *needles)
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "m.engine").exists()


@pytest.fixture(scope="module")
def batch8(ckpt, graphs, tmp_path_factory) -> dict[str, Path]:
    """A --batch 8 export, and the dynamic-batch export of the same weights (``graphs``) to compare with."""
    out = {"b8": tmp_path_factory.mktemp("b8") / "m.b8.onnx", "dyn": graphs["features"]}
    assert main(["export", str(ckpt), "--batch", "8", "--out", str(out["b8"])]) == 0
    return out


@pytest.mark.slow
@pytest.mark.parametrize("n", [1, 2, 9])
def test_batch8_model_encodes_any_count(batch8, n):
    """A --batch 8 model: chunks of 8, last one padded; same features as the dynamic-batch model."""
    b8 = OnnxBackend(batch8["b8"])
    assert b8.max_batch == 8
    x = _images(n, 7)
    got, ref = b8.encode(x), OnnxBackend(batch8["dyn"]).encode(x)
    assert got.shape == ref.shape == (n, 32, SIZE // 4, SIZE // 4) and np.abs(got - ref).max() <= 1e-5


def test_batch8_model_in_infer_and_eval(batch8, tmp_path):
    import json

    from simplematch.data import load_records
    from simplematch.evaluation.runtime_predictor import evaluate_runtime

    examples = ROOT / "examples"
    res = tmp_path / "r.json"
    pngs = [str(examples / "src.png"), str(examples / "tgt.png")]
    rc = main(
        ["infer", *pngs, "--kps", str(examples / "kps.json"), "--model", str(batch8["b8"]), "--out", str(res)]
    )
    assert rc == 0 and len(json.loads(res.read_text())["keypoints"]) > 0
    records = load_records("synthetic", None, "test", n_pairs=5)
    got = evaluate_runtime(batch8["b8"], records, dataset="synthetic", batch_size=3)
    ref = evaluate_runtime(batch8["dyn"], records, dataset="synthetic", batch_size=3)
    assert got["pck"] == ref["pck"] and got["points"] == ref["points"] > 0


def test_bench_refuses_another_batch_for_a_fixed_batch_model(batch8, capsys):
    rc = main(["bench", "--model", str(batch8["b8"]), "--runtime", "none", "--batch", "1", "--iters", "1"])
    _one_line_error(capsys, rc, "fixed batch of 8", "--batch 8")


@pytest.mark.gpu
def test_one_graph_torch_cuda_equals_onnx_cpu(graphs, ckpt):
    """The traced module on CUDA (what a GPU deployment computes) vs the exported graph on onnxruntime CPU."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from simplematch.export.one_graph import MatchGraph

    model, cfg = load_checkpoint(ckpt)
    module = MatchGraph(model.eval(), SIZE, cfg.fine_window, cfg.beta, cfg.coord).cuda()
    src, tgt = _images(2, 8), _images(2, 9)
    kps = np.repeat(grid_keypoints(SIZE, 12)[None], 2, axis=0)
    valid = np.ones((2, 12), bool)
    with torch.no_grad():
        got = module(*(torch.from_numpy(a).cuda() for a in (src, tgt, kps, valid)))[0].cpu().numpy()
    ref, *_ = OnnxBackend(graphs["match"]).match(src, tgt, kps, valid)
    assert np.abs(got - ref).max() <= 0.05  # TF32 / cuDNN differences; a wrong graph is pixels off


def test_static_batch_one_graph_pads_the_last_chunk(ckpt, graphs, tmp_path):
    out = tmp_path / "m.match.b2.onnx"
    assert main(["export", str(ckpt), "--with-matching", "--batch", "2", "--out", str(out)]) == 0
    kps = np.repeat(grid_keypoints(SIZE, 5)[None], 3, axis=0)
    valid = np.ones((3, 5), bool)
    args = (_images(3, 11), _images(3, 12), kps, valid)
    got = OnnxBackend(out).match(*args)
    ref = OnnxBackend(graphs["match"]).match(*args)
    assert OnnxBackend(out).max_batch == 2 and got[0].shape == (3, 5, 2)
    assert all(np.abs(g - r).max() <= 1e-4 for g, r in zip(got, ref, strict=True))
