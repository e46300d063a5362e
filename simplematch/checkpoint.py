"""Our checkpoint format: a folder holding ``model.safetensors`` (all weights) and ``config.json``.

The safetensors file holds the whole model (backbone included), so evaluation and export never need the
pretrained backbone file: :func:`load_checkpoint` rebuilds the network with ``cfg.weights=None``.
Extra ``timm.create_model`` arguments (tiny test models) and caller metadata live in the safetensors header.
Loading is strict: a missing, extra or reshaped tensor is an error naming the fix, never a partial load.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from simplematch.config import Config
from simplematch.errors import SimpleMatchError
from simplematch.files import atomic_path
from simplematch.weights import describe_keys

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT = "simplematch"


def resolve_weights(path_or_dir: str | Path) -> Path:
    """A run folder (or its ``model.safetensors``) -> the weights file; a missing one raises one line."""
    return _resolve(path_or_dir)[0]


def backbone_kwargs(weights: str | Path) -> dict[str, Any]:
    """The extra ``timm.create_model`` arguments recorded in our safetensors header (tiny test models)."""
    _, metadata = _read_header(Path(weights))
    try:
        return json.loads(metadata.get("backbone_kwargs", "{}"))
    except json.JSONDecodeError as err:
        raise SimpleMatchError(
            f"{weights} has a corrupt header", "retrain or copy the checkpoint again"
        ) from err


def _resolve(path_or_dir: str | Path) -> tuple[Path, Path]:
    """Checkpoint folder or its ``model.safetensors`` -> (weights path, config path)."""
    path = Path(path_or_dir)
    if path.is_dir():
        weights, config = path / WEIGHTS_NAME, path / CONFIG_NAME
    elif path.is_file():
        weights, config = path, path.parent / CONFIG_NAME
    else:
        raise SimpleMatchError(f"checkpoint not found: {path}", "pass a folder written by `smatch train`")
    if not weights.is_file():
        last = sorted(weights.parent.glob("ckpt-*/" + WEIGHTS_NAME))
        if last:  # a run stopped (Ctrl-C, crash) before its first validation wrote the best model
            raise SimpleMatchError(
                f"{weights} is missing: the run stopped before its first validation",
                f"use its last checkpoint {last[-1].parent}, or `smatch train --resume {weights.parent}`",
            )
        raise SimpleMatchError(
            f"{weights} is missing", "pass a folder written by `smatch train` or `smatch convert`"
        )
    return weights, config


def save_checkpoint(
    model: torch.nn.Module, cfg: Config, out_dir: str | Path, extra: dict | None = None
) -> Path:
    """Write ``out_dir/model.safetensors`` and ``out_dir/config.json`` atomically; returns the weights."""
    from safetensors.torch import save_file

    if getattr(model, "lora_merged", False):
        raise SimpleMatchError(
            "this model's LoRA was merged (merge_lora), so it no longer matches finetune=lora",
            "save the checkpoint before calling merge_lora()",
        )
    out = Path(out_dir)  # created by the atomic writer
    module = getattr(model, "module", model)  # DDP wrapper
    state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "backbone_kwargs": json.dumps(getattr(module, "backbone_kwargs", {}), sort_keys=True),
        "extra": json.dumps(extra or {}, sort_keys=True, default=str),
    }
    weights = out / WEIGHTS_NAME
    with atomic_path(weights) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    cfg.save(out / CONFIG_NAME)
    return weights


@contextmanager
def _open_weights(weights: Path) -> Iterator[Any]:
    """The one reader of our ``model.safetensors`` (tensors and header); corrupt files raise one line."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), framework="pt", device="cpu") as fh:
            yield fh
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise SimpleMatchError(
            f"{weights} is not a readable safetensors file ({err})",
            "the file is corrupt or truncated; retrain or copy it again",
        ) from err


def read_checkpoint(weights: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read our ``model.safetensors`` -> (state dict, header metadata). Corrupt files raise one line."""
    with _open_weights(Path(weights)) as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata() or {})


def load_model_weights(model: torch.nn.Module, weights: str | Path) -> dict[str, str]:
    """Load our ``model.safetensors`` into an already built model, strictly. Returns the header metadata."""
    state, metadata = read_checkpoint(weights)
    module = getattr(model, "module", model)
    own = module.state_dict()
    # Key sets compared before loading (not load_state_dict(strict=False)'s missing_keys/unexpected_keys,
    # which exist only after tensors were copied): a checkpoint that does not fit loads nothing.
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    reshaped = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if state[k].shape != own[k].shape
    ]
    if missing or unexpected or reshaped:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", reshaped)):
            if keys:
                parts.append(f"{label}: {describe_keys(keys, 6)}")
        raise SimpleMatchError(
            f"{weights} does not fit this model ({'; '.join(parts)})",
            "the checkpoint was made with another backbone, img_size or finetune mode; "
            "load it with the config.json saved next to it",
        )
    module.load_state_dict(state, strict=True)
    return metadata


def load_checkpoint(
    path_or_dir: str | Path, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, Config]:
    """Folder (or its ``model.safetensors``) -> (model in eval mode on ``device``, its config)."""
    from simplematch.model import SimpleMatch

    weights, config_path = _resolve(path_or_dir)
    cfg = Config.load(config_path)
    # Everything is in the safetensors file: do not require (or read) the pretrained backbone file.
    model = SimpleMatch(
        dataclasses.replace(cfg, weights=None, init=None), backbone_kwargs=backbone_kwargs(weights)
    )
    load_model_weights(model, weights)
    return model.to(device).eval(), cfg


def _read_header(weights: Path) -> tuple[list[str], dict[str, str]]:
    """(tensor names, header metadata) without reading the tensors."""
    with _open_weights(weights) as fh:
        return list(fh.keys()), dict(fh.metadata() or {})
