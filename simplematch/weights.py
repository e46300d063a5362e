"""Pretrained backbone files: safe reading, key remapping and strict key accounting.

Next to :mod:`simplematch.checkpoint` (our own ``model.safetensors``): this module reads *other people's*
weight files (official DINOv2 / iBOT ``.pth``, torchvision ResNet ``.pth``, timm ``.safetensors``) into an
already built :class:`~simplematch.model.SimpleMatch`, so the model's constructor never touches the disk.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from simplematch.errors import SimpleMatchError, first_line

if TYPE_CHECKING:
    from simplematch.model import SimpleMatch

# Wrappers of training scripts around the state dict, unwrapped in this order (iBOT files nest them).
_WRAPPER_KEYS = ("state_dict", "model", "teacher")


def describe_keys(keys: list[str], limit: int = 8) -> str:
    """The first ``limit`` keys, comma-separated, and how many more there are."""
    shown = ", ".join(keys[:limit])
    return f"{shown} (+{len(keys) - limit} more)" if len(keys) > limit else shown


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` or ``.pth``/``.pt``/``.bin`` tensor file safely into a flat state dict.

    ``.pth`` files are opened only with ``torch.load(weights_only=True)``: a pickle that would run code is
    refused. Wrappers ``{"state_dict"|"model"|"teacher": {...}}`` (iBOT, training scripts) are unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise SimpleMatchError(
            f"weights file not found: {path}", "check the path (weights are never downloaded)"
        )
    obj = _read_safetensors(path) if path.suffix == ".safetensors" else _read_torch(path)
    for key in _WRAPPER_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SimpleMatchError(f"{path} is not a state dict of tensors", "pass a backbone state-dict file")
    return {str(k): v for k, v in obj.items()}


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return dict(load_file(str(path), device="cpu"))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise SimpleMatchError(
            f"cannot read {path} as safetensors ({err})", "re-download or re-save the file"
        ) from err


def _read_torch(path: Path) -> Any:
    # Our own torch.load rather than timm.models.load_state_dict: timm turns the weights_only refusal into
    # a generic RuntimeError (and allowlists argparse.Namespace), while a refused pickle must say so here.
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise SimpleMatchError(
            f"refused to load {path}: it holds Python objects other than tensors (weights_only=True)",
            "use a plain state-dict file from a trusted source, or convert it to .safetensors",
        ) from err
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        raise SimpleMatchError(
            f"cannot read {path} as a torch file ({type(err).__name__}: {first_line(err)})",
            "the file is truncated or not a checkpoint; re-download it",
        ) from err


def strip_prefixes(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Drop wrapper prefixes (DDP ``module.``, ``torch.compile``'s ``_orig_mod.``: timm's
    ``clean_state_dict``); keep only ``backbone.*`` when present (iBOT/DINO teacher files)."""
    from timm.models import clean_state_dict  # lazy: checkpoint.py imports this module, timm is slow

    ignored: dict[str, str] = {}
    sd = clean_state_dict(sd)
    if any(k.startswith("backbone.") for k in sd):
        out = {}
        for k, v in sd.items():
            if k.startswith("backbone."):
                out[k.removeprefix("backbone.")] = v
            else:
                ignored[k] = "not part of the backbone (self-supervised projection head)"
        sd = out
    return sd, ignored


# Keys of pretrained files the model deliberately does not use, with the reason (strict key accounting).
_UNUSED_PRETRAINED = (
    (re.compile(r"^mask_token$"), "DINOv2 masked-modeling token, unused for features"),
    (
        re.compile(r"^norm\.(weight|bias)$"),
        "final LayerNorm: the decoder reads pre-norm tokens (released code)",
    ),
    (re.compile(r"^fc_norm\.(weight|bias)$"), "pooled-feature norm of the classifier, unused"),
    (re.compile(r"^head\.(weight|bias)$"), "classification head, unused"),
    (re.compile(r"^fc\.(weight|bias)$"), "ResNet classifier, unused"),
)


def unused_pretrained_reason(key: str) -> str | None:
    """Why a pretrained-backbone key is deliberately ignored, or ``None`` when it must be used."""
    for pattern, reason in _UNUSED_PRETRAINED:
        if pattern.match(key):
            return reason
    return None


def load_backbone_weights(model: SimpleMatch, path: str | Path) -> dict[str, Any]:
    """Load a pretrained backbone file into ``model``'s encoder with strict key accounting.

    Accepts official DINOv2 ``.pth``, iBOT teacher ``{"state_dict": ...}`` (``module.``/``backbone.``
    prefixes), torchvision ResNet ``.pth`` and timm ``.safetensors``/``.pth``. Returns a report
    ``{"loaded": n, "ignored": {key: reason}}``; any unexplained or missing key raises.
    """
    _refuse_our_checkpoint(Path(path))
    sd, ignored = strip_prefixes(read_state_dict(path))
    return load_backbone_state(model, sd, ignored, source=str(path))


def _refuse_our_checkpoint(path: Path) -> None:
    """A ``smatch train`` / ``smatch convert`` model.safetensors is a whole model: that is ``--init``."""
    if path.suffix != ".safetensors" or not path.is_file():
        return
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            ours = (fh.metadata() or {}).get("format") == "simplematch"
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return  # read_state_dict reports an unreadable file
    if ours:
        raise SimpleMatchError(
            f"{path} is a whole SimpleMatch model (a run's weights), not a pretrained backbone file",
            f"fine-tune from it with --init {path.parent} (and no --weights)",
        )


def load_backbone_state(
    model: SimpleMatch, sd: dict[str, torch.Tensor], ignored: dict[str, str], source: str
) -> dict[str, Any]:
    """Strict load of a backbone state dict (keys checked first, then shapes; never a partial load).

    The key sets are compared before loading rather than read from ``load_state_dict(strict=False)``'s
    ``missing_keys`` / ``unexpected_keys``: those exist only after a load has already copied tensors.
    """
    target = model.backbone_module()
    own = target.state_dict()
    use: dict[str, torch.Tensor] = {}
    unexpected = []
    for key, value in sd.items():
        if key in own:
            use[key] = value
        elif (reason := unused_pretrained_reason(key)) is not None:
            ignored[key] = reason
        else:
            unexpected.append(key)
    # LoRA factors are new parameters: never in a pretrained backbone file.
    missing = sorted(k for k in own if k not in use and "lora_A" not in k and "lora_B" not in k)
    if unexpected or missing:
        parts = []
        if unexpected:
            parts.append(f"unexpected keys {describe_keys(sorted(unexpected))}")
        if missing:
            parts.append(f"missing keys {describe_keys(missing)}")
        raise SimpleMatchError(
            f"{source} does not match backbone {model.cfg.backbone}: {'; '.join(parts)}",
            "pass weights of the same architecture as --backbone (e.g. dinov2_vitb14_pretrain.pth for "
            "vit_base_patch14_dinov2)",
        )
    use = model.encoder.adapt_pretrained(use)
    bad = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in use.items() if v.shape != own[k].shape
    ]
    if bad:
        raise SimpleMatchError(
            f"{source}: tensor shapes differ from backbone {model.cfg.backbone}: {describe_keys(bad, 4)}",
            "pass weights of the same model size (small/base/large) as --backbone",
        )
    target.load_state_dict(use, strict=False)
    return {"loaded": len(use), "ignored": ignored}
