"""Fault-tolerant training: atomic checkpoints, bitwise resume, Ctrl-C/SIGTERM/SIGKILL, NaN loss, outputs."""

from __future__ import annotations

import dataclasses
import json
import pickle
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from simplematch.checkpoint import load_checkpoint
from simplematch.cli.app import main
from simplematch.data import load_records
from simplematch.errors import SimpleMatchError
from simplematch.evaluation.torch_predictor import evaluate_model
from simplematch.train import load_resume_state, plan_from_flags, train
from tests.helpers import ROOT, tiny_config, unstamped, write_tiny_config
from tests.prewarmed import Child, Prewarmed


def _last(out: Path) -> tuple[Path, dict]:
    """The checkpoint last.json points to, fully loaded (weights + resumable state)."""
    ckpt, state = load_resume_state(out)
    load_checkpoint(ckpt)  # strict: every tensor present and shaped right
    return ckpt, state


def _metric_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# --- resume determinism -----------------------------------------------------------------------------------
def test_resume_gives_bitwise_identical_weights(tmp_path: Path) -> None:
    # 4 steps at 3 steps per epoch: the resume point (step 2) is mid-epoch and the run then crosses an epoch.
    cfg = tiny_config(max_steps=4)
    straight = train(cfg, tmp_path / "a", show_progress=False)
    half = train(dataclasses.replace(cfg, max_steps=2), tmp_path / "b", show_progress=False)
    assert half.step == 2 and json.loads((tmp_path / "b" / "last.json").read_text())["step"] == 2
    resumed = train(cfg, tmp_path / "b", resume=True, show_progress=False)
    assert straight.step == resumed.step == 4

    wa = load_file(tmp_path / "a" / "ckpt-00000004" / "model.safetensors")
    wb = load_file(tmp_path / "b" / "ckpt-00000004" / "model.safetensors")
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "resumed weights differ from the uninterrupted run"
    # The RNG streams (dropout, augmentation) must also be where the uninterrupted run left them.
    _, sa = load_resume_state(tmp_path / "a")
    _, sb = load_resume_state(tmp_path / "b")
    assert torch.equal(sa["rng"][0]["torch"], sb["rng"][0]["torch"])
    assert sa["rng"][0]["python"] == sb["rng"][0]["python"]
    assert sa["scheduler"] == sb["scheduler"]
    # Adam moments too: the next step would otherwise differ.
    for (ka, va), (kb, vb) in zip(
        sa["optimizer"]["state"].items(), sb["optimizer"]["state"].items(), strict=True
    ):
        assert (
            ka == kb
            and torch.equal(va["exp_avg"], vb["exp_avg"])
            and torch.equal(va["exp_avg_sq"], vb["exp_avg_sq"])
        )
    # The resumed log holds each step once, exactly as the straight run's.
    assert [r["step"] for r in _metric_rows(tmp_path / "a")] == [
        r["step"] for r in _metric_rows(tmp_path / "b")
    ]
    assert straight.best == resumed.best
    # Only the newest resumable checkpoint is kept.
    assert sorted(p.name for p in (tmp_path / "b").glob("ckpt-*")) == ["ckpt-00000004"]


# --- CLI run, outputs, resume through the CLI --------------------------------------------------------------
def test_cli_train_outputs_best_checkpoint_and_resume(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg_path = write_tiny_config(tmp_path / "tiny.json", max_steps=4, eval_every=1)
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg_path), "--out", str(out)]) == 0
    assert "done: 4 steps" in capsys.readouterr().out

    for name in ("config.json", "model.safetensors", "best.json", "metrics.jsonl", "last.json"):
        assert (out / name).is_file(), name
    rows = _metric_rows(out)
    vals = [r for r in rows if "val_pck" in r]
    assert [r["step"] for r in vals] == [1, 2, 3, 4]
    assert all("loss" in r and "lr" in r for r in rows if "val_pck" not in r)

    # best.json is the validation with the highest PCK@0.1 (first one on ties) ...
    best = unstamped(json.loads((out / "best.json").read_text()), "train_best")
    top = max(vals, key=lambda r: (r["val_pck"]["0.1"], -r["step"]))
    assert best["step"] == top["step"] and best["pck"] == top["val_pck"]
    # ... and model.safetensors holds exactly those weights: evaluating it reproduces the logged PCK.
    model, cfg = load_checkpoint(out)
    recs = load_records("synthetic", None, "val", seed=cfg.seed, n_pairs=cfg.synthetic_val_pairs)
    res = evaluate_model(model, cfg, recs, dataset="synthetic", split="val", batch_size=cfg.batch_size)
    assert res["pck"] == best["pck"]

    # --resume with a larger --max-steps continues the same run (the saved config, a new total).
    assert main(["train", "--resume", str(out), "--max-steps", "5"]) == 0
    assert unstamped(json.loads((out / "last.json").read_text()), "train_last")["step"] == 5
    assert [r["step"] for r in _metric_rows(out) if "val_pck" in r] == [1, 2, 3, 4, 5]
    assert json.loads((out / "config.json").read_text())["max_steps"] == 5
    # Changing the run's settings on resume is refused (they would silently mix two configs).
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--lr", "0.1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--lr cannot be changed" in err


def test_resume_refusal_names_every_changed_flag_in_cli_order(tmp_path: Path) -> None:
    """plan_from_flags (what `smatch train` calls) turns given options into the --resume refusal; defaults
    (amp=False, force=False) and --max-steps / --device count as not given."""
    from simplematch.cli.app import Dataset

    none = dict(dataset=None, data_root=None, backbone=None, weights=None, img_size=None, batch_size=None,
                epochs=None, lr=None, seed=None, ap10k_split=None)  # fmt: skip
    common = dict(out=None, preset=None, config=None, window=None, resume=tmp_path)
    given = {**none, "lr": 0.0, "data_root": tmp_path, "dataset": Dataset("synthetic")}
    with pytest.raises(SimpleMatchError) as info:
        plan_from_flags(**common, **given, max_steps=9, device="cpu", force=True, amp=True)
    assert info.value.problem == (
        "--resume continues a run with its saved config;"
        " --dataset, --data-root, --lr, --force, --amp cannot be changed"
    )
    with pytest.raises(SimpleMatchError, match="run folder not found"):  # nothing given: resume proceeds
        plan_from_flags(**{**common, "resume": tmp_path / "nope"}, **none, max_steps=9, device="cpu",
                        force=False, amp=False)  # fmt: skip


def test_library_train_validates_before_writing(tmp_path: Path) -> None:
    out = tmp_path / "never"
    with pytest.raises(SimpleMatchError, match="data root"):
        train(tiny_config(dataset="spair"), out, show_progress=False)
    assert not out.exists(), "a run that failed on its inputs must leave no output folder"


# --- NaN / inf loss ----------------------------------------------------------------------------------------
def test_nan_loss_stops_with_one_line_and_keeps_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    train(tiny_config(max_steps=2), out, show_progress=False)
    before = (out / "ckpt-00000002" / "model.safetensors").read_bytes()

    def nan_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return pred.sum() * float("nan")

    monkeypatch.setattr("simplematch.train.keypoint_loss", nan_loss)
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--max-steps", "4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: loss became nan at step 3; the last good checkpoint")
    assert "ckpt-00000002 is intact" in err and "Fix: lower --lr" in err
    ckpt, state = _last(out)
    assert ckpt.name == "ckpt-00000002" and state["step"] == 2
    assert (ckpt / "model.safetensors").read_bytes() == before


def test_nan_loss_on_a_fresh_run_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("simplematch.train.keypoint_loss", lambda p, t, v: p.sum() * float("inf"))
    with pytest.raises(SimpleMatchError, match="loss became inf at step 1; no checkpoint was saved yet"):
        train(tiny_config(), tmp_path / "run", show_progress=False)
    assert not (tmp_path / "run").exists()


# --- safe loading of the resumable state -------------------------------------------------------------------
class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/simplematch-pwned-by-state-pt"),))


def test_malicious_state_pt_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    train(tiny_config(max_steps=2), out, show_progress=False)
    marker = Path("/tmp/simplematch-pwned-by-state-pt")
    marker.unlink(missing_ok=True)
    (out / "ckpt-00000002" / "state.pt").write_bytes(pickle.dumps({"step": _Payload()}))
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--max-steps", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refused to load" in err and "state.pt" in err
    assert not marker.exists(), "torch.load ran code from the pickle"


# --- signals -----------------------------------------------------------------------------------------------
def _start(prewarmed: Prewarmed, cmd: list[str]) -> Child:
    # Forked from the prewarmed server (tests/prewarmed.py): the command's process without ~3 s of imports.
    return prewarmed.start(["-m", "simplematch.cli", *cmd], ROOT)


def _wait_for(pred, proc: Child, timeout: float = 120.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return
        if proc.poll() is not None:
            raise AssertionError(f"training exited early ({proc.returncode}): {proc.communicate()}")
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("timed out waiting for training progress")


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_resumable_checkpoint(prewarmed: Prewarmed, tmp_path: Path, signum: int) -> None:
    cfg_path = write_tiny_config(tmp_path / "tiny.json", max_steps=1000, eval_every=1000)
    out = tmp_path / "run"
    proc = _start(prewarmed, ["train", "--config", str(cfg_path), "--out", str(out)])
    _wait_for(lambda: (out / "metrics.jsonl").is_file(), proc)  # step 1 is logged: training is under way
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, (stdout, stderr)
    assert "Traceback" not in stderr
    ckpt, state = _last(out)
    step = state["step"]
    assert 1 <= step < 1000 and ckpt.name == f"ckpt-{step:08d}"
    name = signal.Signals(signum).name
    assert stderr.strip() == f"interrupted by {name} at step {step}; resume with: smatch train --resume {out}"
    # The run goes on from there and finishes normally.
    assert main(["train", "--resume", str(out), "--max-steps", str(step + 1)]) == 0
    assert _last(out)[1]["step"] == step + 1


def test_sigkill_leaves_last_complete_checkpoint(prewarmed: Prewarmed, tmp_path: Path) -> None:
    # A checkpoint every step, killed without warning as soon as one exists: whatever was being written at
    # that moment, last.json must point to a complete, loadable checkpoint.
    cfg_path = write_tiny_config(tmp_path / "tiny.json", max_steps=1000, eval_every=1)
    out = tmp_path / "run"
    proc = _start(prewarmed, ["train", "--config", str(cfg_path), "--out", str(out)])
    _wait_for(lambda: (out / "last.json").is_file(), proc)
    time.sleep(0.5)
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    ckpt, state = _last(out)
    step = state["step"]
    assert step >= 1
    res = train(
        dataclasses.replace(tiny_config(max_steps=step + 1, eval_every=1)),
        out,
        resume=True,
        show_progress=False,
    )
    assert res.status == "finished" and res.step == step + 1
