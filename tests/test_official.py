"""Official ``best_model.pth`` import/export.

Official-layout state dicts are generated from the names and shapes of
``/work/shared/reference/official-checkpoint-layout.md`` (not from our modules), parametrised by width/depth:
tiny ones run forward; the full-size ones are built on the ``meta`` device and checked for key counts,
element counts and the complete key/shape accounting, without allocating memory.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

from simplematch.config import Config
from simplematch.errors import SimpleMatchError
from simplematch.model import SimpleMatch, resample_pos_embed_released
from simplematch.official import (
    RESNET_PREFIX,
    VIT_PREFIX,
    convert_official,
    load_official_state,
    official_config,
    released_img_sizes,
    to_official,
)
from simplematch.weights import load_backbone_weights

TINY_VIT = dict(depth=2, embed_dim=64, num_heads=2)
TINY_RESNET = dict(layers=(1, 1, 1, 1), channels=(8, 16, 32, 64))  # bottleneck outputs 32/64/128/256


class _Maker:
    """Random (or meta) tensors; BN variances positive, ``num_batches_tracked`` an int64 scalar."""

    def __init__(self, device: str = "cpu", seed: int = 0) -> None:
        self.device = device
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, *shape: int, kind: str = "w") -> torch.Tensor:
        if kind == "count":
            return torch.tensor(7, dtype=torch.int64, device=self.device)
        if self.device == "meta":
            return torch.empty(shape, device="meta")
        t = torch.randn(shape, generator=self.gen)
        if kind == "var":
            t = t.abs() + 0.5
        elif kind == "w":
            t = t * 0.05
        return t


def _bn(sd: dict, name: str, c: int, mk: _Maker, buffers: dict | None = None) -> None:
    sd[f"{name}.weight"] = mk(c, kind="var")
    sd[f"{name}.bias"] = mk(c)
    dst = sd if buffers is None else buffers
    dst[f"{name}.running_mean"] = mk(c)
    dst[f"{name}.running_var"] = mk(c, kind="var")
    dst[f"{name}.num_batches_tracked"] = mk(kind="count")


def _conv_refine(sd: dict, name: str, c: int, mk: _Maker, buffers: dict | None) -> None:
    for block in ("block1", "block2"):
        sd[f"{name}.{block}.0.weight"] = mk(c, c, 3, 3)
        sd[f"{name}.{block}.0.bias"] = mk(c)
        _bn(sd, f"{name}.{block}.1", c, mk, buffers)


def official_vit(family: str, width: int = 768, depth: int = 12, rank: int = 16, device: str = "cpu") -> dict:
    """Sections 2a/2b/4a: DINOv2 (LoRA + decoder) or iBOT (full backbone + decoder); params, then buffers."""
    mk = _Maker(device)
    sd: dict[str, torch.Tensor] = {}
    if family == "dinov2_b14":
        for n in range(depth // 2, depth):
            sd[f"{VIT_PREFIX}blocks.{n}.mlp.fc2.lora_A"] = mk(rank, 4 * width)
            sd[f"{VIT_PREFIX}blocks.{n}.mlp.fc2.lora_B"] = mk(width, rank)
    else:
        p = VIT_PREFIX
        sd[p + "cls_token"], sd[p + "pos_embed"] = mk(1, 1, width), mk(1, 197, width)
        sd[p + "patch_embed.proj.weight"], sd[p + "patch_embed.proj.bias"] = mk(width, 3, 16, 16), mk(width)
        for n in range(depth):
            b = f"{p}blocks.{n}."
            sd[b + "norm1.weight"], sd[b + "norm1.bias"] = mk(width, kind="var"), mk(width)
            sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"] = mk(3 * width, width), mk(3 * width)
            sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"] = mk(width, width), mk(width)
            sd[b + "norm2.weight"], sd[b + "norm2.bias"] = mk(width, kind="var"), mk(width)
            sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"] = mk(4 * width, width), mk(4 * width)
            sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"] = mk(width, 4 * width), mk(width)
        sd[p + "norm.weight"], sd[p + "norm.bias"] = mk(width), mk(width)
        sd[p + "head.weight"], sd[p + "head.bias"] = mk(1000, width), mk(1000)
    buffers: dict[str, torch.Tensor] = {}
    for name in ("trans_conv1", "trans_conv2"):
        sd[f"{name}.weight"], sd[f"{name}.bias"] = mk(width, width, 2, 2), mk(width)
    _conv_refine(sd, "conv_refine1", width, mk, buffers)
    _conv_refine(sd, "conv_refine2", width, mk, buffers)
    sd["proj.weight"], sd["proj.bias"] = mk(width, width), mk(width)
    return {**sd, **buffers}


def official_resnet(
    layers=(3, 4, 23, 3), planes=(64, 128, 256, 512), align: int = 512, device: str = "cpu"
) -> dict[str, torch.Tensor]:
    """Section 2c/4b: torchvision-layout bottleneck ResNet + aligns.{0,2,3} + three-level decoder."""
    mk = _Maker(device)
    r = RESNET_PREFIX + "backbone."
    sd: dict[str, torch.Tensor] = {r + "conv1.weight": mk(64, 3, 7, 7)}
    _bn(sd, r + "bn1", 64, mk)
    inplanes = 64
    for li, (n_blocks, w) in enumerate(zip(layers, planes, strict=True), start=1):
        for i in range(n_blocks):
            b = f"{r}layer{li}.{i}."
            cin = inplanes if i == 0 else 4 * w
            sd[b + "conv1.weight"] = mk(w, cin, 1, 1)
            _bn(sd, b + "bn1", w, mk)
            sd[b + "conv2.weight"] = mk(w, w, 3, 3)
            _bn(sd, b + "bn2", w, mk)
            sd[b + "conv3.weight"] = mk(4 * w, w, 1, 1)
            _bn(sd, b + "bn3", 4 * w, mk)
            if i == 0:
                sd[b + "downsample.0.weight"] = mk(4 * w, cin, 1, 1)
                _bn(sd, b + "downsample.1", 4 * w, mk)
        inplanes = 4 * w
    sd[r + "fc.weight"], sd[r + "fc.bias"] = mk(1000, 4 * planes[-1]), mk(1000)
    for i, c in ((0, 4 * planes[0]), (2, 4 * planes[2]), (3, 4 * planes[3])):
        sd[f"{RESNET_PREFIX}aligns.{i}.weight"] = mk(align, c, 1, 1)
        sd[f"{RESNET_PREFIX}aligns.{i}.bias"] = mk(align)
    for name in ("trans_conv1", "trans_conv2"):
        sd[f"{name}.weight"], sd[f"{name}.bias"] = mk(align, align, 2, 2), mk(align)
    for name in ("conv_refine1", "conv_refine2", "conv_refine3"):
        _conv_refine(sd, name, align, mk, None)
    for name in ("proj1", "proj2", "proj3"):
        sd[f"{name}.weight"], sd[f"{name}.bias"] = mk(align, align), mk(align)
    return sd


def dinov2_pretrained_file(tmp_path: Path) -> Path:
    """A tiny DINOv2 backbone in the official ``dinov2_vit*14_pretrain.pth`` layout (37x37, mask_token)."""
    torch.manual_seed(11)
    vit = timm.create_model(
        "vit_small_patch14_dinov2", pretrained=False, img_size=518, num_classes=0, **TINY_VIT
    )
    sd = dict(vit.state_dict())
    with torch.no_grad():
        sd = {k: v + 0.05 * torch.randn_like(v) if k.endswith("gamma") else v for k, v in sd.items()}
    sd["mask_token"] = torch.zeros(1, 64)
    path = tmp_path / "dinov2_pretrain.pth"
    torch.save(sd, path)
    return path


def _save(tmp_path: Path, sd: dict, name: str = "best_model.pth") -> Path:
    path = tmp_path / name
    torch.save(sd, path)
    return path


# ---------------------------------------------------------------------------------------------------------
# full-size layout (meta device: shapes only)
# ---------------------------------------------------------------------------------------------------------

FULL = {
    # family: (generator, img_size, keys, elements, consumed, ignored-by-reason counts) from the reference
    "dinov2_b14": (lambda: official_vit("dinov2_b14", device="meta"), 252, 46, 26_928_388, 44, 2),
    "ibot_b16": (lambda: official_vit("ibot_b16", device="meta"), 256, 186, 113_127_404, 180, 6),
    "resnet101": (lambda: official_resnet(device="meta"), 256, 684, 63_417_366, 682, 2),
}


@pytest.mark.parametrize("family", list(FULL))
def test_full_size_layout_accounting_and_export(family: str):
    gen, img_size, n_keys, n_elems, n_consumed, n_ignored = FULL[family]
    official = gen()
    assert len(official) == n_keys and sum(v.numel() for v in official.values()) == n_elems
    cfg = official_config(family, img_size)
    with torch.device("meta"):
        model = SimpleMatch(cfg)
    report = load_official_state(model, official, family)
    assert (report["consumed"], report["ignored"]) == (n_consumed, n_ignored)
    assert report["consumed"] + report["ignored"] == n_keys
    if family == "dinov2_b14":
        # 175 official backbone tensors minus mask_token and the unused final norm.{weight,bias}
        assert report["from_backbone_weights"] == 172
    exported = to_official(model, cfg)
    assert list(exported) == list(official)  # same names in the same order
    assert {k: tuple(v.shape) for k, v in exported.items()} == {
        k: tuple(v.shape) for k, v in official.items()
    }
    assert all(exported[k].dtype == official[k].dtype for k in official)


def test_full_size_named_shapes():
    dino = official_vit("dinov2_b14", device="meta")
    assert dino[VIT_PREFIX + "blocks.6.mlp.fc2.lora_A"].shape == (16, 3072)
    assert VIT_PREFIX + "blocks.5.mlp.fc2.lora_A" not in dino
    res = official_resnet(device="meta")
    assert res[RESNET_PREFIX + "aligns.2.weight"].shape == (512, 1024, 1, 1)
    assert RESNET_PREFIX + "aligns.1.weight" not in res
    assert res[RESNET_PREFIX + "backbone.layer3.22.conv1.weight"].shape == (256, 1024, 1, 1)


# ---------------------------------------------------------------------------------------------------------
# tiny models: conversion, fidelity of the mapping, round trips
# ---------------------------------------------------------------------------------------------------------


def _reference_vit_fine(
    official: dict, backbone: dict, img: torch.Tensor, patch: int, grid: int
) -> torch.Tensor:
    """The released forward written from their names: LoRA folded at 1/16, +0.1 pos interpolation, no final
    norm, decoder with trans_conv1/conv_refine/proj (Linear on channels). Independent of our module names."""
    vit = timm.create_model(
        "vit_small_patch14_dinov2", pretrained=False, img_size=518, num_classes=0, **TINY_VIT
    )
    sd = {k: v for k, v in backbone.items() if k != "mask_token"}
    for n in (1,):
        a, b = (
            official[f"{VIT_PREFIX}blocks.{n}.mlp.fc2.lora_A"],
            official[f"{VIT_PREFIX}blocks.{n}.mlp.fc2.lora_B"],
        )
        sd[f"blocks.{n}.mlp.fc2.weight"] = sd[f"blocks.{n}.mlp.fc2.weight"] + b @ a / 16
    vit.load_state_dict(sd)
    vit.eval()
    x = (img - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]
    ).view(1, 3, 1, 1)
    tokens = vit.patch_embed.proj(x).flatten(2).transpose(1, 2)
    pe = sd["pos_embed"]
    table = pe[:, 1:].reshape(1, 37, 37, -1).permute(0, 3, 1, 2)
    s = (grid + 0.1) / 37
    table = F.interpolate(table, scale_factor=(s, s), mode="bicubic", align_corners=False)
    pe = torch.cat((pe[:, :1], table.flatten(2).transpose(1, 2)), dim=1)
    tokens = torch.cat((sd["cls_token"].expand(1, -1, -1), tokens), dim=1) + pe
    for blk in vit.blocks:
        tokens = blk(tokens)
    f = tokens[:, 1:].transpose(1, 2).reshape(1, -1, grid, grid)

    def refine(f: torch.Tensor, name: str) -> torch.Tensor:
        for blk in ("block1", "block2"):
            p = f"{name}.{blk}"
            y = F.conv2d(f, official[f"{p}.0.weight"], official[f"{p}.0.bias"], padding=1)
            y = F.batch_norm(
                y,
                official[f"{p}.1.running_mean"],
                official[f"{p}.1.running_var"],
                official[f"{p}.1.weight"],
                official[f"{p}.1.bias"],
                eps=1e-5,
            )
            f = f + F.relu(y)
        return f

    up = F.conv_transpose2d(f, official["trans_conv1.weight"], official["trans_conv1.bias"], stride=2)
    f = refine(F.interpolate(f, scale_factor=2, mode="bilinear", align_corners=False) + up, "conv_refine1")
    f = refine(
        F.interpolate(f, size=(img.shape[-1] // 4,) * 2, mode="bilinear", align_corners=False), "conv_refine2"
    )
    return F.linear(f.permute(0, 2, 3, 1), official["proj.weight"], official["proj.bias"]).permute(0, 3, 1, 2)


def test_dinov2_convert_matches_released_forward(tmp_path: Path):
    official = official_vit("dinov2_b14", width=64, depth=2)
    path = _save(tmp_path, official)
    backbone_path = dinov2_pretrained_file(tmp_path)
    model, cfg, report = convert_official(path, "dinov2_b14", 252, backbone_path, backbone_kwargs=TINY_VIT)
    assert cfg.backbone == "vit_base_patch14_dinov2" and cfg.finetune == "lora" and cfg.img_size == 252
    assert cfg.windows == [0, 15, 45] and cfg.weights == str(backbone_path)
    assert (
        report["consumed"] == 2 + 32 and report["ignored"] == 2
    )  # 2 LoRA + 22 params + 12 buffers - trans_conv2
    assert set(report["ignored_by_reason"]) == {
        "ViT trans_conv2 is defined but never used in the released forward"
    }
    assert report["backbone_weights"]["loaded"] == 4 + 2 * 14  # 172 at ViT-B (12 blocks); final norm pruned
    assert set(report["backbone_weights"]["ignored"]) == {"mask_token", "norm.weight", "norm.bias"}
    img = torch.rand(1, 3, 252, 252)
    with torch.no_grad():
        ours = model.feature_maps(img)[-1]
        ref = _reference_vit_fine(official, torch.load(backbone_path, weights_only=True), img, 14, 18)
    assert ours.shape == (1, 64, 63, 63)
    assert (ours - ref).abs().max() < 1e-4 * ref.abs().max()


def test_convert_ibot_round_trip(tmp_path: Path):
    official = official_vit("ibot_b16", width=64, depth=2)
    model, cfg, report = convert_official(
        _save(tmp_path, official), "ibot_b16", 256, backbone_kwargs=TINY_VIT
    )
    assert cfg.finetune == "full" and report["consumed"] + report["ignored"] == len(official)
    assert report["ignored_by_reason"] == {
        "ViT trans_conv2 is defined but never used in the released forward": 2,
        "final LayerNorm unused: the decoder reads pre-norm tokens": 2,
        "iBOT classifier head, never trained and unused": 2,
    }
    want = resample_pos_embed_released(official[VIT_PREFIX + "pos_embed"], 16)
    torch.testing.assert_close(model.encoder.vit.pos_embed, want, rtol=0, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the 14x14 table is recovered exactly: no lossy-export warning
        back = to_official(model, cfg)
    assert list(back) == list(official)
    for k, v in official.items():
        if "trans_conv2" in k or ".norm." in k or ".head." in k:
            continue  # unused by their forward: written as placeholders
        torch.testing.assert_close(back[k], v, atol=2e-5, rtol=0, msg=k)
    model2, _, _ = convert_official(
        _save(tmp_path, back, "again.pth"), "ibot_b16", 256, backbone_kwargs=TINY_VIT
    )
    img = torch.rand(1, 3, 256, 256)
    diff = (model.encode(img) - model2.encode(img)).abs().max()
    assert diff < 1e-5, float(diff)


def test_convert_resnet_round_trip(tmp_path: Path):
    official = official_resnet(layers=(1, 1, 1, 1), planes=(8, 16, 32, 64), align=64)
    over = {"align_dim": 64}
    model, cfg, report = convert_official(
        _save(tmp_path, official), "resnet101", 128, backbone_kwargs=TINY_RESNET, overrides=over,
        any_img_size=True,
    )  # fmt: skip
    assert cfg.img_size_user_chosen
    assert cfg.multiscale and cfg.windows[-1] == 30 and report["ignored"] == 2
    assert report["ignored_by_reason"] == {"ResNet classifier, unused": 2}
    # mapping semantics: the released f4 path with official names, from our own backbone features
    img = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        l1 = model.encoder((img - model.pixel_mean) / model.pixel_std)[0]
        a0 = F.conv2d(
            l1, official[RESNET_PREFIX + "aligns.0.weight"], official[RESNET_PREFIX + "aligns.0.bias"]
        )
        torch.testing.assert_close(model.decoder.aligns[0](l1), a0)
    back = to_official(model, cfg, over)
    assert list(back) == list(official)
    for k, v in official.items():
        if not k.endswith("fc.weight") and not k.endswith("fc.bias"):
            torch.testing.assert_close(back[k], v, rtol=0, atol=0, msg=k)
    model2, _, _ = convert_official(
        _save(tmp_path, back, "again.pth"), "resnet101", 128, backbone_kwargs=TINY_RESNET, overrides=over,
        any_img_size=True,
    )  # fmt: skip
    kps = torch.rand(1, 5, 2) * 128
    trg = torch.rand(1, 3, 128, 128)
    torch.testing.assert_close(model2(img, trg, kps), model(img, trg, kps), rtol=0, atol=0)
    assert (model.encode(img) - model2.encode(img)).abs().max() == 0


def test_dinov2_round_trip_ours_official_ours(tmp_path: Path):
    backbone = dinov2_pretrained_file(tmp_path)
    cfg = official_config("dinov2_b14", 56, {"weights": str(backbone)})
    torch.manual_seed(2)
    ours = SimpleMatch(cfg, backbone_kwargs=TINY_VIT).eval()
    load_backbone_weights(ours, backbone)  # the frozen backbone the official file leaves out
    with torch.no_grad():
        ours.encoder.vit.blocks[1].mlp.fc2.lora_B.normal_()
        for m in ours.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 1.5)
    official = to_official(ours, cfg)
    assert len(official) == 2 + 22 + 12
    assert official["trans_conv2.weight"].abs().sum() == 0
    back, _, report = convert_official(
        _save(tmp_path, official), "dinov2_b14", 56, backbone, backbone_kwargs=TINY_VIT, any_img_size=True
    )
    assert report["consumed"] == 34
    img = torch.rand(2, 3, 56, 56)
    assert (ours.encode(img) - back.encode(img)).abs().max() == 0


# ---------------------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------------------


def test_dinov2_requires_backbone_weights(tmp_path: Path):
    path = _save(tmp_path, official_vit("dinov2_b14", width=64, depth=2))
    with pytest.raises(SimpleMatchError, match="backbone weights"):
        convert_official(path, "dinov2_b14", 252, backbone_kwargs=TINY_VIT)


def test_missing_truncated_and_unknown_family(tmp_path: Path):
    with pytest.raises(SimpleMatchError, match="not found"):
        convert_official(tmp_path / "best_model.pth", "resnet101", 256)
    good = _save(tmp_path, official_vit("ibot_b16", width=64, depth=2))
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(SimpleMatchError, match="truncated"):
        convert_official(bad, "ibot_b16", 256, backbone_kwargs=TINY_VIT)
    with pytest.raises(SimpleMatchError, match="unknown official family"):
        convert_official(good, "ibot_b14", 256)


def test_wrong_family_names_the_likely_one(tmp_path: Path):
    path = _save(tmp_path, official_vit("ibot_b16", width=64, depth=2))
    backbone = dinov2_pretrained_file(tmp_path)
    with pytest.raises(SimpleMatchError, match="look like family ibot_b16"):
        convert_official(path, "dinov2_b14", 252, backbone, backbone_kwargs=TINY_VIT)
    with pytest.raises(SimpleMatchError, match="look like family ibot_b16"):
        convert_official(path, "resnet101", 256, backbone_kwargs=TINY_RESNET, overrides={"align_dim": 64})


def test_extra_and_missing_keys_are_errors(tmp_path: Path):
    official = official_vit("ibot_b16", width=64, depth=2)
    extra = {**official, "conv_refine3.block1.0.weight": torch.zeros(1)}
    with pytest.raises(SimpleMatchError, match=r"conv_refine3\.block1\.0\.weight") as info:
        convert_official(_save(tmp_path, extra), "ibot_b16", 256, backbone_kwargs=TINY_VIT)
    assert "Fix:" in str(info.value)
    missing = {k: v for k, v in official.items() if k != "proj.bias"}
    with pytest.raises(SimpleMatchError, match=r"lacks 1 tensor.*decoder\.head_fine\.bias"):
        convert_official(_save(tmp_path, missing, "m.pth"), "ibot_b16", 256, backbone_kwargs=TINY_VIT)


def test_wrong_img_size_or_width_is_a_shape_error(tmp_path: Path):
    official = official_vit("ibot_b16", width=32, depth=2)  # width 32 file, model built with width 64
    with pytest.raises(SimpleMatchError, match="unexpected shapes"):
        convert_official(_save(tmp_path, official), "ibot_b16", 256, backbone_kwargs=TINY_VIT)


def test_to_official_refuses_unrepresentable_models():
    cfg = Config(backbone="resnet18", img_size=64, finetune="full", align_dim=32)
    with pytest.raises(SimpleMatchError, match="no official"):
        to_official(SimpleMatch(cfg), cfg)
    cfg = official_config("dinov2_b14", 56)
    model = SimpleMatch(cfg, backbone_kwargs=TINY_VIT)
    model.merge_lora()
    with pytest.raises(SimpleMatchError, match="LoRA"):
        to_official(model, cfg)
    cfg = official_config("ibot_b16", 64, {"multiscale": True})
    with pytest.raises(SimpleMatchError, match=r"multiscale=True \(released False\)"):
        to_official(SimpleMatch(cfg, backbone_kwargs=TINY_VIT), cfg)


# --------------------------------------------------------------------------------------------------------
# the `smatch convert` command: one-line errors, exit code 2, nothing written
# --------------------------------------------------------------------------------------------------------
def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from simplematch.cli.app import main

    rc = main(args)
    err = capsys.readouterr().err.strip()
    return rc, err


def test_cli_convert_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    good = _save(tmp_path, official_vit("ibot_b16", width=64, depth=2))
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:5000])
    out = tmp_path / "out"
    cases = {
        "missing file": (
            ["convert", str(tmp_path / "nope.pth"), "--family", "resnet101", "--img-size", "256"],
            "not found",
        ),
        "truncated file": (
            ["convert", str(truncated), "--family", "ibot_b16", "--img-size", "256"],
            "truncated",
        ),
        "dinov2 without backbone": (
            ["convert", str(good), "--family", "dinov2_b14", "--img-size", "252"],
            "backbone",
        ),
        "missing backbone file": (
            [
                "convert",
                str(good),
                "--family",
                "dinov2_b14",
                "--img-size",
                "252",
                "--backbone-weights",
                str(tmp_path / "no.pth"),
            ],
            "not found",
        ),
        "wrong family": (["convert", str(good), "--family", "resnet101", "--img-size", "256"], "ibot_b16"),
    }
    for name, (args, needle) in cases.items():
        rc, err = _cli([*args, "--out", str(out)], capsys)
        assert rc == 2, name
        assert len(err.splitlines()) == 1 and err.startswith("error: "), (name, err)
        assert needle in err, (name, err)
        assert "Traceback" not in err
        assert not out.exists(), name


def _resnet101_run(tmp_path: Path, **overrides) -> tuple[Path, Config]:
    """A full-size ResNet-101 of the released preset, random init, saved as our checkpoint folder."""
    from simplematch.checkpoint import save_checkpoint

    torch.manual_seed(0)
    cfg = official_config("resnet101", 256, overrides)
    model = SimpleMatch(cfg)
    with torch.no_grad():  # non-trivial BN statistics: a dropped or swapped buffer would show
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 1.5)
    save_checkpoint(model, cfg, tmp_path / "run")
    return tmp_path / "run", cfg


@pytest.mark.slow
def test_cli_resnet101_round_trip_and_img_size_rule(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """`convert --to-official` then `convert` (the command path) gives back the same weights and features;
    the import refuses a size no released config uses unless --any-img-size, which config.json records."""
    from simplematch.checkpoint import load_checkpoint, read_checkpoint

    run, cfg = _resnet101_run(tmp_path)
    theirs = tmp_path / "theirs.pth"
    rc, err = _cli(
        ["convert", str(run), "--family", "resnet101", "--to-official", "--out", str(theirs)], capsys
    )
    assert rc == 0, err
    assert len(torch.load(theirs, map_location="cpu", weights_only=True)) == 684  # the reference's count
    back = tmp_path / "back"
    rc, err = _cli(
        ["convert", str(theirs), "--family", "resnet101", "--img-size", "256", "--out", str(back)], capsys
    )
    assert rc == 0, err
    ours, _ = read_checkpoint(run / "model.safetensors")
    again, _ = read_checkpoint(back / "model.safetensors")
    assert list(ours) == list(again)
    assert all(torch.equal(ours[k], again[k]) for k in ours), [
        k for k in ours if not torch.equal(ours[k], again[k])
    ]
    model, _ = load_checkpoint(run)
    model2, cfg2 = load_checkpoint(back)
    assert cfg2 == cfg and not cfg2.img_size_user_chosen
    img = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        assert torch.equal(model.eval().encode(img), model2.eval().encode(img))
    # a size the released ResNet-101 configs do not use: one line, exit 2, nothing written
    other = tmp_path / "at128"
    rc, err = _cli(
        ["convert", str(theirs), "--family", "resnet101", "--img-size", "128", "--out", str(other)], capsys
    )
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "trained at 256" in err and "--any-img-size" in err, err
    assert not other.exists()
    args = ["convert", str(theirs), "--family", "resnet101", "--img-size", "128", "--out", str(other)]
    rc, err = _cli([*args, "--any-img-size"], capsys)
    assert rc == 0, err
    recorded = Config.load(other / "config.json")
    assert recorded.img_size == 128 and recorded.img_size_user_chosen
    rc, err = _cli(["convert", str(run), "--family", "resnet101", "--to-official", "--any-img-size",
                    "--out", str(tmp_path / "x.pth")], capsys)  # fmt: skip
    assert rc == 2 and "--any-img-size applies to importing" in err and not (tmp_path / "x.pth").exists()


def test_cli_export_refuses_a_model_its_import_cannot_rebuild(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    run, _ = _resnet101_run(tmp_path, align_dim=256)  # its aligns.1 and widths have no place in the layout
    out = tmp_path / "theirs.pth"
    rc, err = _cli(["convert", str(run), "--family", "resnet101", "--to-official", "--out", str(out)], capsys)
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "align_dim=256 (released 512)" in err, err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.parametrize(
    ("family", "size", "overrides", "needle"),
    [
        ("dinov2_b14", 56, {"lora_rank": 8}, "lora_rank=8"),  # import: shape error
        ("dinov2_b14", 56, {"lora_blocks": "all"}, "lora_blocks='all'"),  # import: unknown keys
        ("dinov2_b14", 56, {"lora_alpha": 2.0}, "lora_alpha=2.0"),  # import: accepted at another LoRA scale
        ("dinov2_b14", 56, {"backbone": "vit_base_patch14_reg4_dinov2"}, "reg4"),  # import: registers lost
        ("ibot_b16", 64, {"finetune": "lora"}, "finetune='lora'"),  # import: unknown lora keys
    ],
)
def test_export_refuses_what_the_import_cannot_rebuild(family, size, overrides, needle):
    cfg = official_config(family, size, overrides)
    with pytest.raises(SimpleMatchError, match=re.escape(needle)):
        to_official(SimpleMatch(cfg, backbone_kwargs=TINY_VIT), cfg)


def test_released_img_sizes_follow_the_preset_table(tmp_path: Path):
    assert released_img_sizes("dinov2_b14") == [252, 448]
    assert released_img_sizes("ibot_b16") == [256]
    assert released_img_sizes("resnet101") == [256]
    # refused before the file is read (it does not even exist); allowed with the opt-in
    with pytest.raises(SimpleMatchError, match=r"--img-size 336: .* trained at 252 or 448"):
        convert_official(tmp_path / "absent.pth", "dinov2_b14", 336)
    official = official_vit("ibot_b16", width=64, depth=2)
    _, cfg, _ = convert_official(_save(tmp_path, official), "ibot_b16", 256, backbone_kwargs=TINY_VIT)
    assert not cfg.img_size_user_chosen
    _, cfg, _ = convert_official(
        _save(tmp_path, official), "ibot_b16", 224, backbone_kwargs=TINY_VIT, any_img_size=True
    )
    assert cfg.img_size == 224 and cfg.img_size_user_chosen
