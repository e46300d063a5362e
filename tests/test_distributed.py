"""Multi-process runs with torchrun on CPU (gloo): DDP training on a COCO keypoints file, and sharded
evaluation of that run with exact totals."""

from __future__ import annotations

import contextlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from simplematch.cli.app import main
from tests.helpers import PYTHON, subprocess_env, tiny_config, unstamped

TORCHRUN = Path(PYTHON).with_name("torchrun")

pytestmark = pytest.mark.skipif(
    not (TORCHRUN.is_file() and torch.distributed.is_available()),
    reason="torchrun / torch.distributed missing",
)


def _torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "simplematch.cli", *args]
    return subprocess.run(cmd, cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def coco_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """A two-rank torchrun training on a user's COCO keypoints file, once for this file's tests: (its
    folder, the launcher's process). 20 64x64 images, two steps, validation at step 2."""
    from tests.data.test_coco import crowd_coco, write

    root = tmp_path_factory.mktemp("torchrun")
    data = crowd_coco(root, n_images=20, seed=3)
    for img in data["images"]:  # 64x64 photos-to-be, so the tiny model's crops have room
        img["width"] = img["height"] = 64
        rgb = np.random.default_rng(img["id"]).integers(0, 256, (64, 64, 3), np.uint8)
        Image.fromarray(rgb).save(root / img["file_name"])
    write(root, data)
    over = dict(coco_min_common=1, coco_split_fractions=[0.5, 0.25, 0.25])
    tiny_config(dataset="coco", max_steps=2, eval_every=2, **over).save(root / "tiny.json")
    return root, _torchrun(
        ["train", "--config", "tiny.json", "--data-root", "ann.json", "--out", "run"], root
    )


@pytest.mark.slow
def test_torchrun_two_processes_train(coco_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    root, proc = coco_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    # Rank 0 alone logs, prints and checkpoints.
    assert proc.stdout.count("done: 2 steps") == 1
    assert (root / "run" / "data.json").is_file()  # the COCO split the run trained on, for its evaluation
    rows = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]  # step-1 loss row, step-2 validation row: once each
    assert json.loads((root / "run" / "last.json").read_text())["step"] == 2
    state = torch.load(root / "run" / "ckpt-00000002" / "state.pt", weights_only=True)
    assert len(state["rng"]) == 2  # each rank's RNG state is saved for resume


@pytest.mark.slow
def test_distributed_eval_equals_single_process(
    coco_run: tuple[Path, subprocess.CompletedProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, train = coco_run
    assert train.returncode == 0, train.stderr[-3000:]
    # The run's held-out COCO split, 5 pairs: ranks get 3 and 2, so uneven shards are covered. Batch size 1
    # makes every pair's forward pass identical in both runs (CPU kernels may round differently for other
    # batch shapes), so any difference left would come from the sharding and gathering under test.
    args = ["eval", "run", "--dataset", "coco", "--data-root", "ann.json", "--limit", "5",
            "--batch-size", "1", "--device", "cpu"]  # fmt: skip
    monkeypatch.chdir(root)
    assert main([*args, "--json", "single.json"]) == 0
    proc = _torchrun([*args, "--json", "dist.json"], root)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    single = unstamped(json.loads((root / "single.json").read_text()), "eval")
    dist = unstamped(json.loads((root / "dist.json").read_text()), "eval")
    assert single["pairs"] == 5
    # Counts are exact integers, so every PCK table is identical (per category, per keypoint, the COCO
    # split). The confidence cues are float32 sums whose rounding depends on each rank's batch
    # composition: equal to 1e-6, not bit for bit.
    conf_d, conf_s = dist.pop("confidence"), single.pop("confidence")
    assert dist == single
    assert conf_d.keys() == conf_s.keys() and conf_d["default"] == conf_s["default"]
    for cue, value in conf_s["auroc"].items():
        assert conf_d["auroc"][cue] == pytest.approx(value, abs=1e-6), cue
    assert proc.stdout.count("all (per-image mean)") == 1  # rank 0 alone prints the table


@pytest.mark.parametrize("fails", [False, True])
def test_the_process_group_is_left_on_the_way_out(monkeypatch: pytest.MonkeyPatch, fails: bool) -> None:
    # A rank that exits while still in the group can abort in gloo's teardown after its work is done, so
    # `joined` destroys the group whether its block ends or raises. A one-rank group in this process.
    from simplematch import distributed as dist_utils

    def init(device: torch.device) -> bool:
        store = torch.distributed.HashStore()
        torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
        return True

    monkeypatch.setattr(dist_utils, "init_from_env", init)
    with pytest.raises(RuntimeError) if fails else contextlib.nullcontext():
        with dist_utils.joined(torch.device("cpu")) as device:
            assert device == torch.device("cpu")
            assert dist_utils.is_distributed()
            if fails:
                raise RuntimeError("a failing rank")
    assert not dist_utils.is_distributed()


def test_a_callers_own_process_group_is_left_in_place() -> None:
    from simplematch import distributed as dist_utils

    torch.distributed.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0, world_size=1)
    try:
        with dist_utils.joined(torch.device("cpu")):
            assert dist_utils.is_distributed()
        assert dist_utils.is_distributed()  # not ours to destroy
    finally:
        torch.distributed.destroy_process_group()
