"""``smatch bench``: result schema, skipped runtimes, training-memory ablation, CLI exit codes.

Models are tiny (resnet18 ``demo_cpu`` at 64 px, a few iterations) so the whole file runs in about a minute
on two CPU cores; the numbers are only checked for sanity (positive, finite), never for speed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from simplematch import bench
from simplematch.bench import RESULT_KEYS, TRAIN_MODES, parse_batches, run_bench, split_values
from simplematch.cli.app import main
from simplematch.errors import SimpleMatchError
from tests.helpers import unstamped

TOP_KEYS = {"device", "versions", "model_sha256", "results", "skipped"}
TINY = {"img_size": 64}


def _check_positive(row: dict, keys: tuple[str, ...]) -> None:
    for key in keys:
        assert isinstance(row[key], float) and math.isfinite(row[key]) and row[key] > 0, (key, row)


@pytest.fixture(scope="module")
def tiny_bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    res = run_bench(
        runtimes=["torch", "onnx", "trt"],
        batches=[1, 2],
        warmup=1,
        iters=2,
        preset="demo_cpu",
        overrides=TINY,
        json_path=out,
        threads=1,
    )
    return res, out


@pytest.mark.slow
def test_schema_and_positive_numbers(tiny_bench: tuple[dict, Path]) -> None:
    res, out = tiny_bench
    assert set(res) == TOP_KEYS
    assert res["device"].startswith("cpu")
    for key in ("python", "torch", "onnxruntime", "timm", "numpy", "simplematch", "cpu", "cpu_cores"):
        assert res["versions"][key], key
    assert len(res["model_sha256"]) == 64
    cells = {(r["runtime"], r["batch"]) for r in res["results"]}
    assert cells == {("torch", 1), ("torch", 2), ("onnx", 1), ("onnx", 2)}
    for row in res["results"]:
        assert tuple(row) == RESULT_KEYS  # exactly the documented keys, in order
        _check_positive(row, RESULT_KEYS[2:])
        assert row["latency_ms_p95"] >= row["latency_ms_p50"]
        assert row["match_share"] < 1
    # The JSON file holds exactly what run_bench returned.
    assert unstamped(json.loads(out.read_text()), "bench") == json.loads(json.dumps(res))


def test_trt_skipped_with_reason(tiny_bench: tuple[dict, Path]) -> None:
    res, _ = tiny_bench
    trt = [s for s in res["skipped"] if s["runtime"] == "trt"]
    assert len(trt) == 1 and trt[0]["reason"]
    if bench.tensorrt_missing():
        assert "tensorrt" in trt[0]["reason"].lower()
    assert all(r["runtime"] != "trt" for r in res["results"])


@pytest.mark.slow
def test_train_memory_dense_costs_more_than_sparse_window() -> None:
    # 128 px -> 32 x 32 fine map: the dense (h*w)^2 = 1024^2 correlation, its softmax and their gradients
    # (tens of MiB at batch 4) must show up over the sparse (B, 30, h*w) volume. Frozen backbone: with a
    # full-finetuned ResNet-18 the Adam step (3 x 11M params) sets the peak and hides the matching entirely.
    res = run_bench(
        runtimes=[], batches=[4], train_memory=True, preset="demo_cpu", threads=1,
        overrides={"img_size": 128, "finetune": "frozen"},
    )  # fmt: skip
    rows = {r["mode"]: r for r in res["train_memory"]}
    assert list(rows) == list(TRAIN_MODES)
    for row in rows.values():
        _check_positive(row, ("peak_mem_mib", "delta_mib", "baseline_mib"))
        assert row["batch"] == 4
    assert list(rows) == ["dense", "dense_window", "sparse_window"]  # paper Table 11's rows, in its order
    assert rows["dense"]["delta_mib"] > rows["sparse_window"]["delta_mib"]
    assert rows["dense"]["peak_mem_mib"] > rows["sparse_window"]["peak_mem_mib"]
    assert res["results"] == []


def test_cli_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sub" / "bench.json"
    rc = main(["bench", "--img-size", "64", "--runtime", "torch", "--batch", "1", "--warmup", "0",
               "--iters", "1", "--threads", "1", "--json", str(out)])  # fmt: skip
    assert rc == 0
    data = unstamped(json.loads(out.read_text()), "bench")
    assert set(data) == TOP_KEYS
    assert [(r["runtime"], r["batch"]) for r in data["results"]] == [("torch", 1)]
    assert "images/s" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--runtime", "tflite"], "unknown runtime"),
        (["--checkpoint", "{tmp}/missing"], "checkpoint folder not found"),
        (["--json", "{tmp}/file.txt/out.json"], "file.txt"),
        (["--batch", "0"], "--batch"),
        (["--model", "{tmp}/nope.onnx"], "not found"),
    ],
)
def test_cli_bad_input_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    (tmp_path / "file.txt").write_text("a regular file, so no folder can be made under it")
    rc = main(["bench", *[a.replace("{tmp}", str(tmp_path)) for a in args]])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("error:") and needle in err, err


def test_option_parsing() -> None:
    assert split_values(["torch,onnx", "onnx-fp16 trt"]) == ["torch", "onnx", "onnx-fp16", "trt"]
    assert parse_batches(["1,8"]) == [1, 8]
    assert parse_batches(None) == [1, 8]
    with pytest.raises(SimpleMatchError):
        parse_batches(["x"])
    with pytest.raises(SimpleMatchError, match="unknown runtime"):
        run_bench(runtimes=["bogus"])


def test_table11_modes_predict_the_same_keypoints() -> None:
    # Same correlation rows, only the memory layout differs: dense + window must equal sparse + window, and
    # the dense full-map baseline must equal sparse matching with the whole map (window 0).
    import torch

    from simplematch.bench import table11_predict

    g = torch.Generator().manual_seed(0)
    s_map, t_map = torch.randn(2, 16, 12, 12, generator=g), torch.randn(2, 16, 12, 12, generator=g)
    kps = torch.rand(2, 7, 2, generator=g) * 47
    args = (s_map, t_map, kps, 48)
    win = table11_predict("dense_window", *args, 5, 0.02, "corner")
    torch.testing.assert_close(win, table11_predict("sparse_window", *args, 5, 0.02, "corner"))
    full = table11_predict("dense", *args, 0, 0.02, "corner")
    torch.testing.assert_close(full, table11_predict("sparse_window", *args, 0, 0.02, "corner"))
    assert (win - full).abs().max() > 1e-3  # the window does change the soft-argmax
