"""The released training recipe (issue 13): presets against the released table, fp32 by default."""

from __future__ import annotations

import json
import types

import pytest

from simplematch.cli.app import main
from simplematch.config import PAPER_TEXT_DIFFERS, PRESETS, resolve_config

# The authors' released configs, typed from issue 13 independently of simplematch/config.py:
# preset -> (img, batch, epochs, lr, StepLR step in iterations, gamma, dataset)
RELEASED = {
    "dinov2_b14_252_spair": (252, 8, 10, 6e-4, 800, 0.95, "spair"),
    "dinov2_b14_448_spair": (448, 8, 10, 6e-4, 800, 0.95, "spair"),
    "dinov2_b14_252_pfpascal": (252, 16, 100, 1e-4, 200, 0.95, "pfpascal"),
    "dinov2_b14_448_pfpascal": (448, 8, 100, 1e-4, 200, 0.95, "pfpascal"),
    "dinov2_b14_448_ap10k": (448, 8, 10, 6e-5, 2000, 0.95, "ap10k"),
    "ibot_b16_256_spair": (256, 8, 10, 1e-5, 800, 0.95, "spair"),
    "ibot_b16_256_pfpascal": (256, 8, 100, 1e-5, 100, 0.95, "pfpascal"),
    "resnet101_256_spair": (256, 16, 10, 3e-5, 800, 0.9, "spair"),
    "resnet101_256_pfpascal": (256, 16, 100, 3e-5, 200, 0.95, "pfpascal"),
}


def test_presets_are_the_released_table() -> None:
    assert set(PRESETS) - {"demo_cpu"} == set(RELEASED)
    for name, (img, batch, epochs, lr, step, gamma, dataset) in RELEASED.items():
        cfg = resolve_config(name)
        got = (cfg.img_size, cfg.batch_size, cfg.epochs, cfg.lr, cfg.step_size, cfg.gamma, cfg.dataset)
        assert got == (img, batch, epochs, lr, step, gamma, dataset), name
        assert cfg.amp is False, name  # released training is fp32
    # the paper's text is stated where it differs, and only for existing presets
    assert set(PAPER_TEXT_DIFFERS) <= set(RELEASED)
    assert {"dinov2_b14_448_ap10k", "ibot_b16_256_spair", "resnet101_256_spair"} <= set(PAPER_TEXT_DIFFERS)


def test_presets_json_prints_every_resolved_preset(capsys: pytest.CaptureFixture) -> None:
    assert main(["presets", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == set(PRESETS)
    for name, (img, batch, epochs, lr, step, gamma, _) in RELEASED.items():
        row = data[name]
        keys = ("img_size", "batch_size", "epochs", "lr", "step_size", "gamma")
        assert tuple(row[k] for k in keys) == (img, batch, epochs, lr, step, gamma), name
        assert row == resolve_config(name).to_dict()  # fully resolved: every config key present


@pytest.mark.parametrize(("flags", "want"), [([], False), (["--amp"], True)])
def test_train_is_fp32_unless_amp_is_explicit(
    flags: list[str], want: bool, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import simplematch.train

    seen = {}

    def fake_train(cfg, out, **kwargs):  # captures the resolved config; trains nothing
        seen["amp"] = cfg.amp
        return types.SimpleNamespace(status="interrupted", step=0)

    monkeypatch.setattr(simplematch.train, "train", fake_train)
    assert main(["train", "--preset", "demo_cpu", "--out", str(tmp_path / "run"), *flags]) == 130
    assert seen == {"amp": want}
