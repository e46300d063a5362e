"""Pretrained backbone files (:mod:`simplematch.weights`): official / timm / torchvision layouts, wrapper
unwrapping, strict key accounting and safe reading. Tiny models (see tests/test_model.py) keep it fast."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import timm
import torch

from simplematch.errors import SimpleMatchError
from simplematch.model import SimpleMatch, resample_pos_embed_released
from simplematch.weights import load_backbone_weights
from tests.test_model import DINO, IBOT, TINY_VIT, resnet_cfg, timm_vit, tiny_vit, vit_cfg


def test_constructor_reads_no_file(tmp_path: Path):
    """cfg.weights is provenance only for the model: loading it is the weights module's job."""
    model = tiny_vit(weights=str(tmp_path / "absent.pth"))
    assert model.cfg.weights == str(tmp_path / "absent.pth")


def test_official_dinov2_layout_loads(tmp_path: Path):
    src = timm_vit(DINO, 518)  # 37x37 grid: the official 1370-token table shape (with width 64)
    sd = dict(src.state_dict())
    sd["mask_token"] = torch.zeros(1, 64)  # official file has it, unused
    assert sd["pos_embed"].shape == (1, 1370, 64)
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(sd, path)
    model = tiny_vit(finetune="lora")
    report = load_backbone_weights(model, path)
    vit = model.encoder.vit
    torch.testing.assert_close(vit.blocks[1].mlp.fc2.weight, sd["blocks.1.mlp.fc2.weight"], rtol=0, atol=0)
    torch.testing.assert_close(vit.blocks[0].ls1.gamma, sd["blocks.0.ls1.gamma"], rtol=0, atol=0)
    torch.testing.assert_close(vit.pos_embed, resample_pos_embed_released(sd["pos_embed"], 4), rtol=0, atol=0)
    assert report["ignored"].keys() == {"mask_token", "norm.weight", "norm.bias"}


def test_ibot_teacher_layout_loads(tmp_path: Path):
    src = timm_vit(IBOT, 224)  # 14x14 grid + cls = 197 tokens, as the iBOT file
    sd = {f"module.backbone.{k}": v for k, v in src.state_dict().items()}
    sd["module.head.mlp.0.weight"] = torch.zeros(3, 64)  # iBOT projection head, not part of the backbone
    path = tmp_path / "checkpoint_teacher.pth"
    torch.save({"state_dict": sd, "epoch": 3}, path)
    model = SimpleMatch(vit_cfg(backbone=IBOT, img_size=64, finetune="full"), TINY_VIT)
    load_backbone_weights(model, path)
    vit = model.encoder.vit
    assert vit.pos_embed.shape == (1, 17, 64)
    torch.testing.assert_close(vit.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight, rtol=0, atol=0)
    want = resample_pos_embed_released(src.pos_embed.detach(), 4)
    torch.testing.assert_close(vit.pos_embed, want, rtol=0, atol=0)


def test_torchvision_resnet_layout_loads(tmp_path: Path):
    import torchvision

    torch.manual_seed(5)
    tv = torchvision.models.resnet18()
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(tv.state_dict(), path)  # includes fc.* (ignored) and num_batches_tracked
    model = SimpleMatch(resnet_cfg())
    load_backbone_weights(model, path)
    body = model.encoder.body
    torch.testing.assert_close(body.layer3[1].conv2.weight, tv.layer3[1].conv2.weight, rtol=0, atol=0)
    torch.testing.assert_close(body.bn1.running_var, tv.bn1.running_var, rtol=0, atol=0)


def test_timm_safetensors_layout_loads(tmp_path: Path):
    from safetensors.torch import save_file

    src = timm_vit(DINO, 56)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    model = tiny_vit(finetune="full")
    load_backbone_weights(model, path)
    torch.testing.assert_close(model.encoder.vit.pos_embed, src.pos_embed, rtol=0, atol=0)


def test_wrong_architecture_weights_list_keys(tmp_path: Path):
    import torchvision

    path = tmp_path / "resnet.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(SimpleMatchError, match=r"unexpected keys .*conv1\.weight.*missing keys"):
        load_backbone_weights(tiny_vit(), path)


def test_wrong_width_weights_are_a_shape_error(tmp_path: Path):
    torch.manual_seed(0)
    src = timm.create_model(
        DINO, pretrained=False, img_size=56, num_classes=0, depth=2, embed_dim=32, num_heads=2
    )
    path = tmp_path / "small.pth"
    torch.save(src.state_dict(), path)
    with pytest.raises(SimpleMatchError, match="shapes differ"):
        load_backbone_weights(tiny_vit(), path)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_malicious_pickle_is_refused(tmp_path: Path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        pickle.dump({"blocks.0.norm1.weight": _Evil(marker)}, fh, protocol=2)
    torch.save({"x": _Evil(marker)}, tmp_path / "evil2.pth")
    for p in (path, tmp_path / "evil2.pth"):
        with pytest.raises(SimpleMatchError, match="refused|cannot read"):
            load_backbone_weights(tiny_vit(), p)
    assert not marker.exists()  # the payload never ran


def test_missing_and_truncated_weights(tmp_path: Path):
    with pytest.raises(SimpleMatchError, match="not found"):
        load_backbone_weights(tiny_vit(), tmp_path / "nope.pth")
    good = tmp_path / "good.pth"
    torch.save(timm_vit(DINO, 56).state_dict(), good)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(SimpleMatchError, match="truncated"):
        load_backbone_weights(tiny_vit(), bad)


def test_wrapped_pth_loads_the_same_weights_as_the_plain_one(tmp_path: Path):
    """A training script's ``{"model": {"module.<key>": ...}, "epoch": n}`` (DDP prefixes, nesting) and
    ``torch.compile``'s ``_orig_mod.`` load exactly like the plain state dict of the same network."""
    import torchvision

    torch.manual_seed(3)
    sd = torchvision.models.resnet18().state_dict()
    plain, ddp, compiled = tmp_path / "plain.pth", tmp_path / "ddp.pth", tmp_path / "compiled.pth"
    torch.save(sd, plain)
    torch.save({"model": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, ddp)
    torch.save({"state_dict": {f"_orig_mod.module.{k}": v for k, v in sd.items()}}, compiled)
    want_model = SimpleMatch(resnet_cfg())
    want = load_backbone_weights(want_model, plain)
    for path in (ddp, compiled):
        model = SimpleMatch(resnet_cfg())
        assert load_backbone_weights(model, path) == want
        for (k, a), b in zip(
            model.backbone_module().state_dict().items(),
            want_model.backbone_module().state_dict().values(),
            strict=True,
        ):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
