"""``smatch export --img-size N``: export a checkpoint at another input size than it was trained at.

ViTs hold one resolution-dependent tensor, the absolute position table: it is resampled **once**, here,
with the released formula (:func:`simplematch.model.resample_pos_embed_released`: bicubic,
``scale_factor=(n + 0.1) / N0``, no antialias, prefix tokens kept) and the model is rebuilt at N, so the
exported graph still holds no resize. ResNets are fully convolutional and only need N to be a multiple of
32. The metadata records both sizes (``img_size`` = exported, ``trained_img_size``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from simplematch.config import Config
from simplematch.errors import SimpleMatchError


def rebuild_at_size(ckpt_dir: Path, model: torch.nn.Module, cfg: Config, size: int) -> tuple[Any, Config]:
    """A copy of ``model`` built at ``size`` with the trained weights (position table resampled)."""
    from simplematch.checkpoint import _read_header, _resolve
    from simplematch.model import SimpleMatch, resample_pos_embed_released

    if size == cfg.img_size:
        return model, cfg
    new_cfg = dataclasses.replace(cfg, img_size=size, weights=None)
    weights, _ = _resolve(ckpt_dir)
    kwargs = json.loads(_read_header(weights)[1].get("backbone_kwargs", "{}"))
    try:
        new = SimpleMatch(new_cfg, backbone_kwargs=kwargs)
    except SimpleMatchError as err:  # e.g. not a multiple of the patch size / ResNet stride
        raise SimpleMatchError(f"--img-size {size}: {err.problem}", err.fix) from err
    state = dict(model.state_dict())
    key = next((k for k in state if k.endswith("vit.pos_embed")), None)
    if key is not None:
        enc = new.encoder
        state[key] = resample_pos_embed_released(state[key], enc.grid, enc.num_prefix)
    new.load_state_dict(state, strict=True)
    return new.eval(), new_cfg
