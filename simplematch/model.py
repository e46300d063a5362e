"""The SimpleMatch network (paper section 3.2, Fig. 2-3): a timm encoder and a lightweight upsampling decoder.

One definition serves training, evaluation, export and the official-checkpoint converter. The file reads top
to bottom: pure helpers -> LoRA -> encoders -> decoders -> :class:`SimpleMatch`. Nothing here reads a file:
``cfg.weights`` (a pretrained backbone) is loaded after construction by :mod:`simplematch.weights`.

Fidelity notes (the released code, hailong23-jin/SimpleMatch ``e3d6a4d``, and its checkpoint layout):

* ViT features are the last block's patch tokens **before** the final LayerNorm, prefix tokens dropped.
* The ViT is built at ``cfg.img_size`` (fixed grid, no resize in ``forward``, so the graph exports cleanly).
  A pretrained position table of another grid (DINOv2 37x37, iBOT 14x14) is resampled **once** at load time
  with the released formula (bicubic, no antialias, ``scale_factor=(n + 0.1) / N0``), not timm's.
* LoRA follows loralib (``lora_A`` (r, in) kaiming-uniform, ``lora_B`` (out, r) zeros, scale alpha / r) so
  official DINOv2 LoRA tensors load by name and fold exactly into plain weights for export.
* Images enter in [0, 1]; ImageNet normalisation lives inside the model (and so inside exported graphs).
"""

from __future__ import annotations

import math
from typing import Any

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from simplematch.config import Config
from simplematch.errors import SimpleMatchError
from simplematch.geometry import FEATURE_STRIDE
from simplematch.image import IMAGENET_MEAN, IMAGENET_STD
from simplematch.matching import Matches, match_keypoints

# --------------------------------------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------------------------------------


def resample_pos_embed_released(pos_embed: torch.Tensor, grid: int, num_prefix: int = 1) -> torch.Tensor:
    """Resample a (1, P + N0*N0, C) position table to a ``grid`` x ``grid`` patch grid, as the released code.

    DINOv2/iBOT ``interpolate_pos_encoding``: the prefix (cls) entries are kept apart, the patch table is
    resized with bicubic, ``align_corners=False``, ``antialias=False`` and ``scale_factor=(n + 0.1) / N0``
    (the +0.1 avoids a floating-point floor one short of n). timm's ``resample_abs_pos_embed`` uses
    ``size=`` with antialias, which differs by up to 11% of the token norm at 252 px, hence hand-written.
    A table already at ``grid`` is returned unchanged (the released code returns early too).
    """
    prefix, patch = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    n0 = math.isqrt(patch.shape[1])
    if n0 * n0 != patch.shape[1]:
        raise SimpleMatchError(
            f"position table with {patch.shape[1]} patch entries is not a square grid",
            "use a checkpoint of a square-input ViT (DINOv2, iBOT, timm vit_*)",
        )
    if n0 == grid:
        return pos_embed
    c = patch.shape[-1]
    table = patch.reshape(1, n0, n0, c).permute(0, 3, 1, 2).float()
    scale = (grid + 0.1) / n0
    table = F.interpolate(
        table, scale_factor=(scale, scale), mode="bicubic", align_corners=False, antialias=False
    )
    if table.shape[-2:] != (grid, grid):  # guards the +0.1 trick; cannot happen for sane grids
        raise SimpleMatchError(
            f"pos-embed resample gave {tuple(table.shape[-2:])}, wanted {grid}", "report a bug"
        )
    table = table.permute(0, 2, 3, 1).reshape(1, grid * grid, c).to(pos_embed.dtype)
    return torch.cat((prefix, table), dim=1)


# --------------------------------------------------------------------------------------------------------
# LoRA (hand-written rather than peft: official DINOv2 checkpoints store loralib names ``mlp.fc2.lora_A``,
# peft would name them ``lora_A.default.weight``; matching loralib keeps their tensors loadable by name)
# --------------------------------------------------------------------------------------------------------


class LoRALinear(nn.Linear):
    """``nn.Linear`` plus a low-rank update ``(x A^T B^T) * alpha / r`` (loralib ``Linear``, no dropout)."""

    def __init__(
        self, in_features: int, out_features: int, rank: int, alpha: float, bias: bool = True
    ) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.rank = rank
        self.scaling = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        # loralib init: A kaiming-uniform(a=sqrt(5)), B zeros -> the update starts at exactly zero.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    @classmethod
    def wrap(cls, linear: nn.Linear, rank: int, alpha: float) -> LoRALinear:
        new = cls(linear.in_features, linear.out_features, rank, alpha, bias=linear.bias is not None)
        new.to(device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(linear.weight)
            if linear.bias is not None:
                new.bias.copy_(linear.bias)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + (x @ self.lora_A.t() @ self.lora_B.t()) * self.scaling

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` with ``W + B A * scale`` folded in (same outputs, no LoRA ops for export)."""
        out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        out.to(device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(self.weight + (self.lora_B @ self.lora_A) * self.scaling)
            if self.bias is not None:
                out.bias.copy_(self.bias)
        out.weight.requires_grad_(self.weight.requires_grad)
        return out


def lora_block_indices(depth: int, which: str) -> list[int]:
    """Blocks that get LoRA on ``mlp.fc2``: ``last_half`` (released: blocks 6..11 of 12) or ``all``."""
    if which == "last_half":
        return list(range(depth // 2, depth))
    if which == "all":
        return list(range(depth))
    raise SimpleMatchError(f"config lora_blocks={which!r}: unknown choice", "use last_half or all")


# --------------------------------------------------------------------------------------------------------
# Encoders
# --------------------------------------------------------------------------------------------------------


class ViTEncoder(nn.Module):
    """timm ViT at a fixed input size -> last-block patch tokens without the final norm, (B, C, h, w)."""

    def __init__(self, cfg: Config, backbone_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__()
        kwargs: dict[str, Any] = dict(img_size=cfg.img_size, num_classes=0, dynamic_img_size=False)
        kwargs.update(backbone_kwargs or {})
        vit = _create_timm(cfg.backbone, kwargs)
        # timm's own pruning: drop the final norm and head so no unused parameter exists (clean DDP/export).
        vit.prune_intermediate_layers(indices=1, prune_norm=True, prune_head=True)
        self.vit = vit
        self.out_channels: int = vit.embed_dim
        self.patch_size: int = vit.patch_embed.patch_size[0]
        self.num_prefix: int = vit.num_prefix_tokens
        if cfg.img_size % self.patch_size:
            near = self.patch_size * (cfg.img_size // self.patch_size)
            raise SimpleMatchError(
                f"img_size {cfg.img_size} is not a multiple of the patch size {self.patch_size}",
                f"use a multiple of {self.patch_size} (e.g. {near})",
            )
        self.grid: int = cfg.img_size // self.patch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # norm=False: pre-norm tokens of the last block, prefix tokens dropped, NCHW (timm does the reshape).
        return self.vit.forward_intermediates(
            x, indices=1, norm=False, output_fmt="NCHW", intermediates_only=True
        )[-1]

    def lora_targets(self, which: str) -> list[str]:
        return [f"blocks.{i}.mlp.fc2" for i in lora_block_indices(len(self.vit.blocks), which)]

    def adapt_pretrained(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Released pos-embed resampling to this model's grid (the only resolution-dependent tensor)."""
        sd = dict(sd)
        if "pos_embed" in sd and sd["pos_embed"].shape != self.vit.pos_embed.shape:
            sd["pos_embed"] = resample_pos_embed_released(sd["pos_embed"], self.grid, self.num_prefix)
        return sd


class ResNetEncoder(nn.Module):
    """timm ResNet ``features_only`` -> four levels at strides 4/8/16/32 (layer1..layer4)."""

    def __init__(self, cfg: Config, backbone_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__()
        kwargs: dict[str, Any] = dict(features_only=True, out_indices=(1, 2, 3, 4))
        kwargs.update(backbone_kwargs or {})
        self.body = _create_timm(cfg.backbone, kwargs)
        self.channels: list[int] = list(self.body.feature_info.channels())
        if list(self.body.feature_info.reduction()) != [4, 8, 16, 32]:
            raise SimpleMatchError(
                f"backbone {cfg.backbone} does not give strides 4/8/16/32", "use a ResNet-style backbone"
            )
        if cfg.img_size % 32:
            raise SimpleMatchError(
                f"img_size {cfg.img_size} is not a multiple of 32 (ResNet stride)", "use e.g. 128 or 256"
            )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.body(x)

    def lora_targets(self, which: str) -> list[str]:
        raise SimpleMatchError(
            "finetune=lora needs a ViT backbone", "use --finetune full or frozen for ResNets"
        )

    def adapt_pretrained(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return sd


def _create_timm(name: str, kwargs: dict[str, Any]) -> nn.Module:
    try:
        return timm.create_model(name, pretrained=False, **kwargs)  # never download in a constructor
    except RuntimeError as err:  # timm raises RuntimeError('Unknown model ...')
        raise SimpleMatchError(
            f"timm cannot build backbone '{name}' ({err})", "use a timm model name"
        ) from err


# --------------------------------------------------------------------------------------------------------
# Decoder blocks
# --------------------------------------------------------------------------------------------------------


class ConvBlock(nn.Module):
    """Eq. 4: two rounds of ``x = x + ReLU(BN(Conv3x3(x)))`` (names ``block{1,2}.{0,1}`` as released)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1), nn.BatchNorm2d(dim), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1), nn.BatchNorm2d(dim), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.block1(x)
        return x + self.block2(x)


class PointwiseLinear(nn.Linear):
    """Per-location linear projection over channels of a (B, C, h, w) map.

    Stores an ``nn.Linear`` (out, in) weight, like the released ``proj``, but runs as a 1x1 convolution so
    no NCHW <-> NHWC permutes appear in the exported graph.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight[:, :, None, None], self.bias)


def _upsample(x: torch.Tensor, size: tuple[int, int], align_corners: bool) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


class ViTDecoder(nn.Module):
    """Fig. 3: dropout -> [bilinear x2 + ConvTranspose x2] -> ConvBlock -> bilinear to H/4 -> ConvBlock.

    Heads (per-location projections): ``head_fine`` at H/4 always; with ``multiscale`` also ``head_coarse``
    on the token grid and ``head_mid`` after the first up-block.
    """

    def __init__(self, in_dim: int, dim: int, dropout: float, multiscale: bool) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        # Only when the width differs from the encoder's: the released decoder runs at the encoder width.
        self.input_proj = nn.Conv2d(in_dim, dim, 1) if dim != in_dim else nn.Identity()
        self.up1 = nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2)
        self.refine1 = ConvBlock(dim)
        self.refine2 = ConvBlock(dim)
        self.head_coarse = PointwiseLinear(dim, dim) if multiscale else None
        self.head_mid = PointwiseLinear(dim, dim) if multiscale else None
        self.head_fine = PointwiseLinear(dim, dim)

    def forward(
        self, x: torch.Tensor, out_hw: tuple[int, int], fine_only: bool = False
    ) -> list[torch.Tensor]:
        x = self.input_proj(self.dropout(x))
        coarse = x
        h, w = x.shape[-2:]
        x = self.refine1(_upsample(x, (2 * h, 2 * w), align_corners=False) + self.up1(x))  # eq. 3-4
        mid = x
        x = self.refine2(_upsample(x, out_hw, align_corners=False))  # e.g. 36 -> 63 at 252 px
        fine = self.head_fine(x)
        if fine_only or self.head_coarse is None or self.head_mid is None:
            return [fine]
        return [self.head_coarse(coarse), self.head_mid(mid), fine]


class ResNetDecoder(nn.Module):
    """Multi-level decoder (released ``CorrespondenceModelResNet``): skip connections replace the ViT path.

    f16 = align(L3) + ConvT(align(L4)) -> ConvBlock; f8 = align(L2) + ConvT(f16) -> ConvBlock;
    f4 = align(L1) + bilinear(f8, align_corners=True) -> ConvBlock. One projection head per level.
    """

    def __init__(self, channels: list[int], dim: int, multiscale: bool) -> None:
        super().__init__()
        # 1x1 convs (with bias) wherever a level's width differs from dim; Identity otherwise. For resnet101
        # with dim 512 this is exactly the released [conv, Identity, conv, conv] (no ``aligns.1`` weights).
        self.aligns = nn.ModuleList(nn.Conv2d(c, dim, 1) if c != dim else nn.Identity() for c in channels)
        self.up1 = nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2)  # 1/32 -> 1/16
        self.up2 = nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2)  # 1/16 -> 1/8
        self.refine1 = ConvBlock(dim)
        self.refine2 = ConvBlock(dim)
        self.refine3 = ConvBlock(dim)
        self.head_coarse = PointwiseLinear(dim, dim) if multiscale else None
        self.head_mid = PointwiseLinear(dim, dim) if multiscale else None
        self.head_fine = PointwiseLinear(dim, dim)

    def forward(
        self, feats: list[torch.Tensor], out_hw: tuple[int, int], fine_only: bool = False
    ) -> list[torch.Tensor]:
        l1, l2, l3, l4 = (align(f) for align, f in zip(self.aligns, feats, strict=True))
        f16 = self.refine1(l3 + self.up1(l4))
        f8 = self.refine2(l2 + self.up2(f16))
        f4 = self.refine3(l1 + _upsample(f8, out_hw, align_corners=True))  # align_corners=True as released
        fine = self.head_fine(f4)
        if fine_only or self.head_coarse is None or self.head_mid is None:
            return [fine]
        return [self.head_coarse(f16), self.head_mid(f8), fine]


# --------------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------------


class SimpleMatch(nn.Module):
    """Encoder + lightweight decoder; matching by :func:`simplematch.matching.match_keypoints`.

    ``backbone_kwargs`` are extra ``timm.create_model`` arguments (e.g. ``depth=2, embed_dim=64`` for tiny
    test models); :mod:`simplematch.checkpoint` stores them so a checkpoint rebuilds the same network.
    """

    def __init__(self, cfg: Config, backbone_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone_kwargs: dict[str, Any] = dict(backbone_kwargs or {})
        self.family = cfg.family
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.encoder: ViTEncoder | ResNetEncoder
        self.decoder: ViTDecoder | ResNetDecoder
        if self.family == "vit":
            self.encoder = ViTEncoder(cfg, self.backbone_kwargs)
            dim = cfg.decoder_dim or self.encoder.out_channels
            self.decoder = ViTDecoder(self.encoder.out_channels, dim, cfg.dropout, cfg.multiscale)
        else:
            self.encoder = ResNetEncoder(cfg, self.backbone_kwargs)
            self.decoder = ResNetDecoder(
                self.encoder.channels, cfg.decoder_dim or cfg.align_dim, cfg.multiscale
            )
        if cfg.finetune == "lora":
            self._add_lora()
        self.lora_merged = False
        self._set_trainable()

    # ---- construction helpers -----------------------------------------------------------------------
    def backbone_module(self) -> nn.Module:
        """The timm network inside the encoder (what a pretrained backbone file fills)."""
        return self.encoder.vit if isinstance(self.encoder, ViTEncoder) else self.encoder.body

    def _add_lora(self) -> None:
        root = self.backbone_module()
        for name in self.encoder.lora_targets(self.cfg.lora_blocks):
            parent_name, _, child = name.rpartition(".")
            parent = root.get_submodule(parent_name)
            setattr(
                parent,
                child,
                LoRALinear.wrap(getattr(parent, child), self.cfg.lora_rank, self.cfg.lora_alpha),
            )

    def _set_trainable(self) -> None:
        """frozen: decoder only; lora: decoder + ``lora_A``/``lora_B``; full: everything."""
        mode = self.cfg.finetune
        for name, p in self.encoder.named_parameters():
            p.requires_grad_(mode == "full" or (mode == "lora" and ("lora_A" in name or "lora_B" in name)))
        for p in self.decoder.parameters():
            p.requires_grad_(True)

    def train(self, mode: bool = True) -> SimpleMatch:
        super().train(mode)
        if self.cfg.finetune != "full":
            # A non-fine-tuned backbone keeps its pretrained behaviour (ResNet BN statistics stay fixed).
            self.encoder.eval()
        return self

    # ---- forward paths ------------------------------------------------------------------------------
    def _maps(
        self, images: torch.Tensor, fine_only: bool = False, split: int | None = None
    ) -> list[torch.Tensor]:
        x = (images - self.pixel_mean) / self.pixel_std
        out_hw = (images.shape[-2] // FEATURE_STRIDE, images.shape[-1] // FEATURE_STRIDE)
        feats = self.encoder(x)
        if split is None:
            return self.decoder(feats, out_hw, fine_only)
        # Released training (ViT and ResNet alike) decodes source and target in two calls, so the decoder's
        # BN batch statistics are per image set; reproduced here (identical in eval: running statistics).
        if isinstance(feats, list):  # ResNet: one tensor per level
            first = self.decoder([f[:split] for f in feats], out_hw, fine_only)
            second = self.decoder([f[split:] for f in feats], out_hw, fine_only)
        else:
            first = self.decoder(feats[:split], out_hw, fine_only)
            second = self.decoder(feats[split:], out_hw, fine_only)
        return [torch.cat(pair) for pair in zip(first, second, strict=True)]

    def feature_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, S, S) in [0, 1] -> head maps [coarse, mid, fine] (only [fine] when not multiscale).

        Each map is (B, C, h, w), projected but not normalised; fine is at exactly S/4.
        """
        return self._maps(images)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [0, 1] -> (B, C, S/4, S/4) fine head, unit L2 norm along C (what is exported)."""
        return F.normalize(self._maps(images, fine_only=True)[-1], dim=1)

    def forward(
        self, src_img: torch.Tensor, trg_img: torch.Tensor, src_kps: torch.Tensor
    ) -> list[torch.Tensor]:
        """Predict target keypoints at every head.

        src_img, trg_img: (B, 3, S, S) float in [0, 1]; src_kps: (B, N, 2) pixels (x, y) in the S frame.
        Returns one (B, N, 2) tensor of predicted target pixels (x, y, S frame) per head, ordered
        [coarse, mid, fine] (only [fine] without multiscale); heads use ``cfg.windows`` aligned from the end.
        """
        b = src_img.shape[0]
        # One concatenated batch through the encoder, as released (ResNet backbone BN sees src and trg
        # together); the decoder then runs per image set in training (see _maps).
        split = b if self.training else None
        maps = self._maps(torch.cat((src_img, trg_img)), split=split)
        windows = self.cfg.windows[-len(maps) :]
        size = src_img.shape[-1]
        return [
            match_keypoints(
                m[:b], m[b:], src_kps, size, k, self.cfg.beta, self.cfg.coord, with_cues=False
            ).pred
            for m, k in zip(maps, windows, strict=True)
        ]

    @torch.no_grad()
    def predict(
        self, src_img: torch.Tensor, trg_img: torch.Tensor, src_kps: torch.Tensor, window: int | None = None
    ) -> Matches:
        """Evaluation: fine head only, eval mode, no grad.

        Returns :class:`simplematch.matching.Matches`: (B, N, 2) predicted target pixels and the (B, N)
        confidence cues. ``window`` defaults to ``cfg.windows[-1]`` (45 for ViTs, 30 for ResNet101).
        """
        was_training = self.training
        self.eval()
        try:
            b = src_img.shape[0]
            fine = self.encode(torch.cat((src_img, trg_img)))
            k = self.cfg.windows[-1] if window is None else window
            matches = match_keypoints(
                fine[:b], fine[b:], src_kps, src_img.shape[-1], k, self.cfg.beta, self.cfg.coord
            )
        finally:
            self.train(was_training)
        return matches

    def merge_lora(self) -> None:
        """Fold every LoRA update into its plain ``nn.Linear`` (exact up to float rounding; for export)."""
        for name, module in list(self.named_modules()):
            if isinstance(module, LoRALinear):
                parent_name, _, child = name.rpartition(".")
                setattr(self.get_submodule(parent_name), child, module.merged())
                self.lora_merged = True
