"""The one place for the rules every command and the Python API share: output paths, numbers, choices.

Each check raises :class:`~simplematch.errors.SimpleMatchError` (one line naming the problem and the fix;
the CLI prints it and exits 2) and creates nothing, so a command that validates everything first leaves
nothing behind when it refuses. Torch-free.

Output rules (one rule, written once):
* an output is never one of the command's inputs (same file, however spelled);
* an existing file or a non-empty folder is only replaced with ``force=True`` (``--force``);
* the nearest existing ancestor must be a writable folder (the output is created later, atomically).

Folders are never created here: :mod:`simplematch.files` makes them when it writes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from simplematch.errors import SimpleMatchError
from simplematch.geometry import feature_side

PathLike = str | os.PathLike


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def _nearest_existing(path: Path) -> Path:
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def writable_base(path: PathLike, flag: str, *, folder: bool = False) -> None:
    """The folder that will hold ``path`` (``folder``: ``path`` itself) exists or can be created there."""
    path = Path(path)
    if not folder and path.exists() and not os.access(path, os.W_OK):
        raise SimpleMatchError(f"cannot write {flag} {path}: it is read-only", "choose a writable path")
    base = _nearest_existing(path if folder else path.parent)
    if not base.is_dir():
        raise SimpleMatchError(f"cannot write {flag} {path}: {base} is not a folder", "choose another path")
    if not os.access(base, os.W_OK):
        raise SimpleMatchError(
            f"cannot write {flag} {path}: {base} is not writable", "choose a writable path"
        )


def _not_an_input(path: Path, flag: str, inputs: Iterable[PathLike | None]) -> None:
    for given in inputs:
        if given is None:
            continue
        given = Path(given)
        if _same(path, given) or (given.is_dir() and _inside(path, given) and path.exists()):
            raise SimpleMatchError(
                f"{flag} {path} is one of this command's inputs ({given}); writing it would destroy it",
                f"pass another {flag} path",
            )


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def output_file(
    path: PathLike | None,
    flag: str,
    *,
    suffixes: Sequence[str] | None = None,
    inputs: Iterable[PathLike | None] = (),
    force: bool = False,
) -> Path | None:
    """A file the command will write (atomically, later): checked now, nothing created. ``None`` passes."""
    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        raise SimpleMatchError(f"{flag} {path} is a folder", "pass a file name")
    if suffixes and path.suffix.lower() not in suffixes:
        example = path.with_suffix(suffixes[0]).name if path.name else f"out{suffixes[0]}"
        raise SimpleMatchError(f"{flag} {path} must end in {' or '.join(suffixes)}", f"pass e.g. {example}")
    _not_an_input(path, flag, inputs)
    if path.exists() and not force:
        raise SimpleMatchError(
            f"{flag} {path} already exists", "pass --force to overwrite it, or choose another path"
        )
    writable_base(path, flag)
    return path


def output_dir(
    path: PathLike,
    flag: str,
    *,
    inputs: Iterable[PathLike | None] = (),
    force: bool = False,
    what: str = "folder",
    scanned: Iterable[PathLike | None] = (),
) -> Path:
    """A folder the command will fill: a non-empty one is only reused with ``force``. Nothing created.

    ``scanned``: input folders the command reads recursively; an output folder inside one is refused, since
    its files would become inputs of the next run over that folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SimpleMatchError(f"{flag} {path} is a file", "pass a folder path")
    for folder in scanned:
        if folder is not None and _inside(path, Path(folder)):
            raise SimpleMatchError(
                f"{flag} {path} lies inside {folder}, which this command reads recursively: its files would"
                " become inputs",
                f"pass a {flag} folder outside {folder}",
            )
    for given in inputs:
        if given is not None and (_same(path, Path(given)) or _inside(Path(given), path)):
            raise SimpleMatchError(
                f"{flag} {path} holds this command's input {given}; writing there would destroy it",
                f"pass another {flag} folder",
            )
    if path.is_dir() and any(path.iterdir()) and not force:
        raise SimpleMatchError(
            f"{flag} {path} already exists and is not empty",
            "pass --force to replace it, or choose a new folder"
            + (" (or --resume it)" if what == "run" else ""),
        )
    writable_base(path, flag, folder=True)
    return path


CHECKPOINT_FIX = "pass a folder made by `smatch train` or `smatch convert`"


def checkpoint_dir(path: PathLike) -> Path:
    """A checkpoint folder to read: it exists and holds ``model.safetensors``."""
    path = Path(path)
    if not (path / "model.safetensors").is_file():
        what = (
            "checkpoint folder not found"
            if not path.is_dir()
            else "no model.safetensors in checkpoint folder"
        )
        raise SimpleMatchError(f"{what}: {path}", CHECKPOINT_FIX)
    return path


def number(
    value: Any,
    flag: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
    fix: str | None = None,
) -> Any:
    """A finite number within [low, high] (``*_open`` excludes the bound); ``None`` passes through."""
    if value is None:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (isinstance(value, int) or not integer) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
        rule = " and ".join(s for s in (lo, hi) if s) or "finite"
        kind = "an integer" if integer else "a number"
        raise SimpleMatchError(
            f"{flag} {value!r} is invalid: must be {kind} {rule}", fix or f"pass {flag} {rule}"
        )
    return value


def choice(value: Any, flag: str, choices: Sequence[Any]) -> Any:
    if value not in choices:
        raise SimpleMatchError(f"{flag} {value!r} is not valid", f"use one of {', '.join(map(str, choices))}")
    return value


def alphas(values: Sequence[float] | None, default: Sequence[float]) -> tuple[float, ...]:
    """PCK thresholds: each in (0, 1] (alpha scales the object/image size; 0 or > 1 gives 0 or 100 %)."""
    chosen = tuple(values) if values else tuple(default)
    for a in chosen:
        number(
            a, "--alpha", low=0, high=1, low_open=True, fix="pass PCK thresholds in (0, 1], e.g. --alpha 0.1"
        )
    if len(set(chosen)) != len(chosen):
        raise SimpleMatchError(f"--alpha repeats a value ({', '.join(map(str, chosen))})", "give each once")
    return chosen


def memory_lower_bound(cfg: Any, batch: int, *, training: bool) -> int:
    """Bytes that one step of ``cfg`` needs at the very least: the two input images and the two fine
    feature maps (float32), twice when training (activations + gradients), plus a ViT's resampled position
    table. The true need is several times larger; this only catches sizes that cannot possibly fit."""
    s = cfg.img_size
    # Channels of the 1/4 map: the decoder width, or a lower bound of it (ResNet: align_dim; ViT: 384, the
    # width of ViT-S, the smallest timm ViT the presets use).
    channels = cfg.decoder_dim or (cfg.align_dim if cfg.family == "resnet" else 384)
    per_image = 3 * s * s + channels * feature_side(s) ** 2
    need = 2 * batch * per_image * 4 * (2 if training else 1)
    if cfg.family == "vit":
        need += (s // 14 + 1) ** 2 * 384 * 4  # the position table at its finest patch (14 px)
    return need


def available_memory(device: str) -> tuple[int, str]:
    """(bytes available now, where: the device and its total size) on ``device`` (``cpu`` or ``cuda[:i]``).

    The message names the total, not the free amount, so it reads the same from run to run."""
    gib = 2**30
    if str(device).startswith("cuda"):
        import torch

        free, total = torch.cuda.mem_get_info(torch.device(device))
        return int(free), f"{device} ({total / gib:.0f} GiB)"
    import psutil

    mem = psutil.virtual_memory()
    return int(mem.available), f"RAM ({mem.total / gib:.0f} GiB)"


def check_memory(cfg: Any, batch: int, device: str, *, training: bool) -> None:
    """Refuse up front a size that cannot fit (instead of the kernel killing the process minutes later)."""
    need = memory_lower_bound(cfg, batch, training=training)
    have, what = available_memory(device)
    if need > have:
        gib = 2**30
        raise SimpleMatchError(
            f"img_size {cfg.img_size} with batch {batch} needs at least {need / gib:.1f} GiB,"
            f" more than is free in {what}",
            "lower --img-size or --batch-size",
        )


def window(k: int | None, map_side: int, flag: str = "--window") -> int | None:
    """A fine-window override: 0 (whole map) up to the feature-map side. A larger window is the whole map
    in disguise (the clamp makes them equal), so it is refused rather than reported under its own name."""
    if k is None:
        return None
    if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= map_side:
        raise SimpleMatchError(
            f"{flag} {k!r} does not fit the {map_side}x{map_side} feature map",
            f"pass 0 (whole map) to {map_side}",
        )
    return k
