"""The ``simplematch.bench`` layout: what the runtime-only install and the worker processes rely on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from simplematch.bench.executors import EXECUTORS, for_model_file, for_runtime
from simplematch.bench.options import RUNTIMES
from tests.helpers import ROOT


def test_runtime_path_imports_no_torch() -> None:
    # A fresh interpreter: the parent of `bench --model m.onnx` and an onnxruntime worker load these only.
    code = (
        "import sys; import simplematch.bench, simplematch.bench.worker, simplematch.bench.executors; "
        "bad = [m for m in ('torch', 'onnx', 'tensorrt') if m in sys.modules]; assert not bad, bad"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_worker_entry_point_without_a_spec_is_usage_exit_2() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "simplematch.bench"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 2 and "--worker SPEC.json" in proc.stderr


def test_every_runtime_and_model_file_has_a_registered_executor() -> None:
    for runtime in RUNTIMES:
        assert EXECUTORS[for_runtime(runtime).name] is for_runtime(runtime)
    assert for_model_file(Path("m.onnx")).name == "onnxruntime"
    assert for_model_file(Path("m.ENGINE")).name == for_model_file(Path("m.plan")).name == "tensorrt"
    assert for_runtime("torch-amp").available("cpu") and for_runtime("torch-amp").available("cuda") is None
