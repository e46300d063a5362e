"""``smatch convert``: the authors' ``best_model.pth`` -> our checkpoint folder, or ours -> their layout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from simplematch import outputs, runlock
from simplematch.errors import SimpleMatchError


def run_convert(
    checkpoint: Path,
    family: str,
    out: Path,
    *,
    img_size: int | None,
    backbone_weights: Path | None,
    to_official: bool,
    replace: bool = False,
    console: Any,
) -> dict[str, Any]:
    import torch

    from simplematch.checkpoint import load_checkpoint, save_checkpoint
    from simplematch.convert import convert_official, official_family
    from simplematch.convert import to_official as ours_to_official
    from simplematch.io import atomic_path, atomic_write_text

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
    model, cfg, report = convert_official(checkpoint, family, img_size, backbone_weights)
    # One writer per folder; the files appear together or not at all (a full disk leaves no empty folder).
    with runlock.hold(out), outputs.transaction():
        save_checkpoint(model, cfg, out)
        atomic_write_text(Path(out) / "convert_report.json", json.dumps(report, indent=2, default=str) + "\n")
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
