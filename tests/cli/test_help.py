"""What `smatch COMMAND --help` tells a user: a description and a default for every option, values named
by what they are (never by their Python type), the choices of every choice, and `infer`'s short table."""

from __future__ import annotations

import json
import re
from pathlib import Path

import click
import pytest
import typer

from simplematch.cli.app import INFER_TABLE_ROWS, app, main
from simplematch.config import DEFAULT_PRESET, PRESETS, SPLITS
from tests.helpers import make_onnx, write_image

# What typer prints when an option has no metavar: <int>, <float>, <str>, <path>, <list[float]>, <int range>.
TYPE_NAME = re.compile(r"<(int|float|str|bool|path|file|list\[[^>]*\]|\w+ range)>")
# Options whose absence is the default and needs no words: output files / folders and inputs a user names.
NO_DEFAULT_NEEDED = {"out", "data_root", "resume", "config", "json_out", "predictions", "plots", "viz", "kps",
                     "pairs", "truth", "calib_data", "min_confidence", "backbone_weights", "checkpoint",
                     "model", "img_size", "backbone", "init"}  # fmt: skip


def _commands() -> dict[str, click.Command]:
    root = typer.main.get_command(app)
    ctx = click.Context(root, info_name="smatch")
    return {name: root.get_command(ctx, name) for name in root.list_commands(ctx)}


def _help(name: str) -> str:
    cmd = _commands()[name]
    return cmd.get_help(click.Context(cmd, info_name=name, terminal_width=200, max_content_width=200))


@pytest.mark.parametrize("name", sorted(_commands()))
def test_every_option_is_described_and_named_by_meaning(name: str) -> None:
    cmd = _commands()[name]
    ctx = click.Context(cmd, info_name=name)
    checked = 0
    for param in cmd.params:
        if param.param_type_name != "option" or param.name == "help":
            continue
        assert param.help, f"smatch {name} {param.opts[0]} has no help text"
        checked += 1
        if not param.is_flag:
            assert not TYPE_NAME.search(param.display_type_rich(ctx)), (name, param.opts[0])
    assert checked == sum(p.param_type_name == "option" for p in cmd.params)
    assert not TYPE_NAME.search(re.sub(r"^\s+[A-Z]+ <path>", "", _help(name), flags=re.M)), _help(name)


def test_every_train_option_says_its_default() -> None:
    checked = 0
    for param in _commands()["train"].params:
        if param.param_type_name != "option" or param.is_flag or param.name in NO_DEFAULT_NEEDED:
            continue
        assert param.default is not None or "[default:" in param.help, param.opts[0]
        checked += 1
    assert checked >= 10
    text = _help("train")
    assert f"[default: the preset's; {DEFAULT_PRESET}: {PRESETS[DEFAULT_PRESET]['img_size']}]" in text
    assert f"{DEFAULT_PRESET}: {PRESETS[DEFAULT_PRESET]['windows'][-1]}]" in text
    assert f"demo_cpu: {PRESETS['demo_cpu']['max_steps']}]" in text


@pytest.mark.parametrize("name", ["eval", "stats"])
def test_split_lists_its_values(name: str) -> None:
    assert f"--split <{'|'.join(SPLITS)}>" in _help(name)


def test_help_defaults_match_the_library() -> None:
    from simplematch.bench.options import DEFAULT_RUNTIMES
    from simplematch.export.int8 import DEFAULT_MIN_AGREEMENT
    from simplematch.metrics import DEFAULT_ALPHAS

    assert f"[default: {','.join(DEFAULT_RUNTIMES)};" in _help("bench")
    assert f"[default: {DEFAULT_MIN_AGREEMENT:g}]" in _help("export")
    assert f"[default: {' '.join(map(str, DEFAULT_ALPHAS))}]" in _help("eval")


def test_infer_help_documents_the_pairs_file_and_the_keypoint_border() -> None:
    text = " ".join(_help("infer").split())
    assert "header src,tgt,kps" in text and "relative to the pairs file's folder" in text
    assert "0 <= x <= width - 1, 0 <= y <= height - 1" in text


@pytest.mark.parametrize("with_out", [True, False])
def test_infer_prints_at_most_20_rows_and_says_where_the_rest_are(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, with_out: bool
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    model = make_onnx(tmp_path / "m.onnx")
    src, tgt = write_image(tmp_path / "s.png", 40, 30), write_image(tmp_path / "t.png", 40, 30, seed=1)
    kps = tmp_path / "k.json"
    kps.write_text(json.dumps([[i, i] for i in range(25)]))
    out = tmp_path / "r.json"
    argv = ["infer", str(src), str(tgt), "--kps", str(kps), "--model", str(model)]
    assert main([*argv, *(["--out", str(out)] if with_out else [])]) == 0
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if re.match(r"^\W*\d+\s*│", line)]
    assert len(rows) == INFER_TABLE_ROWS == 20
    where = f"in {out}" if with_out else "with --out FILE"
    assert f"... 5 more keypoints (25 in all) {where}" in printed
    if with_out:
        assert len(json.loads(out.read_text())["keypoints"]) == 25
