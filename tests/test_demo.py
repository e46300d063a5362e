"""``smatch demo`` without running it: its plan (the printed commands are what it runs) and its report."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from simplematch import demo, evaluation
from simplematch.cli.app import app, main
from tests.helpers import HAVE_WILLOW, PYTHON, ROOT, WILLOW, subprocess_env


class _Quiet:
    def print(self, *a: Any, **k: Any) -> None:
        pass

    rule = print


def _plan(tmp_path: Path) -> demo.DemoPlan:
    willow = WILLOW if HAVE_WILLOW else tmp_path / "willow"
    (willow / "PF-dataset").mkdir(parents=True, exist_ok=True)
    return demo.plan_demo(
        tmp_path / "d", willow=willow, max_steps=7, bench_iters=3, force=False, console=_Quiet()
    )


def test_import_does_not_pull_the_cli() -> None:
    code = "import sys, simplematch.demo; print(any(m.startswith('simplematch.cli') for m in sys.modules))"
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, cwd=ROOT, env=subprocess_env())
    assert out.stdout.strip() == "False", out.stderr


def test_every_printed_command_parses_with_the_cli(tmp_path: Path) -> None:
    from typer.main import get_command

    group = get_command(app)
    steps = _plan(tmp_path).steps
    commands = [s.argv for s in steps if s.command]
    assert [a[1] for a in commands] == [
        "train",
        *["eval"] * 2,
        "export",
        "export",
        *["eval"] * 4,
        "infer",
        "bench",
    ]
    for step in steps:
        if not step.command:
            assert step.reproduce == demo.NO_COMMAND
            continue
        assert step.argv[0] == "smatch"
        ctx = group.make_context("smatch", list(step.argv[1:]))
        group.get_command(ctx, step.command).make_context(step.command, list(step.argv[2:]), parent=ctx)
    train = next(s for s in steps if s.command == "train")
    assert (
        train.reproduce
        == f"smatch train --preset demo_cpu --device cpu --max-steps 7 --out {tmp_path / 'd' / 'checkpoint'}"
    )


def test_eval_steps_make_the_call_their_command_makes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[Path, evaluation.EvalRequest, Path]] = []

    def fake(model, request, outputs=evaluation.EvalOutputs(), **kw):
        calls.append((Path(model), request, outputs.json))
        return {"pck": {}, "pck_per_point": {}, "pairs": 0, "points": 0}

    monkeypatch.setattr(evaluation, "run_evaluation", fake)
    for step in _plan(tmp_path).steps:
        if step.command != "eval":
            continue
        step.execute()
        assert main(step.argv[1:]) == 0
        assert calls[-1] == calls[-2]  # the same model, request and --json as the demo's own call
    assert len(calls) == 12


MODELS = ("torch", "model.onnx", "model.fp16.onnx")


def test_report_prose_follows_the_config() -> None:
    pck = {"0.05": 1.0, "0.1": 2.0, "0.15": 3.0}
    ev = {"pck": pck, "pck_per_point": pck}
    nums = {
        "total_seconds": 1.0, "train": {"steps": 3, "seconds": 1.0, "peak_rss_mib": 10},
        "synthetic_before": pck, "baselines": {"relative": pck, "sift": pck},
        **{f"{m}_{d}": ev for m in MODELS for d in ("synthetic", "pfwillow")},
        "export_fp32": {"seconds": 1, "size_mib": 1}, "export_fp16": {"seconds": 1, "size_mib": 1},
        "infer": {"provider": "cpu", "timing_ms": {}, "keypoints": 3}, "bench": {"results": []},
    }  # fmt: skip
    steps = [{"title": "t", "command": "smatch eval x", "seconds": 1.0}]
    text = demo.render_report(
        nums, steps, [("synthetic", None), ("pfwillow", None)], {"backbone": "convnext_x", "img_size": 96}
    )
    assert "the demo model is a convnext_x trained" in text and "ResNet" not in text
    assert "## Accuracy (PCK@0.05 / 0.1 / 0.15," in text
    assert "   smatch eval x\n" in text


def test_no_default_willow_outside_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ../shared/data/pf-willow beside the working folder is not picked up: only --willow names one."""
    (tmp_path / "shared" / "data" / "pf-willow" / "PF-dataset").mkdir(parents=True)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    assert demo._willow_root(None) is None
    given = tmp_path / "shared" / "data" / "pf-willow"
    assert demo._willow_root(given) == given
