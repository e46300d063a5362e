"""The README's commands work: its code blocks run, and every `smatch` command in it parses with the CLI.

* Every ```bash block runs verbatim in bash (``set -euo pipefail``, ``smatch`` = ``python -m
  simplematch.cli``, forked from the prewarmed server of tests/prewarmed.py with the shell's stdin, stdout,
  stderr and folder) and every ```python block with this checkout's Python, each in a fresh copy of a
  folder holding what the README assumes a user has: ``src.jpg``, ``tgt.jpg`` (the example pair),
  ``kps.json`` (``[[x, y], ...]``), ``pairs.csv``, ``refs.json`` (the source image labelled as COCO
  keypoints) with a ``photos/`` folder of targets, a checkpoint folder ``runs/d252`` (a tiny random one),
  ``model.onnx`` exported from it, and ``PF-WILLOW`` (a link to ../shared/data/pf-willow; a block naming it
  is skipped when that data is absent). Each block must exit 0. The Python blocks must not import torch.
* A block that needs what a test cannot have (a GPU, a benchmark, pretrained weights, a venv) is marked on
  the line before its fence with ``<!-- readme-test: not-run (REASON) -->``; its commands are still parsed.
* Every ``smatch ...`` command, in any bash block or inline code span, is parsed by the real click command
  (``make_context``): an unknown command or option, or a value of the wrong type, fails.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import HAVE_WILLOW, PYTHON, ROOT, WILLOW, need_willow, subprocess_env
from tests.prewarmed import SERVER, Prewarmed

README = ROOT / "README.md"
EXAMPLES = ROOT / "examples"
NOT_RUN = re.compile(r"<!-- readme-test: not-run \((?P<reason>[^)]+)\) -->")
FENCE = re.compile(r"^```(?P<lang>\w*)\s*$")


@dataclass(frozen=True)
class Block:
    lang: str
    code: str
    line: int  # 1-based line of the opening fence
    not_run: str | None  # the reason, when marked

    @property
    def id(self) -> str:
        return f"{self.lang}-line{self.line}"


def readme_blocks(text: str) -> list[Block]:
    """Fenced blocks, each with the not-run reason of the marker on the line before its fence."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        marker = NOT_RUN.fullmatch(lines[i - 1].strip()) if i else None
        code = "\n".join(lines[i + 1 : end]) + "\n"
        blocks.append(Block(m["lang"], code, i + 1, marker["reason"] if marker else None))
        i = end + 1
    return blocks


def smatch_commands(block: str) -> list[list[str]]:
    """Argument lists of the ``smatch`` (or ``torchrun ... -m simplematch.cli``) commands of a bash block."""
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["smatch"]:
            commands.append(words[1:])
        elif words[:1] == ["torchrun"] and "simplematch.cli" in words:
            commands.append(words[words.index("simplematch.cli") + 1 :])
    return commands


def inline_smatch_commands(text: str) -> list[list[str]]:
    """``smatch ...`` inline code spans outside fenced blocks and HTML comments (neither is prose)."""
    prose = re.sub(r"^```.*?^```|<!--.*?-->", "", text, flags=re.S | re.M)
    return [shlex.split(span)[1:] for span in re.findall(r"`(smatch [^`]+)`", prose)]


TEXT = README.read_text()
BLOCKS = readme_blocks(TEXT)
RUN = [b for b in BLOCKS if b.lang in ("bash", "python") and b.not_run is None]
COMMANDS = [c for b in BLOCKS if b.lang == "bash" for c in smatch_commands(b.code)]
COMMANDS += inline_smatch_commands(TEXT)


def test_the_readme_parser_reads_blocks_markers_and_commands() -> None:
    text = (
        "x `smatch infer a b --kps k.json` <!-- `smatch nothing` -->\n"
        "<!-- readme-test: not-run (needs a GPU) -->\n```bash\nsmatch eval m.onnx --device cuda  # c\n```\n"
        "```bash\nsmatch export r \\\n    --fp16\n"
        "torchrun --nproc_per_node 2 -m simplematch.cli train --out o\n```\n"
        "```python\nprint(1)\n```\n"
    )
    blocks = readme_blocks(text)
    assert [(b.lang, b.line, b.not_run) for b in blocks] == [
        ("bash", 3, "needs a GPU"), ("bash", 6, None), ("python", 11, None)
    ]  # fmt: skip
    assert smatch_commands(blocks[0].code) == [["eval", "m.onnx", "--device", "cuda"]]
    assert smatch_commands(blocks[1].code) == [["export", "r", "--fp16"], ["train", "--out", "o"]]
    assert inline_smatch_commands(text) == [["infer", "a", "b", "--kps", "k.json"]]


def test_the_readme_runs_what_a_user_is_shown_first() -> None:
    """Marking a block not-run is for what a test cannot have: matching, export, runtime eval and the Python
    API must stay in runnable blocks, and every marker names its reason and sits right above a fence."""
    ran = {c[0] for b in RUN if b.lang == "bash" for c in smatch_commands(b.code)}
    assert {"infer", "export", "eval", "presets"} <= ran, ran
    assert any(b.lang == "python" for b in RUN)
    marked = sum(b.not_run is not None for b in BLOCKS)
    assert marked == len(NOT_RUN.findall(TEXT)) == TEXT.count("<!-- readme-test:")
    assert "make demo" in TEXT and "make test" in TEXT  # the two set-up commands of the quick start


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(c)[:60] for c in COMMANDS])
def test_every_readme_smatch_command_parses(argv: list[str]) -> None:
    import click
    import typer

    from simplematch.cli.app import app

    root = typer.main.get_command(app)
    ctx = click.Context(root, info_name="smatch")
    command = root.get_command(ctx, argv[0])
    assert command is not None, f"README: no command `smatch {argv[0]}`"
    if len(argv) == 1:  # a bare `smatch export` in prose names the command; it is not one to run
        return
    try:
        command.make_context(argv[0], list(argv[1:]), parent=ctx)
    except click.UsageError as exc:
        pytest.fail(f"README: `smatch {' '.join(argv)}`: {exc.format_message()}")


def _coco_reference(image: Path, kps: list[list[float]]) -> dict:
    """``refs.json`` of the README: one labelled image as a labelling tool exports COCO keypoints."""
    from PIL import Image

    with Image.open(image) as im:
        w, h = im.size
    xs, ys = [p[0] for p in kps], [p[1] for p in kps]
    bbox = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
    names = [f"kp{i}" for i in range(len(kps))]
    return {
        "images": [{"id": 1, "file_name": image.name, "width": w, "height": h}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": bbox,
             "keypoints": [c for x, y in kps for c in (x, y, 2)], "num_keypoints": len(kps)}
        ],
        "categories": [{"id": 1, "name": "object", "keypoints": names, "skeleton": []}],
    }  # fmt: skip


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path, tiny_onnx: Path) -> Path:
    """What the README assumes a user has, in one folder (the checkpoint and its export: the session's)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("user")
    for name in ("src", "tgt"):
        with Image.open(EXAMPLES / f"{name}.png") as im:
            im.convert("RGB").save(root / f"{name}.jpg", quality=95)
    kps = json.loads((EXAMPLES / "kps.json").read_text())["keypoints"]
    (root / "kps.json").write_text(json.dumps(kps))
    (root / "pairs.csv").write_text("src,tgt,kps\nsrc.jpg,tgt.jpg,kps.json\ntgt.jpg,src.jpg,kps.json\n")
    (root / "refs.json").write_text(json.dumps(_coco_reference(root / "src.jpg", kps)))
    (root / "photos").mkdir()
    shutil.copy(root / "tgt.jpg", root / "photos" / "tgt.jpg")
    shutil.copytree(tiny_checkpoint, root / "runs" / "d252")
    shutil.copy(tiny_onnx, root / "model.onnx")
    if HAVE_WILLOW:
        (root / "PF-WILLOW").symlink_to(WILLOW)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("block", RUN, ids=[b.id for b in RUN])
def test_readme_block_runs(block: Block, user_folder: Path, prewarmed: Prewarmed, tmp_path: Path) -> None:
    if "PF-WILLOW" in block.code:
        need_willow()
    work = tmp_path / "work"
    shutil.copytree(user_folder, work, symlinks=True)
    if block.lang == "bash":
        relay = shlex.join([PYTHON, str(SERVER), "--relay", prewarmed.path, "-m", "simplematch.cli"])
        prelude = f'set -euo pipefail\nsmatch() {{ {relay} "$@"; }}\n'
        argv = ["bash", "-c", prelude + block.code]
    else:
        (work / "snippet.py").write_text(block.code)
        check = "import runpy, sys; runpy.run_path('snippet.py'); assert 'torch' not in sys.modules, 'torch'"
        argv = [PYTHON, "-c", check]
    proc = subprocess.run(argv, cwd=work, env=subprocess_env(), capture_output=True, text=True, timeout=900)
    output = proc.stdout[-3000:] + proc.stderr
    assert proc.returncode == 0, f"README line {block.line}:\n{block.code}\n{output}"
