"""The shared validation rules (simplematch/validate.py) and what `--force` really does.

The CLI error matrix (tests/cli/test_cli.py) proves every refused case leaves the workspace byte-identical;
these tests pin the rules themselves (each assertion fails if its rule is dropped or loosened) and the
accepted paths: `--force` replaces a run without leaving a stale checkpoint behind, EXIF orientation is
honoured for user images and not for benchmark images.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simplematch import resources, validate
from simplematch.errors import SimpleMatchError


# --- output files ------------------------------------------------------------------------------------------
def test_output_file_refuses_inputs_however_spelled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    src = tmp_path / "sub" / "src.png"
    src.write_bytes(b"x")
    (tmp_path / "link.png").symlink_to(src)
    for spelled in ("sub/src.png", "sub/../sub/src.png", str(src), "link.png"):
        with pytest.raises(SimpleMatchError, match="is one of this command's inputs"):
            validate.output_file(spelled, "--viz", inputs=[src], force=True)
    assert validate.output_file("sub/other.png", "--viz", inputs=[src]) == Path("sub/other.png")


def test_output_file_existing_needs_force(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    out.write_text("{}")
    with pytest.raises(SimpleMatchError, match="already exists. Fix: pass --force"):
        validate.output_file(out, "--out")
    assert validate.output_file(out, "--out", force=True) == out
    assert validate.output_file(None, "--out") is None


def test_output_file_suffix_folder_and_unwritable_parent(tmp_path: Path) -> None:
    with pytest.raises(SimpleMatchError, match=r"must end in \.json"):
        validate.output_file(tmp_path / "r.txt", "--out", suffixes=(".json",))
    with pytest.raises(SimpleMatchError, match="is a folder"):
        validate.output_file(tmp_path, "--out")
    (tmp_path / "afile").write_text("")
    with pytest.raises(SimpleMatchError, match="is not a folder"):
        validate.output_file(tmp_path / "afile" / "r.json", "--out")
    assert not (tmp_path / "new").exists()
    validate.output_file(tmp_path / "new" / "deep" / "r.json", "--out")  # creatable later
    assert not (tmp_path / "new").exists(), "validation must create nothing"


def test_writing_inside_an_input_folder_over_an_existing_file_is_refused(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    with pytest.raises(SimpleMatchError, match="inputs"):
        validate.output_file(ckpt / "config.json", "--json", inputs=[ckpt], force=True)
    assert validate.output_file(ckpt / "eval.json", "--json", inputs=[ckpt]) == ckpt / "eval.json"


def test_output_dir_rules(tmp_path: Path) -> None:
    assert validate.output_dir(tmp_path / "fresh", "--out") == tmp_path / "fresh"
    (tmp_path / "empty").mkdir()
    validate.output_dir(tmp_path / "empty", "--out")  # an empty folder is not a run
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    with pytest.raises(SimpleMatchError, match=r"not empty.*--force.*--resume"):
        validate.output_dir(tmp_path / "run", "--out", what="run")
    validate.output_dir(tmp_path / "run", "--out", force=True)
    weights = tmp_path / "run" / "w.pth"
    weights.write_bytes(b"")
    with pytest.raises(SimpleMatchError, match="holds this command's input"):
        validate.output_dir(tmp_path / "run", "--out", inputs=[weights], force=True)
    with pytest.raises(SimpleMatchError, match="is a file"):
        validate.output_dir(weights, "--out")


# --- numbers -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 0.0, -0.1, 1.0000001, 2, True, "0.1"])
def test_alphas_refuse_meaningless_thresholds(bad: object) -> None:
    with pytest.raises(SimpleMatchError):
        validate.alphas([0.1, bad], (0.1,))


def test_alphas_accept_the_unit_interval_and_default() -> None:
    assert validate.alphas(None, (0.05, 0.1)) == (0.05, 0.1)
    assert validate.alphas([1e-6, 1.0], ()) == (1e-6, 1.0)
    with pytest.raises(SimpleMatchError, match="repeats"):
        validate.alphas([0.1, 0.1], ())


def test_number_bounds_are_inclusive_unless_open() -> None:
    assert validate.number(0, "--x", low=0) == 0
    with pytest.raises(SimpleMatchError, match="> 0"):
        validate.number(0, "--x", low=0, low_open=True)
    assert validate.number(5, "--x", high=5) == 5
    with pytest.raises(SimpleMatchError, match="< 5"):
        validate.number(5, "--x", high=5, high_open=True)
    with pytest.raises(SimpleMatchError, match="an integer"):
        validate.number(1.5, "--x", integer=True)


# --- memory ------------------------------------------------------------------------------------------------
def test_memory_lower_bound_counts_inputs_and_fine_maps() -> None:
    from tests.helpers import tiny_config

    cfg = tiny_config()
    s, c = cfg.img_size, cfg.align_dim  # ResNet: the fine map has align_dim channels (decoder_dim None)
    expected_infer = 2 * 4 * (3 * s * s + c * (s // 4) ** 2) * 4
    assert validate.memory_lower_bound(cfg, 4, training=False) == expected_infer
    assert validate.memory_lower_bound(cfg, 4, training=True) == 2 * expected_infer


def test_check_memory_refuses_what_cannot_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.helpers import tiny_config

    cfg = tiny_config()
    monkeypatch.setattr(resources, "available_memory", lambda device: (10**6, "RAM (1 GiB)"))
    with pytest.raises(SimpleMatchError, match=r"needs at least .* GiB"):
        validate.check_memory(cfg, 64, "cpu", training=True)
    monkeypatch.setattr(resources, "available_memory", lambda device: (10**12, "RAM (1 GiB)"))
    validate.check_memory(cfg, 64, "cpu", training=True)


# --- --force replaces a run completely ---------------------------------------------------------------------
def test_train_force_replaces_the_run_without_stale_checkpoints(tmp_path: Path) -> None:
    from simplematch.cli.app import main
    from tests.helpers import write_tiny_config

    cfg = write_tiny_config(tmp_path / "tiny.json")
    run = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--max-steps", "2", "--out", str(run)]) == 0
    stale = run / "ckpt-00000099"
    stale.mkdir()
    (stale / "marker").write_text("from an older run")
    (run / "last.json").write_text(json.dumps({"checkpoint": stale.name, "step": 99}))
    before = (run / "config.json").read_bytes()
    assert main(["train", "--config", str(cfg), "--max-steps", "2", "--out", str(run)]) == 2
    assert (run / "config.json").read_bytes() == before and stale.is_dir(), "refusal changed the run"
    assert main(["train", "--config", str(cfg), "--max-steps", "1", "--out", str(run), "--force"]) == 0
    assert not stale.exists(), "--force left the older run's checkpoint behind"
    assert json.loads((run / "last.json").read_text())["step"] == 1


# --- images ------------------------------------------------------------------------------------------------
def _exif_rotated(path: Path) -> np.ndarray:
    """A 40x60 (h x w) picture with EXIF orientation 6 (rotate 90 degrees clockwise to display)."""
    arr = np.zeros((40, 60, 3), np.uint8)
    arr[:5, :10] = 255  # a bright block at the stored top-left
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(path, exif=exif)
    return arr


def test_user_images_honour_exif_orientation_benchmarks_keep_the_stored_frame(tmp_path: Path) -> None:
    from simplematch.data.records import load_pair_image
    from simplematch.image import load_image

    path = tmp_path / "phone.png"
    stored = _exif_rotated(path)
    shown = load_image(path)
    assert shown.shape == (60, 40, 3)
    # Orientation 6 displays the stored top-left at the top-right.
    np.testing.assert_array_equal(shown, np.rot90(stored, k=-1))
    assert load_pair_image(path).shape == (40, 60, 3)


def test_infer_keypoint_bounds_use_the_displayed_frame(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from simplematch.cli.app import main
    from tests.helpers import make_onnx

    _exif_rotated(tmp_path / "phone.png")
    make_onnx(tmp_path / "m.onnx")
    (tmp_path / "inside.json").write_text("[[30, 50]]")  # inside 40 x 60 (displayed), outside 60 x 40
    (tmp_path / "outside.json").write_text("[[50, 30]]")  # inside the stored frame only
    argv = [
        "infer",
        str(tmp_path / "phone.png"),
        str(tmp_path / "phone.png"),
        "--model",
        str(tmp_path / "m.onnx"),
    ]
    assert main([*argv, "--kps", str(tmp_path / "inside.json")]) == 0
    capsys.readouterr()
    assert main([*argv, "--kps", str(tmp_path / "outside.json")]) == 2
    assert "40x60 image" in capsys.readouterr().err


def test_decompression_bomb_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from simplematch.image import load_image

    Image.new("L", (100, 100)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 10000 px > 2 x limit: Pillow raises
    with pytest.raises(SimpleMatchError, match="too large to decode safely") as err:
        load_image(tmp_path / "big.png")
    assert "\n" not in str(err.value)
