"""The CLI contract: every user error is one line on stderr naming the problem and the fix, exit code 2, no
traceback (``--debug`` shows it), no partial output; odd-but-valid inputs (grayscale, RGBA, 16-bit) work;
``--help`` is instant (no torch); the CLI reference (docs/cli.md) and error table (docs/errors.md) match the
real CLI.

The error matrix runs each command in-process from a workspace folder with relative paths, so the observed
messages are path-stable and are rendered verbatim into docs/errors.md. After changing a message, regenerate
with ``SMATCH_UPDATE_DOCS=1 pytest tests/cli/test_cli.py -k "user_errors or docs_errors"``.
"""

from __future__ import annotations

import csv
import json
import os
import pickle
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simplematch.cli.app import main
from tests.helpers import PYTHON, ROOT, file_stats, subprocess_env, tiny_config

CLI_DOC = ROOT / "docs" / "cli.md"
ERRORS_DOC = ROOT / "docs" / "errors.md"
ERR_START, ERR_END = "<!-- errors:start -->", "<!-- errors:end -->"
COMMANDS = ["train", "eval", "stats", "presets", "export", "infer", "convert", "demo", "bench", "transfer"]


# --- workspace ---------------------------------------------------------------------------------------------
def _img(path: Path, kind: str, w: int = 48, h: int = 40, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    # PNG content whatever the suffix (SPair names its images .jpg; JPEG has no 16-bit or alpha mode)
    if kind == "rgb":
        Image.fromarray(rgb).save(path, format="PNG")
    elif kind == "gray":
        Image.fromarray(rgb[:, :, 0]).save(path, format="PNG")
    elif kind == "rgba":
        Image.fromarray(np.dstack([rgb, rgb[:, :, :1]])).save(path, format="PNG")
    elif kind == "16bit":
        Image.fromarray(rng.integers(0, 65535, (h, w), dtype=np.uint16)).save(path, format="PNG")
        with Image.open(path) as im:
            assert im.mode.startswith("I"), im.mode  # really a 16-bit file
    elif kind == "corrupt":
        path.write_bytes(rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
    elif kind == "truncated":
        Image.fromarray(rgb).save(path.with_suffix(".full.jpg"), quality=90)
        data = path.with_suffix(".full.jpg").read_bytes()
        path.with_suffix(".full.jpg").unlink()
        path.write_bytes(data[: len(data) // 2])
    elif kind != "missing":
        raise ValueError(kind)


def _spair(root: Path, kinds: tuple[str, str], *, pairs: int = 2) -> Path:
    """A minimal SPair-71k layout: ``pairs`` trn and val pairs between two images of the given kinds."""
    for i, kind in enumerate(kinds):
        _img(root / "JPEGImages" / "cat" / f"im{i}.jpg", kind, seed=i)
    ann = {
        "src_imname": "im0.jpg", "trg_imname": "im1.jpg", "category": "cat",
        "src_kps": [[5, 6], [20, 30], [40, 10]], "trg_kps": [[7, 8], [22, 28], [41, 12]],
        "src_bndbox": [2, 2, 45, 38], "trg_bndbox": [3, 3, 46, 39],
    }  # fmt: skip
    for split in ("trn", "val"):
        names = [f"p{i}" for i in range(pairs)]
        (root / "Layout" / "large").mkdir(parents=True, exist_ok=True)
        (root / "Layout" / "large" / f"{split}.txt").write_text("\n".join(names) + "\n")
        for name in names:
            path = root / "PairAnnotation" / split / f"{name}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(ann))
    return root


def _willow(root: Path, kinds: list[tuple[str, str]]) -> Path:
    """PF-WILLOW in its CSV layout: one pair per (source kind, target kind); coordinates are 1-based."""
    rows = [["imageA", "imageB", *[f"{c}{i}" for c in ("XA", "YA", "XB", "YB") for i in range(3)]]]
    for i, (a, b) in enumerate(kinds):
        _img(root / "cat" / f"a{i}.png", a, seed=2 * i)
        _img(root / "cat" / f"b{i}.png", b, seed=2 * i + 1)
        rows.append([f"cat/a{i}.png", f"cat/b{i}.png", 5, 20, 40, 6, 30, 10, 7, 22, 41, 8, 28, 12])
    with open(root / "test_pairs.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return root


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    from simplematch.checkpoint import save_checkpoint
    from simplematch.config import Config
    from simplematch.model import SimpleMatch
    from tests.helpers import make_onnx

    root = tmp_path_factory.mktemp("ws")
    cfg = tiny_config()
    cfg.save(root / "tiny.json")
    shutil.copytree(tiny_checkpoint, root / "ckpt")
    # Incompatible checkpoints: config.json says another backbone / another input size than the weights.
    shutil.copytree(root / "ckpt", root / "ckpt_other_backbone")
    Config(**{**cfg.to_dict(), "backbone": "resnet18"}).save(root / "ckpt_other_backbone" / "config.json")
    vit = Config(backbone="vit_small_patch14_dinov2", img_size=56, finetune="full", dropout=0.0)
    save_checkpoint(
        SimpleMatch(vit, backbone_kwargs=dict(depth=1, embed_dim=32, num_heads=2)), vit, root / "vit"
    )
    shutil.copytree(root / "vit", root / "vit_other_size")
    Config(**{**vit.to_dict(), "img_size": 112}).save(root / "vit_other_size" / "config.json")
    shutil.copytree(root / "ckpt", root / "ckpt_truncated")
    weights = root / "ckpt_truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    (root / "resume_no_last").mkdir()
    cfg.save(root / "resume_no_last" / "config.json")

    (root / "afile").write_text("a regular file: nothing can be created under it\n")
    (root / "bad.json").write_text("{not json")
    (root / "unknown_key.json").write_text(json.dumps({**cfg.to_dict(), "learning_rate": 1}))

    for kind in ("rgb", "gray", "rgba", "16bit", "corrupt", "truncated"):
        _img(root / "img" / f"{kind}.{'jpg' if kind == 'truncated' else 'png'}", kind)
    kps = {
        "ok": "[[5, 6], [20, 30]]",
        "malformed": "[[5, 6], [20",
        "empty": "[]",
        "outside": "[[5, 6], [48, 3]]",
        "negative": "[[-1, 6]]",
        "triple": "[[1, 2, 3]]",
        "nonfinite": "[[1e999, 2]]",
        "strings": '[["a", 2]]',
    }
    for name, text in kps.items():
        (root / "kps").mkdir(exist_ok=True)
        (root / "kps" / f"{name}.json").write_text(text)
    make_onnx(root / "tiny.onnx")
    for name, kinds in {
        "ok": ("rgb", "rgb"),
        "modes": ("gray", "16bit"),
        "corrupt": ("rgb", "corrupt"),
        "truncated": ("truncated", "rgb"),
        "noimage": ("rgb", "missing"),
    }.items():
        _spair(root / f"spair_{name}", kinds)
    _spair(root / "spair_noann", ("rgb", "rgb"))
    (root / "spair_noann" / "Layout" / "large" / "trn.txt").unlink()
    _spair(root / "spair_badann", ("rgb", "rgb"))
    (root / "spair_badann" / "PairAnnotation" / "trn" / "p1.json").write_text('{"src_imname": ')
    _willow(root / "willow_modes", [("gray", "rgba"), ("16bit", "rgb"), ("rgba", "16bit")])
    _willow(root / "willow_corrupt", [("rgb", "corrupt")])
    _willow(root / "willow_truncated", [("rgb", "truncated")])
    _willow(root / "willow_noimage", [("rgb", "missing")])
    _willow(root / "willow_badann", [("rgb", "rgb")])
    with open(root / "willow_badann" / "test_pairs.csv", "a") as fh:
        fh.write("cat/a0.png,cat/b0.png,1,2,x,4,5,6,7,8,9,10,11,12\n")
    (root / "willow_noann").mkdir()
    (root / "willow_pf" / "PF-dataset").mkdir(parents=True)
    with open(root / "evil.pth", "wb") as fh:
        pickle.dump({"x": _Evil()}, fh, protocol=2)
    (root / "garbage.pth").write_bytes(b"\x00\x01 not a pickle")
    (root / "empty.pth").write_bytes(b"")
    (root / "existing.json").write_text('{"a user file": "must survive"}\n')
    (root / "windows5.json").write_text(json.dumps({**cfg.to_dict(), "windows": 5}))
    (root / "resume_at_4").mkdir()
    cfg.save(root / "resume_at_4" / "config.json")
    (root / "resume_at_4" / "last.json").write_text('{"checkpoint": "ckpt-00000004", "step": 4}\n')
    refs = {"images": [{"id": 1, "file_name": "img/rgb.png", "width": 48, "height": 40}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "keypoints": [5, 6, 2, 20, 30, 2],
                             "bbox": [0, 0, 48, 40]}],
            "categories": [{"id": 1, "name": "thing", "keypoints": ["a", "b"]}]}  # fmt: skip
    (root / "refs.json").write_text(json.dumps(refs))
    return root


class _Evil:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/simplematch-pwned-by-convert"),))


# --- the error matrix: (command, situation, argv, fragment the one-line message must contain) ---------------
T = ["train", "--config", "tiny.json", "--out", "run"]
E = ["eval", "ckpt"]
INFER = ["infer", "img/rgb.png", "img/rgb.png", "--model", "tiny.onnx"]
TR = ["transfer", "--refs", "refs.json", "--targets", "img", "--model", "tiny.onnx", "--out"]
ERRORS: list[tuple[str, str, list[str], str]] = [
    ("train", "unknown preset", ["train", "--preset", "nope", "--out", "run"], "unknown preset 'nope'"),
    (
        "train",
        "unknown dataset",
        ["train", "--dataset", "imagenet", "--out", "run"],
        "Invalid value for '--dataset'",
    ),
    (
        "train",
        "unknown backbone family",
        [*T, "--backbone", "foonet"],
        "unknown backbone family for 'foonet'",
    ),
    (
        "train",
        "backbone timm does not know",
        [*T, "--backbone", "resnet_bogus"],
        "timm cannot build backbone",
    ),
    ("train", "invalid value", [*T, "--img-size", "30"], "img_size=30: must be an integer >= 32"),
    (
        "train",
        "malformed --config file",
        ["train", "--config", "bad.json", "--out", "run"],
        "is not valid JSON",
    ),
    (
        "train",
        "unknown key in --config",
        ["train", "--config", "unknown_key.json", "--out", "run"],
        "learning_rate",
    ),
    (
        "train",
        "data root does not exist",
        [*T, "--dataset", "spair", "--data-root", "nowhere"],
        "not a folder",
    ),
    (
        "train",
        "annotation file missing",
        [*T, "--dataset", "spair", "--data-root", "spair_noann"],
        "spair_noann/Layout/large/trn.txt",
    ),
    (
        "train",
        "annotation file malformed",
        [*T, "--dataset", "spair", "--data-root", "spair_badann"],
        "spair_badann/PairAnnotation/trn/p1.json is not valid JSON",
    ),
    (
        "train",
        "image file missing",
        [*T, "--dataset", "spair", "--data-root", "spair_noimage"],
        "image not found",
    ),
    (
        "train",
        "corrupt image",
        [*T, "--dataset", "spair", "--data-root", "spair_corrupt"],
        "cannot read image",
    ),
    ("train", "truncated image", [*T, "--dataset", "spair", "--data-root", "spair_truncated"], "truncated"),
    (
        "train",
        "PF-WILLOW has no training split",
        [*T, "--dataset", "pfwillow", "--data-root", "willow_modes"],
        "PF-WILLOW has no training split",
    ),
    (
        "train",
        "output folder not writable",
        ["train", "--config", "tiny.json", "--out", "afile/run"],
        "afile is not a folder",
    ),
    (
        "train",
        "--resume of a folder with no checkpoint",
        ["train", "--resume", "resume_no_last"],
        "no last.json",
    ),
    ("train", "--resume of a missing folder", ["train", "--resume", "nowhere"], "run folder not found"),
    ("eval", "checkpoint missing", ["eval", "nowhere", "--dataset", "synthetic"], "model not found"),
    (
        "eval",
        "checkpoint of another backbone",
        ["eval", "ckpt_other_backbone", "--dataset", "synthetic"],
        "does not fit this model",
    ),
    (
        "eval",
        "checkpoint of another input size",
        ["eval", "vit_other_size", "--dataset", "synthetic"],
        "shape mismatch",
    ),
    (
        "eval",
        "truncated weights file",
        ["eval", "ckpt_truncated", "--dataset", "synthetic"],
        "not a readable safetensors file",
    ),
    ("eval", "unknown dataset", [*E, "--dataset", "kitti"], "Invalid value for '--dataset'"),
    (
        "eval",
        "annotation file missing",
        [*E, "--dataset", "pfwillow", "--data-root", "willow_noann"],
        "willow_noann/PF-dataset",
    ),
    (
        "eval",
        "annotation file malformed",
        [*E, "--dataset", "pfwillow", "--data-root", "willow_badann"],
        "willow_badann/test_pairs.csv line 3",
    ),
    (
        "eval",
        "image file missing",
        [*E, "--dataset", "pfwillow", "--data-root", "willow_noimage"],
        "image not found",
    ),
    (
        "eval",
        "corrupt image",
        [*E, "--dataset", "pfwillow", "--data-root", "willow_corrupt"],
        "cannot read image",
    ),
    (
        "eval",
        "truncated image",
        [*E, "--dataset", "pfwillow", "--data-root", "willow_truncated"],
        "truncated",
    ),
    (
        "eval",
        "--json not writable",
        [*E, "--dataset", "synthetic", "--json", "afile/r.json"],
        "afile is not a folder",
    ),
    (
        "stats",
        "annotation file missing",
        ["stats", "--dataset", "spair", "--data-root", "spair_noann"],
        "spair_noann/Layout/large/trn.txt",
    ),
    (
        "stats",
        "annotation file malformed",
        ["stats", "--dataset", "spair", "--data-root", "spair_badann"],
        "is not valid JSON",
    ),
    ("export", "checkpoint missing", ["export", "nowhere"], "nowhere"),
    (
        "export",
        "checkpoint of another backbone",
        ["export", "ckpt_other_backbone", "--out", "m.onnx"],
        "does not fit this model",
    ),
    ("export", "output path not writable", ["export", "ckpt", "--out", "afile/m.onnx"], "afile"),
    ("export", "invalid --batch", ["export", "ckpt", "--batch", "two"], "--batch 'two' is invalid"),
    (
        "infer",
        "source image missing",
        ["infer", "img/none.png", "img/rgb.png", "--kps", "kps/ok.json", "--model", "tiny.onnx"],
        "image not found",
    ),
    (
        "infer",
        "corrupt image",
        [*INFER[:2], "img/corrupt.png", *INFER[3:], "--kps", "kps/ok.json"],
        "cannot read image",
    ),
    (
        "infer",
        "truncated image",
        [*INFER[:2], "img/truncated.jpg", *INFER[3:], "--kps", "kps/ok.json"],
        "truncated",
    ),
    ("infer", "keypoint file missing", [*INFER, "--kps", "kps/none.json"], "keypoint file not found"),
    ("infer", "keypoints: malformed JSON", [*INFER, "--kps", "kps/malformed.json"], "not valid JSON"),
    ("infer", "keypoints: empty list", [*INFER, "--kps", "kps/empty.json"], "no keypoints given"),
    (
        "infer",
        "keypoints: outside the image",
        [*INFER, "--kps", "kps/outside.json"],
        "outside the 48x40 image",
    ),
    ("infer", "keypoints: negative", [*INFER, "--kps", "kps/negative.json"], "outside the 48x40 image"),
    ("infer", "keypoints: not [x, y] pairs", [*INFER, "--kps", "kps/triple.json"], "not an [x, y] pair"),
    ("infer", "keypoints: non-finite", [*INFER, "--kps", "kps/nonfinite.json"], "non-finite"),
    ("infer", "keypoints: not numbers", [*INFER, "--kps", "kps/strings.json"], "non-numeric"),
    (
        "infer",
        "model file missing",
        [*INFER[:3], "--model", "none.onnx", "--kps", "kps/ok.json"],
        "none.onnx",
    ),
    ("infer", "--out not writable", [*INFER, "--kps", "kps/ok.json", "--out", "afile/r.json"], "afile"),
    ("infer", "--viz not a PNG name", [*INFER, "--kps", "kps/ok.json", "--viz", "v.jpg"], "must end in .png"),
    (
        "convert",
        "file missing",
        ["convert", "none.pth", "--family", "resnet101", "--out", "conv", "--img-size", "256"],
        "checkpoint not found",
    ),
    (
        "convert",
        "pickle that would run code",
        ["convert", "evil.pth", "--family", "resnet101", "--out", "conv", "--img-size", "256"],
        "evil.pth",
    ),
    (
        "convert",
        "not a checkpoint",
        ["convert", "garbage.pth", "--family", "resnet101", "--out", "conv", "--img-size", "256"],
        "garbage.pth",
    ),
    ("convert", "unknown family", ["convert", "evil.pth", "--family", "vgg", "--out", "conv"], "'--family'"),
    (
        "convert",
        "--img-size no released config of the family uses",
        ["convert", "evil.pth", "--family", "dinov2_b14", "--out", "conv", "--img-size", "336"],
        "trained at 252 or 448",
    ),
    (
        "convert",
        "output folder not writable",
        ["convert", "evil.pth", "--family", "resnet101", "--out", "afile/conv", "--img-size", "256"],
        "afile is not a folder",
    ),
    ("demo", "output folder not writable", ["demo", "--out", "afile/demo"], "afile is not a folder"),
    (
        "demo",
        "--willow without PF-dataset/",
        ["demo", "--out", "d", "--willow", "willow_noann"],
        "no PF-dataset",
    ),
    (
        "demo",
        "invalid --max-steps",
        ["demo", "--out", "d", "--willow", "willow_pf", "--max-steps", "0"],
        "max_steps=0: must be >= 1",
    ),
    # --- outputs never replace inputs or earlier results (without --force) ------------------------------
    (
        "infer",
        "--viz is the source image",
        [*INFER, "--kps", "kps/ok.json", "--viz", "img/rgb.png"],
        "inputs",
    ),
    (
        "infer",
        "--out is the keypoint file",
        [*INFER, "--kps", "kps/ok.json", "--out", "kps/ok.json"],
        "inputs",
    ),
    ("infer", "--out exists", [*INFER, "--kps", "kps/ok.json", "--out", "existing.json"], "--force"),
    ("eval", "--json exists", [*E, "--dataset", "synthetic", "--json", "existing.json"], "--force"),
    (
        "eval",
        "--json inside the checkpoint, --force",
        [*E, "--dataset", "synthetic", "--json", "ckpt/config.json", "--force"],
        "inputs",
    ),
    ("train", "--out holds a run", ["train", "--config", "tiny.json", "--out", "ckpt"], "--force"),
    (
        "convert",
        "--out holds a run",
        ["convert", "evil.pth", "--family", "resnet101", "--out", "ckpt", "--img-size", "256"],
        "--force",
    ),  # fmt: skip
    (
        "convert",
        "--to-official --out is the input",
        ["convert", "garbage.pth", "--family", "resnet101", "--to-official", "--out", "garbage.pth"],
        "inputs",
    ),
    ("demo", "--out holds a run", ["demo", "--out", "ckpt"], "--force"),
    ("bench", "--json exists", ["bench", "--model", "tiny.onnx", "--json", "existing.json"], "--force"),
    # --- numbers and options that would make a result meaningless ----------------------------------------
    *[
        (
            "eval",
            f"--alpha {a}",
            [*E, "--dataset", "synthetic", "--alpha", a],
            "must be a number > 0 and <= 1",
        )
        for a in ("nan", "0", "-0.1", "inf", "2")
    ],
    ("eval", "--limit 0", [*E, "--dataset", "synthetic", "--limit", "0"], "'--limit'"),
    ("eval", "--limit -5", [*E, "--dataset", "synthetic", "--limit", "-5"], "'--limit'"),
    ("eval", "--window -1", [*E, "--dataset", "synthetic", "--window", "-1"], "'--window'"),
    ("eval", "--window beyond the map", [*E, "--dataset", "synthetic", "--window", "1000"], "does not fit"),
    (
        "eval",
        "--window beyond the map (runtime)",
        ["eval", "tiny.onnx", "--dataset", "synthetic", "--window", "1000"],
        "does not fit",
    ),
    (
        "eval",
        "--split bogus",
        [*E, "--dataset", "pfwillow", "--data-root", "willow_modes", "--split", "bogus"],
        "unknown split 'bogus'",
    ),
    (
        "eval",
        "PF-WILLOW --split trn",
        [*E, "--dataset", "pfwillow", "--data-root", "willow_modes", "--split", "trn"],
        "PF-WILLOW has no 'trn' split",
    ),
    (
        "eval",
        "--data-root for synthetic",
        [*E, "--dataset", "synthetic", "--data-root", "willow_modes"],
        "not used by the synthetic dataset",
    ),
    ("train", "--lr nan", [*T, "--lr", "nan"], "lr=nan: must be a finite number > 0"),
    ("train", "--epochs 0 names epochs", [*T, "--epochs", "0"], "config epochs=0"),
    ("train", "--img-size that cannot fit memory", [*T, "--img-size", "100000"], "needs at least"),
    (
        "train",
        "--config with windows: 5",
        ["train", "--config", "windows5.json", "--out", "run"],
        "list[int]",
    ),
    ("train", "empty --weights file", [*T, "--weights", "empty.pth"], "cannot read empty.pth"),
    (
        "train",
        "--resume --max-steps below the step reached",
        ["train", "--resume", "resume_at_4", "--max-steps", "2"],
        "not beyond step 4",
    ),
    (
        "convert",
        "empty file",
        ["convert", "empty.pth", "--family", "resnet101", "--out", "conv", "--img-size", "256"],
        "cannot read empty.pth",
    ),
    (
        "bench",
        "--checkpoint with random-init options",
        ["bench", "--checkpoint", "ckpt", "--backbone", "resnet50", "--img-size", "64"],
        "--backbone, --img-size describe the random-init model",
    ),
    ("bench", "--runtime none and no model", ["bench", "--runtime", "none"], "nothing to benchmark"),
    (
        "bench",
        "--runtime onnx with only --model files... of another kind",
        ["bench", "--model", "tiny.onnx", "--runtime", "torch"],
        "--runtime torch exports a model from a checkpoint",
    ),
    ("transfer", "--out exists", [*TR, "existing.json"], "--out existing.json already exists"),
    (
        "transfer",
        "--review inside --targets",
        [*TR, "out/t.json", "--review", "img/rev"],
        "reads recursively",
    ),
    (
        "transfer",
        "--refs not JSON",
        [*TR[:2], "bad.json", *TR[3:], "out/t.json"],
        "bad.json is not valid JSON",
    ),
    ("transfer", "--resume without a file", [*TR, "out/t.json", "--resume"], "does not exist"),
]


def _run_case(ws: Path, argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, set[str]]:
    before = file_stats(ws)
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    after = file_stats(ws)
    changed = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
    return rc, err, changed


@pytest.fixture(scope="module")
def observed() -> list[tuple[str, str, str]]:
    return []


@pytest.mark.slow
def test_user_errors_are_one_line_exit_2_no_output(
    ws: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, observed: list
) -> None:
    monkeypatch.chdir(ws)
    marker = Path("/tmp/simplematch-pwned-by-convert")
    marker.unlink(missing_ok=True)
    problems = []
    for command, situation, argv, fragment in ERRORS:
        rc, err, new_files = _run_case(ws, argv, capsys)
        line = err.rstrip("\n")
        ok = (
            rc == 2
            and err.count("\n") == 1
            and line.startswith("error: ")
            and "Fix:" in line
            and fragment in line
            and "Traceback" not in err
            and not new_files
        )
        if not ok:
            problems.append(f"{command} / {situation}: rc={rc} new={sorted(new_files)} stderr={err!r}")
        observed.append((command, situation, line.removeprefix("error: ")))
    assert not marker.exists(), "a pickle ran code"
    assert not problems, "\n".join(problems)


def test_debug_shows_the_traceback(ws: Path) -> None:
    proc = subprocess.run(
        [PYTHON, "-m", "simplematch.cli", "eval", "nowhere", "--dataset", "synthetic", "--debug"],
        cwd=ws, env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert (
        proc.returncode != 0
        and "Traceback" in proc.stderr
        and "SimpleMatchError: model not found" in proc.stderr
    )


# --- odd but valid inputs work ------------------------------------------------------------------------------
def test_grayscale_rgba_16bit_images_work_everywhere(
    ws: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(ws)
    for src, trg in (("gray", "rgba"), ("16bit", "rgb"), ("rgba", "16bit")):
        argv = ["infer", f"img/{src}.png", f"img/{trg}.png", "--model", "tiny.onnx", "--kps", "kps/ok.json"]
        assert main([*argv, "--out", f"out/{src}-{trg}.json"]) == 0
        assert len(json.loads((ws / "out" / f"{src}-{trg}.json").read_text())["keypoints"]) == 2
    willow = ["--dataset", "pfwillow", "--data-root", "willow_modes"]
    assert main(["eval", "ckpt", *willow, "--json", "out/e.json", "--device", "cpu"]) == 0
    assert json.loads((ws / "out" / "e.json").read_text())["pairs"] == 3
    assert main(["train", "--config", "tiny.json", "--dataset", "spair", "--data-root", "spair_modes",
                 "--max-steps", "1", "--out", "out/run"]) == 0  # fmt: skip
    assert (ws / "out" / "run" / "last.json").is_file()
    assert main(["stats", "--dataset", "spair", "--data-root", "spair_modes"]) == 0
    # PF-WILLOW has only a test split: that is stats' default there (trn elsewhere, as paper Table 1)
    assert main(["stats", "--dataset", "pfwillow", "--data-root", "willow_modes"]) == 0
    assert "pfwillow test" in capsys.readouterr().out
    assert capsys.readouterr().err == ""


# --- help: fast, torch-free, and docs/cli.md is the real help -----------------------------------------------
def test_help_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from simplematch.cli.app import main\n"
        f"for cmd in {COMMANDS!r}:\n"
        "    assert main([cmd, '--help']) == 0, cmd\n"
        "assert main(['--help']) == 0\n"
        "heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'timm') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run(
        [PYTHON, "-c", code], cwd=ROOT, env=subprocess_env(), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "Usage: smatch train" in proc.stdout and "Usage: smatch infer" in proc.stdout


def test_docs_cli_reference_is_current() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "gen_cli_reference", ROOT / "scripts" / "gen_cli_reference.py"
    )
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    text = CLI_DOC.read_text()
    assert gen.update(text) == text, "docs/cli.md is stale: run python scripts/gen_cli_reference.py"
    for cmd in COMMANDS:
        assert f"### `smatch {cmd}`" in text


# --- docs/errors.md = the messages observed above ----------------------------------------------------------
# Observed by tests/test_train.py (step numbers and folders as in those tests).
RUN_FAULTS = [
    (
        "train",
        "loss becomes NaN/inf",
        "loss became nan at step 3; the last good checkpoint run/ckpt-00000002 is intact. Fix: lower --lr"
        " (or check the data), then resume with `smatch train --resume` or restart",
    ),
    (
        "train",
        "Ctrl-C / SIGTERM (exit 130 / 143, on stderr)",
        "interrupted by SIGINT at step 7; resume with: smatch train --resume run",
    ),
    (
        "train",
        "--resume with other settings",
        "--resume continues a run with its saved config; --lr cannot be changed. Fix: drop those options"
        " (only --max-steps and --device may be given with --resume)",
    ),
    (
        "train",
        "--resume of a tampered state.pt (pickle)",
        "refused to load run/ckpt-00000002/state.pt: it holds Python objects other than tensors"
        " (weights_only=True). Fix: restart the run without --resume"
        " (the file was not written by `smatch train`)",
    ),
]


def render_error_table(rows: list[tuple[str, str, str]]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = [
        ERR_START,
        "",
        "Every problem a user can fix ends the command with exit code 2 and one line on stderr naming the",
        "problem and the fix (`--debug` shows the traceback instead); nothing is written. Generated from the",
        "messages `tests/cli/test_cli.py` and `tests/test_train.py` observe.",
        "",
        "| command | situation | message (`error: ...`) |",
        "|---|---|---|",
    ]
    lines += [f"| `{c}` | {cell(s)} | {cell(m)} |" for c, s, m in rows]
    lines += ["", ERR_END]
    return "\n".join(lines)


def test_docs_errors_table_matches_observed_messages(observed: list) -> None:
    if len(observed) != len(ERRORS):
        pytest.skip("needs test_user_errors_are_one_line_exit_2_no_output to run first (same session)")
    table = render_error_table(observed + RUN_FAULTS)
    text = ERRORS_DOC.read_text()
    head, _, rest = text.partition(ERR_START)
    current = ERR_START + rest.partition(ERR_END)[0] + ERR_END if rest else ""
    if os.environ.get("SMATCH_UPDATE_DOCS") == "1":
        ERRORS_DOC.write_text(head + table + rest.partition(ERR_END)[2])
        return
    fix = 'SMATCH_UPDATE_DOCS=1 pytest tests/cli/test_cli.py -k "user_errors or docs_errors"'
    assert current == table, f"docs/errors.md is stale: {fix}"
