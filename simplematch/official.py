"""Import and export the released SimpleMatch ``best_model.pth`` checkpoints.

Layouts are those of the released code (hailong23-jin/SimpleMatch ``e3d6a4d``). Their loader is
``load_state_dict(strict=False)`` and silently keeps random weights on a name mismatch; ours does strict key
accounting instead: every key of the file is either consumed or ignored for a stated reason, anything else is
an error listing the keys.

Families:

* ``dinov2_b14`` - the file holds only the LoRA factors (blocks 6..11 ``mlp.fc2``) and the decoder; the frozen
  backbone must come from the original DINOv2 ViT-B/14 file (``backbone_weights``).
* ``ibot_b16`` - the whole fine-tuned backbone (pos table at 14x14, resampled once to our grid) + decoder.
* ``resnet101`` - the whole fine-tuned torchvision-layout backbone + ``aligns`` + three-level decoder.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from simplematch.config import OFFICIAL_FAMILIES, PRESETS, Config, resolve_config
from simplematch.errors import SimpleMatchError
from simplematch.model import SimpleMatch, resample_pos_embed_released
from simplematch.weights import load_backbone_weights, read_state_dict

FAMILIES = OFFICIAL_FAMILIES
PRESET_OF = {
    "dinov2_b14": "dinov2_b14_252_spair",
    "ibot_b16": "ibot_b16_256_spair",
    "resnet101": "resnet101_256_spair",
}
VIT_PREFIX = "pair_image_encoder.image_encoder."
RESNET_PREFIX = "pair_image_encoder."
IBOT_OFFICIAL_GRID = 14  # their iBOT is built at 224 px / patch 16 and resizes the table on every forward
_NUM_CLASSES = 1000  # iBOT head / ResNet fc width in the official files (unused there)

# Official decoder module -> ours (relative to ``decoder.``). The ViT ``trans_conv2`` has no counterpart.
_VIT_DECODER = {
    "trans_conv1": "up1",
    "conv_refine1": "refine1",
    "conv_refine2": "refine2",
    "proj": "head_fine",
}
_RESNET_DECODER = {
    "trans_conv1": "up1",
    "trans_conv2": "up2",
    "conv_refine1": "refine1",
    "conv_refine2": "refine2",
    "conv_refine3": "refine3",
    "proj1": "head_coarse",
    "proj2": "head_mid",
    "proj3": "head_fine",
}
_IGNORED = {
    "vit_trans_conv2": "ViT trans_conv2 is defined but never used in the released forward",
    "mask_token": "DINOv2 masked-modeling token, unused for features",
    "norm": "final LayerNorm unused: the decoder reads pre-norm tokens",
    "head": "iBOT classifier head, never trained and unused",
    "fc": "ResNet classifier, unused",
}


def _decoder_name(rest: str, table: dict[str, str]) -> str | None:
    module, _, tail = rest.partition(".")
    return f"decoder.{table[module]}.{tail}" if module in table and tail else None


def map_official_key(key: str, family: str) -> tuple[str | None, str | None]:
    """Official key -> (our key, None), (None, reason it is ignored) or (None, None) when unknown."""
    if family in ("dinov2_b14", "ibot_b16"):
        if key.startswith(VIT_PREFIX):
            rest = key[len(VIT_PREFIX) :]
            if rest == "mask_token":
                return None, _IGNORED["mask_token"]
            if re.fullmatch(r"norm\.(weight|bias)", rest):
                return None, _IGNORED["norm"]
            if re.fullmatch(r"head\.(weight|bias)", rest):
                return None, _IGNORED["head"]
            if family == "dinov2_b14" and not re.fullmatch(r"blocks\.\d+\.mlp\.fc2\.lora_[AB]", rest):
                return None, None  # their DINOv2 files hold LoRA factors only
            return f"encoder.vit.{rest}", None
        if re.fullmatch(r"trans_conv2\.(weight|bias)", key):
            return None, _IGNORED["vit_trans_conv2"]
        return _decoder_name(key, _VIT_DECODER), None
    if family == "resnet101":
        if key.startswith(RESNET_PREFIX + "backbone."):
            rest = key[len(RESNET_PREFIX + "backbone.") :]
            if re.fullmatch(r"fc\.(weight|bias)", rest):
                return None, _IGNORED["fc"]
            return f"encoder.body.{rest}", None
        if re.fullmatch(r"pair_image_encoder\.aligns\.\d+\.(weight|bias)", key):
            return "decoder." + key[len(RESNET_PREFIX) :], None
        return _decoder_name(key, _RESNET_DECODER), None
    raise SimpleMatchError(f"unknown official family '{family}'", f"use one of {', '.join(FAMILIES)}")


def guess_family(keys: list[str]) -> str | None:
    """Best guess of the family of an official file from its keys (for error messages)."""
    if any(k.startswith(RESNET_PREFIX + "backbone.") for k in keys):
        return "resnet101"
    if VIT_PREFIX + "patch_embed.proj.weight" in keys:
        return "ibot_b16"
    if any(k.startswith(VIT_PREFIX) and "lora_" in k for k in keys):
        return "dinov2_b14"
    return None


def released_img_sizes(family: str) -> list[int]:
    """Input sizes of the released configs of ``family`` (the presets with its backbone), e.g. 252/448."""
    if family not in PRESET_OF:
        raise SimpleMatchError(f"unknown official family '{family}'", f"use one of {', '.join(FAMILIES)}")
    backbone = PRESETS[PRESET_OF[family]]["backbone"]
    return sorted({p["img_size"] for p in PRESETS.values() if p["backbone"] == backbone})


def check_img_size(family: str, img_size: int, any_img_size: bool = False) -> bool:
    """Refuse a size no released config of ``family`` uses, unless ``any_img_size``; True when user-chosen.

    The official files do not record their training size (the DINOv2 layout is identical at 252 and 448),
    so it cannot be checked against the file: the released configs' sizes are the rule.
    """
    sizes = released_img_sizes(family)
    if img_size in sizes:
        return False
    if not any_img_size:
        listed = " or ".join(map(str, sizes))
        raise SimpleMatchError(
            f"--img-size {img_size}: the released {family} checkpoints were trained at {listed}, and the file"
            " does not record its size",
            f"pass --img-size {listed}, or add --any-img-size to import at {img_size} deliberately",
        )
    return True


def official_config(family: str, img_size: int, overrides: dict[str, Any] | None = None) -> Config:
    """The resolved preset config of a family at ``img_size`` (e.g. dinov2_b14 -> dinov2_b14_252_spair)."""
    if family not in PRESET_OF:
        raise SimpleMatchError(f"unknown official family '{family}'", f"use one of {', '.join(FAMILIES)}")
    return resolve_config(PRESET_OF[family], {"img_size": img_size, **(overrides or {})})


def load_official_state(model: SimpleMatch, sd: dict[str, torch.Tensor], family: str) -> dict[str, Any]:
    """Load an official state dict into ``model`` with strict key accounting; returns the report.

    For ``dinov2_b14`` the backbone keys absent from the file must already be in ``model`` (loaded from the
    pretrained DINOv2 file); for the other families every model tensor must come from the file.
    """
    own = model.state_dict()
    use: dict[str, torch.Tensor] = {}
    ignored: dict[str, str] = {}
    unknown: list[str] = []
    for key, value in sd.items():
        ours, reason = map_official_key(key, family)
        if ours is not None and ours in own:
            use[ours] = value
        elif reason is not None:
            ignored[key] = reason
        else:
            unknown.append(key)
    if unknown:
        guess = guess_family(list(sd))
        hint = f" (the keys look like family {guess})" if guess and guess != family else ""
        raise SimpleMatchError(
            f"{len(unknown)} key(s) of the file do not belong to official family {family}{hint}: "
            f"{', '.join(sorted(unknown)[:8])}{' ...' if len(unknown) > 8 else ''}",
            f"pass the family the checkpoint was trained with ({', '.join(FAMILIES)}) and an unmodified file",
        )
    if "encoder.vit.pos_embed" in use:  # iBOT: 14x14 table -> our grid, once, with the released formula
        table = model.encoder.adapt_pretrained({"pos_embed": use["encoder.vit.pos_embed"]})["pos_embed"]
        use["encoder.vit.pos_embed"] = table
    from_pretrained = {
        k for k in own if family == "dinov2_b14" and k.startswith("encoder.") and "lora_" not in k
    }
    missing = sorted(k for k in own if k not in use and k not in from_pretrained)
    if missing:
        raise SimpleMatchError(
            f"the official file lacks {len(missing)} tensor(s) the {family} model needs: "
            f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}",
            "the file is incomplete or of another family; pass the unmodified best_model.pth and its family",
        )
    bad = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in use.items() if v.shape != own[k].shape
    ]
    if bad:
        raise SimpleMatchError(
            f"official tensors have unexpected shapes for {family} at img_size {model.cfg.img_size}: "
            f"{', '.join(bad[:4])}",
            f"check --family and --img-size ({'/'.join(map(str, released_img_sizes(family)))} for {family})",
        )
    model.load_state_dict({**own, **{k: v.to(own[k].dtype) for k, v in use.items()}}, strict=True)
    reasons: dict[str, int] = {}
    for reason in ignored.values():
        reasons[reason] = reasons.get(reason, 0) + 1
    return {
        "family": family,
        "keys_in_file": len(sd),
        "consumed": len(use),
        "ignored": len(ignored),
        "ignored_by_reason": reasons,
        "ignored_keys": dict(sorted(ignored.items())),
        "from_backbone_weights": len(from_pretrained),
    }


def convert_official(
    best_model_pth: str | Path,
    family: str,
    img_size: int,
    backbone_weights: str | Path | None = None,
    *,
    backbone_kwargs: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
    any_img_size: bool = False,
) -> tuple[SimpleMatch, Config, dict[str, Any]]:
    """Official ``best_model.pth`` -> (our model in eval mode, its resolved preset config, key report).

    ``backbone_weights`` (the original DINOv2 ViT-B/14 ``.pth``) is required for ``dinov2_b14``, whose file
    holds only LoRA + decoder. ``img_size`` must be one of :func:`released_img_sizes` unless
    ``any_img_size``; the config then records ``img_size_user_chosen``. ``backbone_kwargs``/``overrides``
    shrink the network (tests only).
    """
    if family not in FAMILIES:
        raise SimpleMatchError(f"unknown official family '{family}'", f"use one of {', '.join(FAMILIES)}")
    if check_img_size(family, img_size, any_img_size):
        overrides = {**(overrides or {}), "img_size_user_chosen": True}
    sd = read_state_dict(best_model_pth)
    note = None
    if family == "dinov2_b14":
        if backbone_weights is None:
            raise SimpleMatchError(
                "official DINOv2 checkpoints hold only LoRA + decoder weights, not the frozen backbone",
                "pass the original DINOv2 ViT-B/14 file (dinov2_vitb14_pretrain.pth) as backbone weights",
            )
        overrides = {**(overrides or {}), "weights": str(backbone_weights)}
    elif backbone_weights is not None:
        note = "backbone weights not used: this family's file holds the whole fine-tuned backbone"
    cfg = official_config(family, img_size, overrides)
    model = SimpleMatch(cfg, backbone_kwargs=backbone_kwargs)
    # DINOv2: the frozen backbone comes from backbone_weights, loaded (and accounted for) first.
    pretrained = load_backbone_weights(model, cfg.weights) if cfg.weights else None
    report = load_official_state(model, sd, family)
    report["file"] = str(best_model_pth)
    if pretrained is not None:
        report["backbone_weights"] = {"file": str(backbone_weights), **pretrained}
    if note:
        report["note"] = note
    return model.eval(), cfg, report


# --------------------------------------------------------------------------------------------------------
# ours -> official
# --------------------------------------------------------------------------------------------------------


def official_family(cfg: Config) -> str:
    """Which official layout a config corresponds to."""
    if cfg.family == "resnet" and cfg.backbone == "resnet101":
        return "resnet101"
    if cfg.family == "vit" and "dinov2" in cfg.backbone and "patch14" in cfg.backbone:
        return "dinov2_b14"
    if cfg.family == "vit" and "patch16" in cfg.backbone:
        return "ibot_b16"
    raise SimpleMatchError(
        f"backbone {cfg.backbone} has no official SimpleMatch layout",
        "only DINOv2 ViT-B/14, iBOT ViT-B/16 and ResNet101 models can be written in the released format",
    )


def _released_architecture_differs(
    cfg: Config, family: str, overrides: dict[str, Any] | None = None
) -> list[str]:
    """Fields in which ``cfg`` differs from the architecture the import rebuilds (the family's preset).

    The import cannot read these from an official file: it always builds ``official_config(family, size)``.
    A model that differs would be written in a layout its own import refuses (other LoRA rank or blocks,
    other widths) or loads with other semantics (another LoRA scale, another backbone of the same shapes).
    """
    released = official_config(family, cfg.img_size, overrides)
    fields = ["backbone", "decoder_dim", "multiscale"]
    if family == "resnet101":
        fields.append("align_dim")
    if family == "dinov2_b14":
        fields += ["finetune", "lora_rank", "lora_alpha", "lora_blocks"]
    diffs = [f"{f}={getattr(cfg, f)!r} (released {getattr(released, f)!r})" for f in fields
             if getattr(cfg, f) != getattr(released, f)]  # fmt: skip
    if family != "dinov2_b14" and cfg.finetune == "lora":  # full and frozen both hold the whole backbone
        diffs.append(f"finetune='lora' (released {released.finetune!r})")
    return diffs


def invert_pos_embed_resample(pos_embed: torch.Tensor, n0: int, num_prefix: int = 1) -> torch.Tensor:
    """Least-squares inverse of :func:`resample_pos_embed_released` back to an ``n0`` x ``n0`` table.

    Resampling is linear in the table, so its matrix is built by resampling the identity; solving in float64
    recovers a table that was itself resampled from ``n0`` exactly (round trip official -> ours -> official).
    """
    grid_tokens = pos_embed.shape[1] - num_prefix
    if pos_embed.device.type == "meta":  # shape-only dry runs (full-size layout checks)
        return torch.empty(1, num_prefix + n0 * n0, pos_embed.shape[-1], device="meta", dtype=pos_embed.dtype)
    grid = int(round(grid_tokens**0.5))
    basis = torch.cat((torch.zeros(1, num_prefix, n0 * n0), torch.eye(n0 * n0)[None]), dim=1).double()
    matrix = resample_pos_embed_released(basis, grid, num_prefix)[0, num_prefix:]  # (grid^2, n0^2)
    target = pos_embed[0, num_prefix:].double()
    table = torch.linalg.lstsq(matrix, target).solution
    residual = float((matrix @ table - target).norm() / target.norm().clamp_min(1e-12))
    if residual > 1e-4:
        warnings.warn(
            f"pos_embed trained at {grid}x{grid} is not exactly representable at the official {n0}x{n0}; "
            f"relative error {residual:.2e}",
            stacklevel=3,
        )
    return torch.cat((pos_embed[:, :num_prefix], table[None].to(pos_embed.dtype)), dim=1)


def to_official(
    model: SimpleMatch, cfg: Config, overrides: dict[str, Any] | None = None
) -> dict[str, torch.Tensor]:
    """Our model -> a state dict in the released ``best_model.pth`` layout (names, prefixes, shapes).

    DINOv2: LoRA factors + decoder only; iBOT: full backbone with a 14x14 pos table, plus the unused
    ``norm``/``head``; ResNet: full backbone (+ unused ``fc``), ``aligns``, three-level decoder. Tensors that
    their forward never uses (ViT ``trans_conv2``, ``head``, ``fc``) are written as zeros so their key set is
    exact; BN buffers are included. A model whose architecture differs from the one the import rebuilds
    (``official_config(family, cfg.img_size, overrides)``; ``overrides`` shrink it, tests only) is refused.
    """
    family = official_family(cfg)
    diffs = _released_architecture_differs(cfg, family, overrides)
    if diffs:
        raise SimpleMatchError(
            f"this model differs from the released {family} architecture the import rebuilds: "
            f"{', '.join(diffs)}",
            f"only a model with the released architecture (preset {PRESET_OF[family]}) can be written in the"
            " official layout",
        )
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    if family in ("dinov2_b14", "ibot_b16"):
        encoder = {k[len("encoder.vit.") :]: v for k, v in sd.items() if k.startswith("encoder.vit.")}
        if family == "dinov2_b14":
            lora = {k: v for k, v in encoder.items() if "lora_" in k}
            if cfg.finetune != "lora" or not lora or getattr(model, "lora_merged", False):
                raise SimpleMatchError(
                    "the official DINOv2 layout stores only LoRA factors; this model has none (or merged)",
                    "convert a finetune=lora model before calling merge_lora()",
                )
            out.update({VIT_PREFIX + k: v for k, v in lora.items()})
        else:
            width = encoder["cls_token"].shape[-1]
            encoder["pos_embed"] = invert_pos_embed_resample(encoder["pos_embed"], IBOT_OFFICIAL_GRID)
            encoder["norm.weight"] = torch.ones(width, device=encoder["cls_token"].device)
            encoder["norm.bias"] = torch.zeros(width, device=encoder["cls_token"].device)
            encoder["head.weight"] = torch.zeros(_NUM_CLASSES, width, device=encoder["cls_token"].device)
            encoder["head.bias"] = torch.zeros(_NUM_CLASSES, device=encoder["cls_token"].device)
            out.update({VIT_PREFIX + k: v for k, v in encoder.items()})
        table = _VIT_DECODER
        unused_conv = sd["decoder.up1.weight"], sd["decoder.up1.bias"]
    else:
        for k, v in sd.items():
            if k.startswith("encoder.body."):
                out[RESNET_PREFIX + "backbone." + k[len("encoder.body.") :]] = v
        width = sd["encoder.body.layer4.0.conv3.weight"].shape[0]
        device = sd["encoder.body.conv1.weight"].device
        out[RESNET_PREFIX + "backbone.fc.weight"] = torch.zeros(_NUM_CLASSES, width, device=device)
        out[RESNET_PREFIX + "backbone.fc.bias"] = torch.zeros(_NUM_CLASSES, device=device)
        for k, v in sd.items():
            if k.startswith("decoder.aligns."):
                out[RESNET_PREFIX + k[len("decoder.") :]] = v
        table = _RESNET_DECODER
        unused_conv = None
    # Decoder. Their ViT state_dict override writes parameters first, then BN buffers; the ResNet file has
    # the ordinary per-module order. (Order does not matter for loading; it keeps the files comparable.)
    vit_layout = unused_conv is not None
    params, buffers = {}, {}
    buffer_names = {name for name, _ in model.named_buffers()} if vit_layout else set()
    for theirs, ours in table.items():
        if vit_layout and theirs == "conv_refine1":  # their order: trans_conv1, trans_conv2, conv_refine1...
            params["trans_conv2.weight"] = torch.zeros_like(unused_conv[0])
            params["trans_conv2.bias"] = torch.zeros_like(unused_conv[1])
        prefix = f"decoder.{ours}."
        for k, v in sd.items():
            if k.startswith(prefix):
                (buffers if k in buffer_names else params)[f"{theirs}.{k[len(prefix) :]}"] = v
    out.update(params)
    out.update(buffers)
    return out


def run_convert(
    checkpoint: Path,
    family: str,
    out: Path,
    *,
    img_size: int | None,
    backbone_weights: Path | None,
    to_official: bool,
    any_img_size: bool = False,
    replace: bool = False,
    console: Any,
) -> dict[str, Any]:
    """``smatch convert``: the authors' ``best_model.pth`` -> our checkpoint folder ``out``, or
    (``to_official``) our checkpoint -> a ``.pth`` file in their layout. Every input and ``out`` are checked
    before any tensor is loaded; ``replace`` (``--force``) replaces an existing ``out``."""
    from simplematch import outputs, runlock, validate
    from simplematch.checkpoint import load_checkpoint, save_checkpoint
    from simplematch.files import atomic_path, atomic_write_text
    from simplematch.official import to_official as ours_to_official  # the flag shadows the function
    from simplematch.provenance import stamped

    inputs = [checkpoint, backbone_weights]
    if to_official and any_img_size:
        raise SimpleMatchError(
            "--any-img-size applies to importing an official file, not to --to-official",
            "drop --any-img-size",
        )
    if to_official:
        validate.output_file(out, "--out", suffixes=(".pth", ".pt"), inputs=inputs, force=replace)
    else:
        validate.output_dir(out, "--out", inputs=inputs, force=replace, what="checkpoint")
    if not Path(checkpoint).exists():
        raise SimpleMatchError(f"checkpoint not found: {checkpoint}", "check the path")
    if to_official:
        model, cfg = load_checkpoint(checkpoint)
        if official_family(cfg) != family:
            raise SimpleMatchError(
                f"{checkpoint} is a {official_family(cfg)} model, not {family}",
                f"pass --family {official_family(cfg)}",
            )
        sd = ours_to_official(model, cfg)
        with runlock.hold(out), outputs.transaction(), atomic_path(Path(out)) as tmp:
            torch.save(sd, tmp)
        console.print(f"wrote {len(sd)} tensors in the official {family} layout -> {out}")
        return {"keys": len(sd)}
    if img_size is None:
        raise SimpleMatchError(
            "--img-size is required to import an official checkpoint", "pass e.g. --img-size 252"
        )
    if backbone_weights is not None and not Path(backbone_weights).is_file():
        raise SimpleMatchError(f"backbone weights not found: {backbone_weights}", "check the path")
    model, cfg, report = convert_official(
        checkpoint, family, img_size, backbone_weights, any_img_size=any_img_size
    )
    # One writer per folder; the files appear together or not at all (a full disk leaves no empty folder).
    with runlock.hold(out), outputs.transaction():
        save_checkpoint(model, cfg, out)
        stamped_report = json.dumps(stamped(report, "convert"), indent=2, default=str)
        atomic_write_text(Path(out) / "convert_report.json", stamped_report + "\n")
        if replace:  # --force over an earlier run: drop its checkpoints too, or --resume would use them
            from simplematch.train import clear_run

            clear_run(Path(out), keep=("config.json", "model.safetensors"))  # those two are replaced
    console.print(
        f"{family}: {report['keys_in_file']} keys in file, {report['consumed']} consumed,"
        f" {report['ignored']} ignored"
        f" {report['ignored_by_reason']}, {report['from_backbone_weights']} from the backbone file -> {out}"
        " (details in convert_report.json)"
    )
    return report
