"""SimpleMatch model: shapes, fidelity details, LoRA, fine-tune modes, weight loading and checkpoints.

All models are tiny (timm kwargs depth=2, embed_dim=64) so the file runs in seconds on a shared CPU.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

from simplematch.checkpoint import load_checkpoint, load_model_weights, save_checkpoint
from simplematch.config import Config
from simplematch.errors import SimpleMatchError
from simplematch.model import LoRALinear, SimpleMatch, resample_pos_embed_released
from simplematch.weights import load_backbone_weights

TINY_VIT = dict(depth=2, embed_dim=64, num_heads=2)
DINO = "vit_small_patch14_dinov2"
IBOT = "vit_base_patch16_224"


def vit_cfg(**kw) -> Config:
    base = dict(backbone=DINO, img_size=56, finetune="lora", decoder_dim=None, dropout=0.0)
    base.update(kw)
    return Config(**base)


def tiny_vit(seed: int = 0, **kw) -> SimpleMatch:
    torch.manual_seed(seed)
    return SimpleMatch(vit_cfg(**kw), backbone_kwargs=TINY_VIT)


def resnet_cfg(**kw) -> Config:
    base = dict(
        backbone="resnet18", img_size=128, align_dim=64, multiscale=True, finetune="full", windows=[0, 9, 15]
    )
    base.update(kw)
    return Config(**base)


def timm_vit(name: str, img_size: int, seed: int = 7) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, img_size=img_size, num_classes=0, **TINY_VIT)


def randomize_bn(model: torch.nn.Module) -> None:
    """Non-trivial BN statistics so eval-mode outputs depend on them (round trips must carry them)."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


# ---------------------------------------------------------------------------------------------------------
# shapes
# ---------------------------------------------------------------------------------------------------------


def test_vit_decoder_shapes_252():
    torch.manual_seed(0)
    cfg = vit_cfg(img_size=252, multiscale=True, decoder_dim=16)
    model = SimpleMatch(cfg, backbone_kwargs=dict(depth=1, embed_dim=32, num_heads=2)).eval()
    maps = model.feature_maps(torch.rand(1, 3, 252, 252))
    assert [tuple(m.shape) for m in maps] == [(1, 16, 18, 18), (1, 16, 36, 36), (1, 16, 63, 63)]
    assert isinstance(model.decoder.input_proj, torch.nn.Conv2d)  # 32 -> 16 needs an input projection


def test_vit_single_head_and_encode_unit_norm():
    model = tiny_vit().eval()
    maps = model.feature_maps(torch.rand(2, 3, 56, 56))
    assert [tuple(m.shape) for m in maps] == [(2, 64, 14, 14)]
    assert isinstance(model.decoder.input_proj, torch.nn.Identity)
    enc = model.encode(torch.rand(2, 3, 56, 56))
    assert enc.shape == (2, 64, 14, 14)
    torch.testing.assert_close(enc.norm(dim=1), torch.ones(2, 14, 14), atol=1e-5, rtol=0)


def test_resnet_decoder_shapes_128():
    torch.manual_seed(0)
    model = SimpleMatch(resnet_cfg()).eval()
    maps = model.feature_maps(torch.rand(1, 3, 128, 128))
    assert [tuple(m.shape) for m in maps] == [(1, 64, 8, 8), (1, 64, 16, 16), (1, 64, 32, 32)]
    # resnet18 widths 64/128/256/512 with align_dim 64: level 1 already has 64 channels -> Identity.
    kinds = [type(a).__name__ for a in model.decoder.aligns]
    assert kinds == ["Identity", "Conv2d", "Conv2d", "Conv2d"]
    preds = model(torch.rand(1, 3, 128, 128), torch.rand(1, 3, 128, 128), torch.rand(1, 4, 2) * 128)
    assert len(preds) == 3 and all(p.shape == (1, 4, 2) for p in preds)


def test_normalisation_inside_model_not_in_state_dict():
    model = tiny_vit()
    assert "pixel_mean" not in model.state_dict() and "pixel_std" not in model.state_dict()
    torch.testing.assert_close(model.pixel_mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))


# ---------------------------------------------------------------------------------------------------------
# fidelity: pre-norm tokens, pos-embed resampling
# ---------------------------------------------------------------------------------------------------------


def test_encoder_uses_last_block_tokens_without_final_norm():
    model = tiny_vit(finetune="full").eval()
    vit = model.encoder.vit
    x = torch.rand(2, 3, 56, 56)
    with torch.no_grad():
        got = model.encoder(x)
        tokens = vit._pos_embed(vit.patch_embed(x))
        for blk in vit.blocks:
            tokens = blk(tokens)
        patch = tokens[:, vit.num_prefix_tokens :]  # cls dropped
        want = patch.reshape(2, 4, 4, 64).permute(0, 3, 1, 2)
        normed = F.layer_norm(patch, (64,)).reshape(2, 4, 4, 64).permute(0, 3, 1, 2)
    torch.testing.assert_close(got, want)
    assert (got - normed).abs().max() > 1e-2  # would fail if the final LayerNorm were applied
    assert isinstance(vit.norm, torch.nn.Identity) and not any(
        k.startswith("norm.") for k in vit.state_dict()
    )


@pytest.mark.parametrize("n0,grid", [(37, 18), (37, 32), (14, 16), (5, 4)])
def test_resample_pos_embed_matches_released_formula(n0: int, grid: int):
    torch.manual_seed(0)
    table = torch.randn(1, 1 + n0 * n0, 8)
    got = resample_pos_embed_released(table, grid)
    patch = table[:, 1:].reshape(1, n0, n0, 8).permute(0, 3, 1, 2)
    s = (grid + 0.1) / n0
    want = F.interpolate(patch, scale_factor=(s, s), mode="bicubic", align_corners=False)
    want = want.permute(0, 2, 3, 1).reshape(1, grid * grid, 8)
    assert got.shape == (1, 1 + grid * grid, 8)
    torch.testing.assert_close(got[:, :1], table[:, :1], rtol=0, atol=0)  # cls entry kept apart
    torch.testing.assert_close(got[:, 1:], want, rtol=0, atol=0)
    # and differs from timm's size= + antialias path, which the released code does not use
    from timm.layers import resample_abs_pos_embed

    timm_way = resample_abs_pos_embed(table, (grid, grid), num_prefix_tokens=1)
    assert (timm_way - got).abs().max() > 1e-4


def test_resample_pos_embed_same_grid_is_identity():
    table = torch.randn(1, 1 + 16, 4)
    assert resample_pos_embed_released(table, 4) is table


# ---------------------------------------------------------------------------------------------------------
# LoRA and fine-tune modes
# ---------------------------------------------------------------------------------------------------------


def test_lora_init_is_identity_and_layout():
    lora = tiny_vit(seed=3, finetune="lora").eval()
    plain = tiny_vit(seed=3, finetune="frozen").eval()
    sd = {k: v for k, v in lora.state_dict().items() if "lora_" not in k}
    plain.load_state_dict(sd, strict=True)
    x = torch.rand(1, 3, 56, 56)
    torch.testing.assert_close(lora.encode(x), plain.encode(x), rtol=0, atol=0)
    # loralib layout: last half of 2 blocks = block 1 only, A (r, in), B (out, r), scale alpha/r = 1/16
    keys = sorted(k for k in lora.state_dict() if "lora_" in k)
    assert keys == ["encoder.vit.blocks.1.mlp.fc2.lora_A", "encoder.vit.blocks.1.mlp.fc2.lora_B"]
    fc2 = lora.encoder.vit.blocks[1].mlp.fc2
    assert isinstance(fc2, LoRALinear) and fc2.scaling == pytest.approx(1 / 16)
    assert fc2.lora_A.shape == (16, 256) and fc2.lora_B.shape == (64, 16)
    assert fc2.lora_A.abs().sum() > 0 and fc2.lora_B.abs().sum() == 0


def test_merge_lora_is_exact():
    model = tiny_vit(seed=4, finetune="lora", lora_blocks="all").eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.normal_(0, 0.5)
    x = torch.rand(2, 3, 56, 56)
    before = model.encode(x)
    model.merge_lora()
    after = model.encode(x)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert not any("lora_" in k for k in model.state_dict())
    assert type(model.encoder.vit.blocks[0].mlp.fc2) is torch.nn.Linear
    assert (before - after).abs().max() < 1e-6
    with pytest.raises(SimpleMatchError, match="merge_lora"):
        save_checkpoint(model, model.cfg, Path("/nonexistent-never-written"))


@pytest.mark.parametrize("mode", ["frozen", "lora", "full"])
def test_trainable_parameter_sets(mode: str):
    model = tiny_vit(finetune=mode)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    decoder = {n for n, _ in model.named_parameters() if n.startswith("decoder.")}
    encoder = {n for n, _ in model.named_parameters() if n.startswith("encoder.")}
    lora = {n for n in encoder if "lora_A" in n or "lora_B" in n}
    assert decoder and decoder <= trainable
    if mode == "frozen":
        assert trainable == decoder
    elif mode == "lora":
        assert lora and trainable == decoder | lora
    else:
        assert trainable == decoder | encoder and not lora


def test_lora_on_resnet_is_a_user_error():
    with pytest.raises(SimpleMatchError, match="ViT"):
        SimpleMatch(resnet_cfg(finetune="lora"))


def test_frozen_resnet_keeps_bn_in_eval():
    model = SimpleMatch(resnet_cfg(finetune="frozen")).train()
    assert not model.encoder.training and model.decoder.training


def test_forward_gradients_flow():
    model = tiny_vit(finetune="lora", multiscale=True, dropout=0.3).train()
    with torch.no_grad():  # non-zero B so the gradient of A is non-zero too
        model.encoder.vit.blocks[1].mlp.fc2.lora_B.normal_(0, 0.1)
    src, trg = torch.rand(2, 3, 56, 56), torch.rand(2, 3, 56, 56)
    kps = torch.rand(2, 5, 2) * 56
    preds = model(src, trg, kps)
    assert [p.shape for p in preds] == [(2, 5, 2)] * 3
    loss = sum((p - kps).norm(dim=-1).mean() for p in preds)
    loss.backward()
    fc2 = model.encoder.vit.blocks[1].mlp.fc2
    assert fc2.lora_A.grad is not None and fc2.lora_A.grad.abs().sum() > 0
    assert fc2.lora_B.grad is not None and fc2.lora_B.grad.abs().sum() > 0
    for name in (
        "up1.weight",
        "refine1.block1.0.weight",
        "head_fine.weight",
        "head_coarse.weight",
        "head_mid.weight",
    ):
        grad = model.decoder.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert model.encoder.vit.patch_embed.proj.weight.grad is None  # frozen under LoRA


def test_forward_fine_head_equals_predict_in_eval():
    model = tiny_vit(multiscale=True).eval()
    randomize_bn(model)
    src, trg = torch.rand(2, 3, 56, 56), torch.rand(2, 3, 56, 56)
    kps = torch.rand(2, 6, 2) * 56
    with torch.no_grad():
        fine = model(src, trg, kps)[-1]
    pred, cos, mass, second, cycle = model.predict(src, trg, kps)
    torch.testing.assert_close(pred, fine, atol=1e-4, rtol=0)
    assert cos.shape == mass.shape == second.shape == cycle.shape == (2, 6)
    assert bool((mass > 0).all() and (mass <= 1).all()) and bool((cycle >= 0).all())
    assert not model.training


# ---------------------------------------------------------------------------------------------------------
# our checkpoints
# ---------------------------------------------------------------------------------------------------------


def test_checkpoint_round_trip_identical(tmp_path: Path):
    model = tiny_vit(seed=9, finetune="lora", multiscale=True).eval()
    randomize_bn(model)
    with torch.no_grad():
        model.encoder.vit.blocks[1].mlp.fc2.lora_B.normal_()
    weights = save_checkpoint(model, model.cfg, tmp_path / "run", extra={"step": 5})
    assert weights.name == "model.safetensors" and (tmp_path / "run" / "config.json").is_file()
    loaded, cfg = load_checkpoint(tmp_path / "run")
    assert cfg == model.cfg and not loaded.training
    x = torch.rand(2, 3, 56, 56)
    torch.testing.assert_close(loaded.encode(x), model.encode(x), rtol=0, atol=0)
    # the file alone also works, and train's resume path loads into a freshly built model
    loaded2, _ = load_checkpoint(weights)
    fresh = tiny_vit(seed=1, finetune="lora", multiscale=True).eval()
    meta = load_model_weights(fresh, weights)
    assert json.loads(meta["extra"]) == {"step": 5}
    for other in (loaded2, fresh):
        torch.testing.assert_close(other.encode(x), model.encode(x), rtol=0, atol=0)


def test_checkpoint_does_not_need_pretrained_file(tmp_path: Path):
    pre = tmp_path / "pre.pth"
    torch.save(timm_vit(DINO, 56).state_dict(), pre)
    model = tiny_vit(weights=str(pre))
    load_backbone_weights(model, pre)
    save_checkpoint(model, model.cfg, tmp_path / "run")
    pre.unlink()
    loaded, cfg = load_checkpoint(tmp_path / "run")
    assert cfg.weights == str(pre)  # provenance kept in config.json, file not needed
    x = torch.rand(1, 3, 56, 56)
    torch.testing.assert_close(loaded.encode(x), model.eval().encode(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    "change,match",
    [
        ({"img_size": 84}, "pos_embed"),
        ({"backbone": IBOT, "img_size": 64}, "missing|unexpected|shape"),
        ({"finetune": "full"}, "unexpected: .*lora_A"),
        ({"multiscale": True}, "missing: .*head_coarse"),
    ],
)
def test_incompatible_checkpoint(tmp_path: Path, change: dict, match: str):
    model = tiny_vit()
    save_checkpoint(model, model.cfg, tmp_path)
    dataclasses.replace(model.cfg, **change).save(tmp_path / "config.json")
    with pytest.raises(SimpleMatchError, match=match) as info:
        load_checkpoint(tmp_path)
    assert "Fix:" in str(info.value)


def test_missing_and_corrupt_checkpoint(tmp_path: Path):
    with pytest.raises(SimpleMatchError, match="not found"):
        load_checkpoint(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SimpleMatchError, match="missing"):
        load_checkpoint(tmp_path / "empty")
    model = tiny_vit()
    weights = save_checkpoint(model, model.cfg, tmp_path / "run")
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(SimpleMatchError, match="corrupt|truncated"):
        load_checkpoint(tmp_path / "run")
