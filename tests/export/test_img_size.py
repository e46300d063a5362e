"""``smatch export --img-size N``: the ViT position table resampled once with the released formula."""

from __future__ import annotations

import onnx
import pytest
import torch
import torch.nn.functional as F

from simplematch.checkpoint import load_checkpoint, save_checkpoint
from simplematch.cli.app import main
from simplematch.config import Config
from simplematch.export.img_size import rebuild_at_size
from simplematch.metadata import ModelMeta
from simplematch.model import SimpleMatch

TRAINED, EXPORTED = 56, 84  # 4x4 -> 6x6 patches of 14 px
TINY_VIT = dict(depth=2, embed_dim=32, num_heads=2)


@pytest.fixture(scope="module")
def vit_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    cfg = Config(backbone="vit_small_patch14_dinov2", img_size=TRAINED, finetune="lora", dropout=0.0)
    model = SimpleMatch(cfg, backbone_kwargs=TINY_VIT)
    with torch.no_grad():
        model.encoder.vit.pos_embed.normal_()  # a non-trivial table, so a wrong resample shows
    path = tmp_path_factory.mktemp("rs") / "checkpoint"
    save_checkpoint(model, cfg, path)
    return path


def _released_resample(table: torch.Tensor, grid: int) -> torch.Tensor:
    """DINOv2's interpolate_pos_encoding written out independently: bicubic, (n + 0.1) / N0, no antialias."""
    prefix, patch = table[:, :1], table[:, 1:]
    n0 = int(patch.shape[1] ** 0.5)
    img = patch.reshape(1, n0, n0, -1).permute(0, 3, 1, 2)
    s = (grid + 0.1) / n0
    img = F.interpolate(img, scale_factor=(s, s), mode="bicubic", align_corners=False, antialias=False)
    return torch.cat([prefix, img.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)], dim=1)


def test_rebuilt_model_has_the_released_resample(vit_ckpt):
    model, cfg = load_checkpoint(vit_ckpt)
    new, new_cfg = rebuild_at_size(vit_ckpt, model, cfg, EXPORTED)
    assert new_cfg.img_size == EXPORTED and cfg.img_size == TRAINED
    want = _released_resample(model.encoder.vit.pos_embed.detach(), EXPORTED // 14)
    assert torch.allclose(new.encoder.vit.pos_embed, want, atol=1e-6)
    # every other weight is carried over unchanged
    old_sd, new_sd = model.state_dict(), new.state_dict()
    assert all(torch.equal(old_sd[k], new_sd[k]) for k in old_sd if not k.endswith("pos_embed"))
    with torch.no_grad():
        feats = new.encode(torch.rand(1, 3, EXPORTED, EXPORTED))
    assert feats.shape[-1] == EXPORTED // 4
    same, _ = rebuild_at_size(vit_ckpt, model, cfg, TRAINED)
    assert same is model


def test_export_at_another_size_records_both_sizes(vit_ckpt, tmp_path):
    out = tmp_path / "m84.onnx"
    assert main(["export", str(vit_ckpt), "--img-size", str(EXPORTED), "--out", str(out)]) == 0
    proto = onnx.load(str(out))
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim[1:]]
    assert dims == [3, EXPORTED, EXPORTED]
    meta = ModelMeta.from_props({p.key: p.value for p in proto.metadata_props})
    assert meta.img_size == EXPORTED and meta.trained_img_size == TRAINED
    assert meta.parity["max_abs_feature_diff"] <= 1e-4  # torch model at 84 vs the ONNX graph


def test_size_that_does_not_fit_the_patch_is_one_line(vit_ckpt, tmp_path, capsys):
    rc = main(["export", str(vit_ckpt), "--img-size", "80", "--out", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        rc == 2 and len(err) == 1 and "--img-size 80" in err[0] and "multiple of the patch size 14" in err[0]
    )
    assert not (tmp_path / "m.onnx").exists()
