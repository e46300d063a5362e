"""Shared helpers of the test suite: where the repository and the benchmark subset are, a tiny training
config, and the subprocess environment. Fixtures built from these live in tests/conftest.py.

The tests share 2 CPU cores with other work, so everything is as small as the code allows: a ResNet-10
from scratch at 64 px, 6 synthetic training pairs (3 steps per epoch at batch 2) and 2 validation pairs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from simplematch.config import Config, resolve_config
from simplematch.metadata import ModelMeta

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

# The benchmark subset is read in place, never copied into the repository: ../shared/data beside the
# checkout, or the folder SMATCH_SHARED_DATA names (a worktree, a CI cache). A test that needs a dataset
# skips with the reason when it is absent (a newcomer's clone has no ../shared).
SHARED_DATA = Path(os.environ.get("SMATCH_SHARED_DATA") or ROOT.parent / "shared" / "data").resolve()
WILLOW = SHARED_DATA / "pf-willow"
PASCAL_ANNOTATIONS = SHARED_DATA / "pf-pascal-annotations"
SPAIR = SHARED_DATA / "spair-71k-format"
HAVE_WILLOW = (WILLOW / "PF-dataset").is_dir()


def absent(path: Path) -> str:
    """The one skip reason for a missing piece of the benchmark subset."""
    return f"benchmark data {path} is absent (read from ../shared/data or $SMATCH_SHARED_DATA, never copied)"


NO_WILLOW = absent(WILLOW / "PF-dataset")


def need(path: Path) -> None:
    """Skip the calling test, naming the missing path, when a piece of the benchmark subset is absent."""
    if not path.exists():
        pytest.skip(absent(path))


def need_willow() -> None:
    need(WILLOW / "PF-dataset")


# CSV files Python's csv module cannot parse: a bare carriage return inside an unquoted field, and a field
# over its size limit (131072 characters). Every CSV reader must refuse them in one line.
CSV_THE_CSV_MODULE_REFUSES = (
    b"split,source,target\ntest,1\r0,11\n",
    b"split,source,target\ntest," + b"1" * 200_000 + b",11\n",
)

TINY: dict[str, Any] = dict(
    backbone="resnet10t",
    align_dim=16,
    img_size=64,
    batch_size=2,
    synthetic_pairs=6,
    synthetic_val_pairs=2,
    device="cpu",
    eval_every=2,
    max_steps=4,
)


def tiny_config(**overrides: Any) -> Config:
    return resolve_config("demo_cpu", {**TINY, **overrides})


def write_tiny_config(path: Path, **overrides: Any) -> Path:
    """A config.json for ``smatch train --config`` (the CLI has no flag for the synthetic pair counts)."""
    tiny_config(**overrides).save(path)
    return path


def subprocess_env() -> dict[str, str]:
    """Child-process environment: one thread each (the machine is shared), this checkout importable."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT), COLUMNS="200")
    env.pop("WORLD_SIZE", None)
    return env


def unstamped(doc: dict[str, Any], kind: str) -> dict[str, Any]:
    """Check the version / time / units stamp of a result JSON (simplematch.provenance) and drop it."""
    from datetime import datetime, timedelta, timezone

    import simplematch
    from simplematch.provenance import STAMP_KEYS, UNITS

    assert list(doc)[: len(STAMP_KEYS)] == list(STAMP_KEYS), f"the stamp comes first: {list(doc)[:4]}"
    assert doc["smatch_version"] == simplematch.__version__
    written = datetime.fromisoformat(doc["written_at"].replace("Z", "+00:00"))
    assert written.utcoffset() == timedelta(0), doc["written_at"]
    assert abs(datetime.now(timezone.utc) - written) < timedelta(hours=1), doc["written_at"]
    assert doc["units"] == UNITS[kind]
    return {k: v for k, v in doc.items() if k not in STAMP_KEYS}


S = 32  # model input side of the tiny test models (feature map 8 x 8)


# ----------------------------------------------------------------------------------------------------------
# Tiny ONNX models (the runtime, CLI and validation tests)
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


def write_image(path: Path, w: int, h: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def file_stats(root: Path) -> dict[str, tuple[int, int, int] | str]:
    """Path under ``root`` -> (inode, size, mtime in ns), "dir" for folders: a new, removed, rewritten or
    replaced file shows (even one rewritten with the same bytes). Compare two calls to see that a command
    wrote nothing. Not a digest: hashing a workspace's models before and after each of ~90 CLI cases cost
    about 10 s of the suite."""
    snap: dict[str, tuple[int, int, int] | str] = {}
    for p in root.rglob("*"):
        st = p.lstat()
        snap[str(p.relative_to(root))] = "dir" if p.is_dir() else (st.st_ino, st.st_size, st.st_mtime_ns)
    return snap
