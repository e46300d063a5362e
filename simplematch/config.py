"""Configuration as data: one typed, flat config and a table of presets.

``Config`` is a dataclass; :func:`resolve_config` starts from a preset, applies overrides, rejects unknown
keys and checks values. The resolved config is written as ``config.json`` next to every artefact
(checkpoints, exports, evaluation JSON), so any result can be reproduced from its folder alone.

This module is torch-free: the runtime reads configs stored in ONNX metadata with it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from simplematch.errors import SimpleMatchError
from simplematch.geometry import FEATURE_STRIDE

# The choices are types: Config's fields use them, Config.validate checks against them, and the CLI derives
# its choices from them (simplematch/cli/app.py), so each list is written once.
Finetune = Literal["frozen", "lora", "full"]
Coord = Literal["corner", "center"]
DatasetName = Literal["spair", "pfpascal", "pfwillow", "ap10k", "synthetic", "coco"]
Ap10kSplit = Literal["intra", "cross-species", "cross-family"]
LoraBlocks = Literal["last_half", "all"]
# PCK normalisers: target bbox, image side, keypoint extent, and the released code's PF-WILLOW computation.
ThresholdKind = Literal["bbox", "img", "kps", "released"]
Frame = Literal["resized", "original"]  # evaluation in the model's S x S frame or in original pixels
ExportFormat = Literal["onnx", "trt"]
OfficialFamily = Literal["dinov2_b14", "ibot_b16", "resnet101"]  # the authors' released checkpoints
# Match confidence cues, in the order the runtime computes them (simplematch.runtime.matching); the default
# was chosen by the AUROC table of docs/confidence.md (PF-WILLOW and held-out synthetic pairs, demo model).
# "calibrated" is P(correct) of the model's calibration (simplematch/calibration.py); a model without one
# falls back to "mass_ratio_cycle" and says so.
ConfidenceCue = Literal[
    "peak_cos", "peak_mass", "ratio", "cycle", "mass_cycle", "ratio_cycle", "mass_ratio_cycle", "calibrated"
]
DEFAULT_CONFIDENCE: ConfidenceCue = "calibrated"
# Split names on disk (``train`` and ``validation`` are accepted as aliases, simplematch.data.records).
Split = Literal["trn", "val", "test"]
SPLITS: tuple[str, ...] = typing.get_args(Split)
DEFAULT_ALPHAS: tuple[float, ...] = (0.05, 0.1, 0.15)  # PCK thresholds reported when none are given
# How `smatch transfer` combines several references' matches of one keypoint (simplematch.runtime.transfer).
TransferCombine = Literal["vote", "best", "mean"]
DEFAULT_TRANSFER_COMBINE: TransferCombine = "vote"
FINETUNE_MODES: tuple[str, ...] = typing.get_args(Finetune)
COORD_CONVENTIONS: tuple[str, ...] = typing.get_args(Coord)
DATASETS: tuple[str, ...] = typing.get_args(DatasetName)
AP10K_SPLITS: tuple[str, ...] = typing.get_args(Ap10kSplit)
THRESHOLD_KINDS: tuple[str, ...] = typing.get_args(ThresholdKind)
FRAMES: tuple[str, ...] = typing.get_args(Frame)
EXPORT_FORMATS: tuple[str, ...] = typing.get_args(ExportFormat)
OFFICIAL_FAMILIES: tuple[str, ...] = typing.get_args(OfficialFamily)
CONFIDENCE_CUES: tuple[str, ...] = typing.get_args(ConfidenceCue)
TRANSFER_COMBINES: tuple[str, ...] = typing.get_args(TransferCombine)
# COCO keypoints (your own data): the target annotation's bbox, like SPair-71k.
THRESHOLDS = {"spair": "bbox", "ap10k": "bbox", "pfpascal": "img", "pfwillow": "kps", "synthetic": "img",
              "coco": "bbox"}  # fmt: skip


def backbone_family(backbone: str) -> str:
    """``"vit"`` or ``"resnet"`` for a timm model name (the two decoder designs of the paper)."""
    name = backbone.lower()
    if name.startswith(("vit_", "deit", "eva")):
        return "vit"
    if "resnet" in name or name.startswith(("resnext", "regnet")):
        return "resnet"
    raise SimpleMatchError(
        f"unknown backbone family for '{backbone}'",
        "use a timm ViT (e.g. vit_base_patch14_dinov2, vit_base_patch16_224)"
        " or ResNet (e.g. resnet101, resnet18)",
    )


@dataclass
class Config:
    """Every setting of a run. Field groups: model, matching, data, training."""

    # --- model -------------------------------------------------------------------------------------
    backbone: str = "vit_base_patch14_dinov2"  # any timm ViT or ResNet name
    img_size: int = 252  # square input side; ViTs are built at this size (pos-embed resampled once)
    # `smatch convert --any-img-size`: an official file imported at a size none of the released configs of
    # its family uses (the files do not record their training size), chosen by the user.
    img_size_user_chosen: bool = False
    weights: str | None = None  # local pretrained backbone file (.pth/.safetensors); never downloaded
    init: str | None = None  # start from this run's whole model (smatch train --init RUN), not its optimiser
    finetune: Finetune = "lora"
    lora_rank: int = 16
    lora_alpha: float = 1.0  # scale = alpha / rank = 1/16, as the released code (loralib defaults)
    lora_blocks: LoraBlocks = "last_half"  # which ViT blocks get LoRA on mlp.fc2
    decoder_dim: int | None = None  # decoder width; None = encoder width (ViT) / align_dim (ResNet)
    align_dim: int = 512  # ResNet: every feature level is aligned to this many channels by 1x1 convs
    dropout: float = 0.3  # ViT: dropout on the tokens before the decoder (training only)
    multiscale: bool = False  # extra heads at coarse and mid resolution (paper eq. 14)
    # --- matching ----------------------------------------------------------------------------------
    windows: list[int] = field(default_factory=lambda: [0, 15, 45])  # coarse, mid, fine; 0 = whole map
    beta: float = 0.02  # soft-argmax temperature
    coord: Coord = "corner"  # cell i -> pixel i*s (released code) | centre: (i + 0.5)*s
    # --- data --------------------------------------------------------------------------------------
    dataset: DatasetName = "spair"
    data_root: str | None = None
    ap10k_split: Ap10kSplit = "intra"
    augment: bool = True
    synthetic_pairs: int = 2000  # synthetic dataset: training pairs per epoch
    synthetic_val_pairs: int = 64
    # COCO keypoints (--dataset coco; simplematch/data/coco_pairs.py): image folder, least common visible
    # keypoints per pair, a user pair list, the seeded image split, and the per-image pair bound.
    coco_images: str | None = None
    coco_min_common: int = 3
    coco_pairs: str | None = None
    coco_split_seed: int = 0
    coco_split_fractions: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    coco_max_pairs_per_image: int | None = None
    # --- training ----------------------------------------------------------------------------------
    lr: float = 6e-4
    step_size: int = 800  # StepLR step, counted in iterations
    gamma: float = 0.95
    batch_size: int = 8
    epochs: int = 10
    max_steps: int | None = None  # stop after this many optimisation steps (overrides epochs)
    val_pairs: int | None = None  # evaluate on at most this many validation pairs (None = all)
    eval_every: int | None = None  # validate every N steps (None = once per epoch)
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"
    # fp32 as released; mixed precision (CUDA only) rounds cosine similarities to fp16, i.e. ~0.025 noise on
    # the logits at beta = 0.02, so it is an explicit opt-in (`smatch train --amp`).
    amp: bool = False
    # --- confidence --------------------------------------------------------------------------------
    # Written by `smatch calibrate` (simplematch.calibration.Calibration.to_dict): P(correct) from the cues.
    calibration: dict[str, Any] | None = None

    # ------------------------------------------------------------------------------------------------
    @property
    def family(self) -> str:
        return backbone_family(self.backbone)

    @property
    def fine_window(self) -> int:
        return self.windows[-1]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def save(self, path: str | Path) -> None:
        from simplematch.files import atomic_write_text

        atomic_write_text(Path(path), self.to_json() + "\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> Config:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SimpleMatchError(
                f"{source}: unknown config key(s) {', '.join(unknown)}",
                f"remove them; valid keys are listed in simplematch/config.py ({', '.join(sorted(known))})",
            )
        cfg = cls(**data)
        cfg.validate()
        return cfg

    @classmethod
    def load(cls, path: str | Path) -> Config:
        path = Path(path)
        if not path.is_file():
            raise SimpleMatchError(
                f"missing config file {path}", "point at a checkpoint folder made by `smatch train`"
            )
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise SimpleMatchError(
                f"{path} is not valid JSON ({err})", "restore config.json from the run"
            ) from err
        if not isinstance(data, dict):
            raise SimpleMatchError(f"{path} must hold a JSON object", "restore config.json from the run")
        return cls.from_dict(data, source=str(path))

    def validate(self) -> None:
        """Types first (a JSON config can hold anything), then ranges; each message names the fix."""
        _check_types(self)

        def bad(key: str, why: str, fix: str) -> SimpleMatchError:
            return SimpleMatchError(f"config {key}={getattr(self, key)!r}: {why}", fix)

        def finite(key: str) -> bool:
            return math.isfinite(getattr(self, key))

        self.family  # noqa: B018 - raises for an unknown backbone family
        if self.finetune not in FINETUNE_MODES:
            raise bad(
                "finetune", "unknown mode", f"use one of {', '.join(FINETUNE_MODES)} ({_where('finetune')})"
            )
        if self.coord not in COORD_CONVENTIONS:
            raise bad(
                "coord",
                "unknown convention",
                f"use one of {', '.join(COORD_CONVENTIONS)} ({_where('coord')})",
            )
        if self.dataset not in DATASETS:
            raise bad("dataset", "unknown dataset", f"use one of {', '.join(DATASETS)}")
        if self.ap10k_split not in AP10K_SPLITS:
            raise bad("ap10k_split", "unknown split", f"use one of {', '.join(AP10K_SPLITS)}")
        example = 252 if self.family == "vit" else 256  # ViT: a multiple of the patch (14 or 16) and of 4
        if self.img_size < 32:
            raise bad("img_size", "must be an integer >= 32", f"pass e.g. --img-size {example}")
        if self.img_size % FEATURE_STRIDE:
            raise bad(
                "img_size",
                f"must be divisible by {FEATURE_STRIDE} (the fine head is at exactly 1/{FEATURE_STRIDE})",
                f"pass e.g. --img-size {example}",
            )
        if len(self.windows) != 3 or any(k < 0 for k in self.windows):
            raise bad(
                "windows", "needs three integers >= 0 (coarse, mid, fine; 0 = whole map)",
                f"e.g. [0, 15, 45] ({_where('windows')}; --window sets the fine one)",
            )  # fmt: skip
        if not finite("beta") or self.beta <= 0:
            raise bad("beta", "must be a finite number > 0", f"use the paper's 0.02 ({_where('beta')})")
        if self.batch_size < 1:
            raise bad("batch_size", "must be >= 1", "pass a positive --batch-size")
        if self.epochs < 1:
            raise bad("epochs", "must be >= 1", "pass a positive --epochs")
        if self.max_steps is not None and self.max_steps < 1:
            raise bad("max_steps", "must be >= 1", "pass a positive --max-steps")
        if not finite("lr") or self.lr <= 0:
            raise bad("lr", "must be a finite number > 0", "pass a positive --lr, e.g. --lr 6e-4")
        if not finite("gamma") or not 0 < self.gamma <= 1:
            raise bad("gamma", "must be in (0, 1]", f"use the released 0.95 ({_where('gamma')})")
        if self.step_size < 1:
            raise bad(
                "step_size", "must be >= 1 (iterations per LR step)", f"e.g. 800 ({_where('step_size')})"
            )
        if not finite("dropout") or not 0 <= self.dropout < 1:
            raise bad("dropout", "must be in [0, 1)", f"use the released 0.3 ({_where('dropout')})")
        if self.lora_rank < 1:
            raise bad("lora_rank", "must be >= 1", f"use 16 as the paper ({_where('lora_rank')})")
        if not finite("lora_alpha") or self.lora_alpha <= 0:
            raise bad(
                "lora_alpha", "must be a finite number > 0", f"use the released 1.0 ({_where('lora_alpha')})"
            )
        for key in ("synthetic_pairs", "synthetic_val_pairs", "val_pairs", "eval_every", "decoder_dim"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise bad(key, "must be >= 1", f"pass a positive value ({_where(key)})")
        if self.coco_min_common < 1:
            raise bad("coco_min_common", "must be >= 1", "pass --min-common 1 or more (default 3)")
        if self.init is not None and self.weights is not None:
            raise bad(
                "init",
                "--init loads the whole model, so --weights would be overwritten",
                "pass --init RUN alone (or --weights for a new model from a pretrained backbone)",
            )
        if self.num_workers < 0:
            raise bad("num_workers", "must be >= 0", f"pass 0 or more ({_where('num_workers')})")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise bad("device", "unknown device", "pass --device auto, cpu or cuda")
        if self.calibration is not None:
            from simplematch.calibration import Calibration

            Calibration.from_dict(self.calibration, source="config calibration")


# Config keys that `smatch train` has a flag for; every other key is set in a --config JSON file.
CLI_FLAGS = ("dataset", "data_root", "backbone", "weights", "img_size", "batch_size", "epochs", "max_steps",
             "lr", "seed", "device", "ap10k_split", "init")  # fmt: skip
# COCO keys whose flag drops the prefix (`--min-common`, ...): the same flags in train, eval and stats.
COCO_FLAGS = {"coco_images": "--images", "coco_min_common": "--min-common", "coco_pairs": "--pairs",
              "coco_split_seed": "--split-seed", "coco_split_fractions": "--split-fractions",
              "coco_max_pairs_per_image": "--max-pairs-per-image"}  # fmt: skip


def _where(key: str) -> str:
    if key in COCO_FLAGS:
        return COCO_FLAGS[key]
    return f"--{key.replace('_', '-')}" if key in CLI_FLAGS else f'set "{key}" in a --config JSON file'


def _type_ok(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return value in args
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in args)
    if hint is type(None):
        return value is None
    if origin is dict:
        return isinstance(value, dict)
    if origin is list:
        return isinstance(value, list) and all(_type_ok(v, args[0]) for v in value)
    if hint is float:  # JSON has one number type: 1 is a valid float, True is not
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _check_types(cfg: Config) -> None:
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if not _type_ok(value, hints[f.name]):
            hint = hints[f.name]
            if typing.get_origin(hint) is Literal:
                raise SimpleMatchError(
                    f"config {f.name}={value!r}: unknown choice",
                    f"use one of {', '.join(map(str, typing.get_args(hint)))} ({_where(f.name)})",
                )
            want = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
            raise SimpleMatchError(
                f"config {f.name}={value!r}: must be of type {want}", f"fix the value ({_where(f.name)})"
            )


# One line per preset: the authors' released configs. Where the paper's text (section 4.1)
# says otherwise, the released code wins and PAPER_TEXT_DIFFERS says where (shown by `smatch presets`).
_VIT_B14 = dict(backbone="vit_base_patch14_dinov2", finetune="lora", windows=[0, 15, 45], multiscale=False)
_IBOT_B16 = dict(backbone="vit_base_patch16_224", finetune="full", windows=[0, 15, 45], multiscale=False)
_R101 = dict(backbone="resnet101", finetune="full", windows=[0, 15, 30], multiscale=True)
# fmt: off
PRESETS: dict[str, dict[str, Any]] = {
    "dinov2_b14_252_spair":    {**_VIT_B14, "img_size": 252, "dataset": "spair", "lr": 6e-4, "step_size": 800, "gamma": 0.95, "batch_size": 8, "epochs": 10},  # noqa: E501
    "dinov2_b14_448_spair":    {**_VIT_B14, "img_size": 448, "dataset": "spair", "lr": 6e-4, "step_size": 800, "gamma": 0.95, "batch_size": 8, "epochs": 10},  # noqa: E501
    "dinov2_b14_252_pfpascal": {**_VIT_B14, "img_size": 252, "dataset": "pfpascal", "lr": 1e-4, "step_size": 200, "gamma": 0.95, "batch_size": 16, "epochs": 100},  # noqa: E501
    "dinov2_b14_448_pfpascal": {**_VIT_B14, "img_size": 448, "dataset": "pfpascal", "lr": 1e-4, "step_size": 200, "gamma": 0.95, "batch_size": 8, "epochs": 100},  # noqa: E501
    "dinov2_b14_448_ap10k":    {**_VIT_B14, "img_size": 448, "dataset": "ap10k", "lr": 6e-5, "step_size": 2000, "gamma": 0.95, "batch_size": 8, "epochs": 10},  # noqa: E501
    "ibot_b16_256_spair":      {**_IBOT_B16, "img_size": 256, "dataset": "spair", "lr": 1e-5, "step_size": 800, "gamma": 0.95, "batch_size": 8, "epochs": 10},  # noqa: E501
    "ibot_b16_256_pfpascal":   {**_IBOT_B16, "img_size": 256, "dataset": "pfpascal", "lr": 1e-5, "step_size": 100, "gamma": 0.95, "batch_size": 8, "epochs": 100},  # noqa: E501
    "resnet101_256_spair":     {**_R101, "img_size": 256, "dataset": "spair", "lr": 3e-5, "step_size": 800, "gamma": 0.9, "batch_size": 16, "epochs": 10},  # noqa: E501
    "resnet101_256_pfpascal":  {**_R101, "img_size": 256, "dataset": "pfpascal", "lr": 3e-5, "step_size": 200, "gamma": 0.95, "batch_size": 16, "epochs": 100},  # noqa: E501
    # Small CNN trained from scratch on synthetic warps: learns in minutes on 2 CPU cores (no weights needed).
    "demo_cpu": dict(backbone="resnet18", finetune="full", img_size=128, align_dim=64, multiscale=True, windows=[0, 9, 15], dataset="synthetic", lr=1e-3, step_size=100, gamma=0.95, batch_size=8, epochs=1, max_steps=400, augment=True, dropout=0.0, synthetic_pairs=800, synthetic_val_pairs=64, eval_every=100),  # noqa: E501
}
# fmt: on
DEFAULT_PRESET = "dinov2_b14_252_spair"

# Where the paper's text (section 4.1) and the released configs disagree; the presets follow the code.
PAPER_TEXT_DIFFERS: dict[str, str] = {
    "dinov2_b14_448_ap10k": "text: lr 6e-4 for AP-10K; released config: 6e-5",
    "ibot_b16_256_spair": "text: lr 6e-4 for SPair-71k (nothing iBOT-specific); released config: 1e-5",
    "ibot_b16_256_pfpascal": "text: lr 1e-4, step 200 (nothing iBOT-specific); released: 1e-5, step 100",
    "resnet101_256_spair": "text: lr 6e-4, gamma 0.95; released config: lr 3e-5, gamma 0.9",
    "resnet101_256_pfpascal": "text: lr 1e-4; released config: lr 3e-5",
}


def preset_names() -> list[str]:
    return list(PRESETS)


def resolved_presets() -> dict[str, dict[str, Any]]:
    """Every preset resolved to its full config dict (what `smatch presets --json` prints)."""
    return {name: resolve_config(name).to_dict() for name in PRESETS}


def resolve_config(preset: str | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Preset (default :data:`DEFAULT_PRESET`) + overrides (``None`` values ignored) -> validated config."""
    name = preset or DEFAULT_PRESET
    if name not in PRESETS:
        raise SimpleMatchError(f"unknown preset '{name}'", f"use one of {', '.join(PRESETS)}")
    data = dict(PRESETS[name])
    for key, value in (overrides or {}).items():
        if value is not None:
            data[key] = value
    return Config.from_dict(data, source=f"preset {name}")
