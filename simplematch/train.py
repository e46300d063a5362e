"""Training loop (``smatch train``): Adam + per-iteration StepLR, multi-scale L2 loss, best-by-val-PCK.

Output folder::

    config.json          resolved config (written first; ``--resume`` reads it back)
    model.safetensors    best weights by validation PCK@0.1  (+ best.json: step, epoch, pck)
    metrics.jsonl        one JSON object per logged step / validation
    last.json            pointer to the newest complete resumable checkpoint ``ckpt-<step>/``
    ckpt-<step>/         model.safetensors + state.pt (optimiser, scheduler, scaler, step, RNG states)

Fault tolerance: every file is written atomically and ``last.json`` is switched only after a checkpoint
folder is complete, so a run killed at any moment resumes from the last complete one. SIGINT/SIGTERM
finish the current step, save, and exit with a message saying how to resume. A non-finite loss stops the
run before anything is saved from the bad step.

Determinism: the batch order of epoch ``e`` comes from a generator seeded with ``(seed, e)`` and the
augmentation of item ``i`` from ``(seed, e, i)``; dropout uses the global torch RNG, saved with the
checkpoint. So N steps == N/2 steps + resume + N/2 steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import pickle
import random
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from torch.utils.data import DataLoader

from simplematch import distributed as dist_utils
from simplematch import runlock, signals, validate
from simplematch.checkpoint import WEIGHTS_NAME, load_model_weights, save_checkpoint
from simplematch.config import COCO_FLAGS, THRESHOLDS, Config
from simplematch.data import load_records
from simplematch.data.dataset import PairDataset, collate_pairs, train_transforms
from simplematch.data.load import load_records_with_info
from simplematch.errors import SimpleMatchError
from simplematch.evaluation.torch_predictor import evaluate_model
from simplematch.files import atomic_path, atomic_write_text, make_dir
from simplematch.matching import keypoint_loss
from simplematch.progress import progress_bar
from simplematch.provenance import stamped
from simplematch.signals import Interrupted

TRAIN_SPLIT = "trn"
VAL_SPLIT = "val"


def select_device(name: str) -> torch.device:
    """``auto`` / ``cpu`` / ``cuda[:i]`` as a torch device; a GPU that is not there is one line."""
    from simplematch.resources import probe_device

    return torch.device(probe_device(name))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every global RNG state in types ``torch.load(weights_only=True)`` accepts (no numpy arrays)."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {**np_state, "state": {**np_state["state"], "key": np_state["state"]["key"].tolist()}},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_to_tuple(state["python"]))
    np_state = state["numpy"]
    np.random.set_state(
        {**np_state, "state": {**np_state["state"], "key": np.asarray(np_state["state"]["key"], np.uint32)}}
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_tuple(x: Any) -> Any:
    return tuple(_to_tuple(v) for v in x) if isinstance(x, list | tuple) else x


@dataclass
class TrainResult:
    status: str  # "finished" | "interrupted"
    step: int
    best: dict[str, Any] | None
    out_dir: Path
    seconds: float
    signum: int | None = None  # the signal that interrupted the run


class _StopFlag:
    """SIGINT/SIGTERM set a flag; the loop saves a resumable checkpoint at the end of the current step.

    During a validation (``abortable``) the signal also raises at once: a validation changes nothing that
    a checkpoint holds, and a full one can take minutes, so it is dropped and redone on resume."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.abortable = False

    def __call__(self, signum: int, _frame: Any) -> None:
        self.signum = signum
        if self.abortable:
            self.abortable = False
            raise Interrupted(signum)


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Shuffled, rank-sharded batches for one epoch (deterministic in seed and epoch).

    The last batch may be short (``drop_last=False``, as the released DataLoader), so every pair is seen.
    """
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=gen).tolist()
    world = dist_utils.world_size()
    # Every rank must get the same number of batches, or DDP's gradient all-reduce waits forever on the
    # rank with one batch more: drop the remainder of n / world (different pairs each epoch).
    perm = perm[: len(perm) - len(perm) % world][dist_utils.rank() :: world]
    return [perm[i : i + batch_size] for i in range(0, len(perm), batch_size)]


def multiscale_loss(
    preds: list[torch.Tensor], trg_kps: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Eq. 14: the equal-weight sum of the per-head losses (eq. 13), in float32 -> (total, per head)."""
    losses = [keypoint_loss(p.float(), trg_kps, valid) for p in preds]
    return torch.stack(losses).sum(), losses


def build_optimizer(model: torch.nn.Module, cfg: Config) -> tuple[torch.optim.Optimizer, Any]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    sched = torch.optim.lr_scheduler.StepLR(
        opt, step_size=cfg.step_size, gamma=cfg.gamma
    )  # stepped per iteration
    return opt, sched


def _save_resumable(
    out: Path, model: torch.nn.Module, cfg: Config, state: dict[str, Any], step: int, validated: bool = True
) -> None:
    """Write ckpt-<step>/ completely, then switch last.json to it, then drop older checkpoint folders.

    ``validated`` False: the step's validation was interrupted (last.json says so; a resume redoes it)."""
    ckpt = out / f"ckpt-{step:08d}"
    if ckpt.exists():
        shutil.rmtree(ckpt)
    save_checkpoint(model, cfg, ckpt)
    with atomic_path(ckpt / "state.pt") as tmp:
        torch.save(state, tmp)
    pointer = {"checkpoint": ckpt.name, "step": step, **({} if validated else {"validated": False})}
    atomic_write_text(out / "last.json", json.dumps(stamped(pointer, "train_last")) + "\n")
    for old in out.glob("ckpt-*"):
        if old != ckpt and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)


def load_resume_state(out: Path) -> tuple[Path, dict[str, Any]]:
    pointer = out / "last.json"
    if not pointer.is_file():
        raise SimpleMatchError(
            f"{out} has no last.json", "resume a folder written by `smatch train` (or start anew)"
        )
    try:
        name = json.loads(pointer.read_text())["checkpoint"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise SimpleMatchError(f"{pointer} is malformed", "delete it and restart the run") from err
    ckpt = out / str(name)
    try:
        state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # weights_only=True met a pickled object: never execute it
        raise SimpleMatchError(
            f"refused to load {ckpt / 'state.pt'}: it holds Python objects other than tensors"
            " (weights_only=True)",
            "restart the run without --resume (the file was not written by `smatch train`)",
        ) from err
    except (OSError, RuntimeError, EOFError) as err:
        raise SimpleMatchError(
            f"cannot read {ckpt / 'state.pt'} ({err})", "restart the run without --resume"
        ) from err
    return ckpt, state


def _log(out: Path, row: dict[str, Any]) -> None:
    if dist_utils.is_main():
        with open(out / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")


def _truncate_metrics(out: Path, step: int) -> None:
    """On resume drop log lines written after the checkpoint we resume from (they will be redone)."""
    path = out / "metrics.jsonl"
    if not path.is_file() or not dist_utils.is_main():
        return
    keep = [
        ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step
    ]
    atomic_write_text(path, "".join(k + "\n" for k in keep))


@dataclass
class _Run:
    """One training run: what setup builds, and the counters a checkpoint saves and a resume restores."""

    cfg: Config
    out: Path
    device: torch.device
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: Any
    scaler: torch.amp.GradScaler
    train_ds: PairDataset
    val_records: list
    created: bool  # the run made ``out`` (so a failed start may remove the whole folder)
    t0: float
    use_amp: bool  # mixed precision: asked for and on CUDA
    ddp_model: torch.nn.Module  # ``model`` itself, or its DDP wrapper once wrapped
    total: int  # steps of the whole run
    eval_every: int  # steps between validations (and resumable checkpoints)
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best: dict[str, Any] | None = None
    started: dict[str, Any] | None = None  # --init: where the weights came from (init.json)
    pending_validation: bool = False  # this step's validation was interrupted: redo it on resume


def train(
    cfg: Config,
    out_dir: str | Path,
    *,
    resume: bool = False,
    replace: bool = False,
    console: Any = None,
    show_progress: bool = True,
) -> TrainResult:
    """Train ``cfg`` into ``out_dir`` (see module docstring). Returns how the run ended.

    ``replace`` (``--force``): ``out_dir`` holds an earlier run, whose files are removed once the inputs
    are known to be valid (just before the first write), so no stale checkpoint can be resumed later.
    """
    t0 = time.time()
    out = Path(out_dir)
    # One process writes a run folder (a second `smatch train --out SAME` is refused); ranks of one
    # torchrun job share the main rank's lock.
    lock = runlock.hold(out) if dist_utils.launched_as_main() else contextlib.nullcontext()
    with lock, dist_utils.joined(select_device(cfg.device)) as device:
        # Fail before the slow set-up; the folder itself is created once inputs are valid.
        validate.writable_base(out, "--out", folder=True)
        train_records, val_records, data_info = _load_splits(cfg)
        if data_info and console is not None and dist_utils.is_main():
            console.print(_describe_data(data_info), soft_wrap=True)
        # Built (and rich imported, which draws from `random` at import) before seeding, so the RNG streams
        # do not depend on whether this process imported rich earlier: a resumed run must match a straight
        # one.
        progress = progress_bar(
            console,
            enabled=show_progress and dist_utils.is_main(),
            transient=False,
            extra="loss {task.fields[loss]:.3f}",
        )
        seed_everything(cfg.seed + dist_utils.rank())
        flag = _StopFlag()
        # From the first write on, a failure or a signal before the first checkpoint removes what this run
        # wrote; the signal handlers are in place before that write, so no phase is left uncovered.
        with _clean_up_failed_start(out, not resume, not out.exists()), signals.handled_by(flag):
            flag.abortable = not dist_utils.is_distributed()  # nothing to save yet: stop at once
            run = _setup(
                cfg, out, device, train_records, val_records, clear=replace and not resume, t0=t0,
                fresh=not resume,
            )  # fmt: skip
            if resume:
                _restore(run)
            else:
                _start_fresh(run, data_info)
            flag.abortable = False
            _wrap_ddp(run)
            with progress as bar:
                task = bar.add_task("train", total=run.total, completed=run.step, loss=float("nan"))
                status = _train_loop(run, flag, lambda loss: bar.update(task, completed=run.step, loss=loss))
    return TrainResult(
        status=status, step=run.step, best=run.best, out_dir=out, seconds=time.time() - t0,
        signum=flag.signum if status == "interrupted" else None,
    )  # fmt: skip


# ---- setup ---------------------------------------------------------------------------------------------
def _load_splits(cfg: Config) -> tuple[list, list, dict[str, Any]]:
    """(training records, validation records, what produced them (COCO: split and skipped annotations,
    written to data.json)); refuses a dataset or batch size that cannot train."""
    if cfg.dataset == "pfwillow":
        raise SimpleMatchError(
            "PF-WILLOW has no training split", "train on spair or pfpascal, evaluate on pfwillow"
        )

    coco = None
    if cfg.dataset == "coco":
        from simplematch.data.coco_pairs import CocoOptions

        coco = CocoOptions.from_config(cfg)
    info: dict[str, Any] = {}

    def records(split: str, synthetic_pairs: int) -> list:
        n_pairs = synthetic_pairs if cfg.dataset == "synthetic" else None
        # AP-10K trains on the intra-species trn split whatever --ap10k-split says (released); the chosen
        # split (intra / cross-species / cross-family) is the validation and test one.
        ap10k = "intra" if split == TRAIN_SPLIT else cfg.ap10k_split
        if coco is None:
            return load_records(
                cfg.dataset, cfg.data_root, split, ap10k_split=ap10k, seed=cfg.seed, n_pairs=n_pairs
            )
        recs, info[split] = load_records_with_info(cfg.dataset, cfg.data_root, split, coco=coco)
        return recs

    train_records = records(TRAIN_SPLIT, cfg.synthetic_pairs)
    val_records = records(VAL_SPLIT, cfg.synthetic_val_pairs)
    if cfg.val_pairs is not None:
        val_records = val_records[: cfg.val_pairs]
    if len(train_records) < cfg.batch_size * dist_utils.world_size():
        raise SimpleMatchError(
            f"only {len(train_records)} training pairs for batch size {cfg.batch_size}", "lower --batch-size"
        )
    return train_records, val_records, {k: v for k, v in info.items() if v}


def _describe_data(info: dict[str, Any]) -> str:
    """One console line: the pairs of each split and the annotations skipped (COCO)."""
    parts = [f"{split} {v['pairs']} pairs ({len(v['image_ids'])} images)" for split, v in info.items()]
    first = next(iter(info.values()))
    skipped = first["skipped_annotations"]
    return (
        f"{first['source']}: {', '.join(parts)}; {skipped} annotation(s) skipped with fewer than "
        f"{first['min_common']} visible keypoints; split: {first['mode']}, seed {first['split_seed']}"
    )


def _setup(
    cfg: Config, out: Path, device: torch.device, train_records: list, val_records: list, *, clear: bool,
    t0: float, fresh: bool = True,
) -> _Run:  # fmt: skip
    """Model (+ pretrained backbone, or a fresh run's --init weights, checked before the run folder is
    made), run folder, optimiser, scheduler, grad scaler and training set."""
    from simplematch.model import SimpleMatch
    from simplematch.weights import load_backbone_weights

    # A resumed run loads its own checkpoint, so the --init folder may have gone by then.
    kwargs = init_backbone_kwargs(cfg.init) if cfg.init and (fresh or Path(cfg.init).exists()) else None
    model = SimpleMatch(cfg, backbone_kwargs=kwargs)
    if cfg.weights:
        load_backbone_weights(model, cfg.weights)
    started = load_init(model, cfg.init) if cfg.init and fresh else None
    model = model.to(device)
    train_ds = PairDataset(
        train_records,
        cfg.img_size,
        augment=cfg.augment,
        seed=cfg.seed,
        threshold_kind=THRESHOLDS[cfg.dataset],
        transforms=train_transforms(cfg.dataset, cfg.backbone),  # the released pipeline of this dataset
    )
    created = not out.exists()
    if clear and not created:
        clear_run(out)
    make_dir(out)
    opt, sched = build_optimizer(model, cfg)
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    steps_per_epoch = len(epoch_batches(len(train_ds), cfg.batch_size, cfg.seed, 0))
    return _Run(
        cfg, out, device, model, opt, sched, scaler, train_ds, val_records, created, t0, use_amp, model,
        total=cfg.max_steps or cfg.epochs * steps_per_epoch, eval_every=cfg.eval_every or steps_per_epoch,
        started=started,
    )  # fmt: skip


def _wrap_ddp(run: _Run) -> None:
    """Under torchrun, gradients are all-reduced by DDP (wrapped after a resume loaded the weights)."""
    if dist_utils.is_distributed():
        run.ddp_model = torch.nn.parallel.DistributedDataParallel(
            run.model, device_ids=[run.device.index] if run.device.type == "cuda" else None
        )


# ---- restore -------------------------------------------------------------------------------------------
def _start_fresh(run: _Run, data_info: dict[str, Any]) -> None:
    """config.json, init.json (where --init weights came from) and data.json (the COCO split)."""
    started = run.started
    if dist_utils.is_main():
        run.cfg.save(run.out / "config.json")
        (run.out / "metrics.jsonl").unlink(missing_ok=True)
        for name, value in (("init.json", started), ("data.json", data_info or None)):
            if value is not None:
                atomic_write_text(run.out / name, json.dumps(value, indent=2) + "\n")
            else:
                (run.out / name).unlink(missing_ok=True)


def _init_weights(init: str) -> Path:
    from simplematch.checkpoint import resolve_weights

    return resolve_weights(init)


def init_backbone_kwargs(init: str) -> dict[str, Any]:
    """The extra timm arguments recorded in the ``--init`` checkpoint (tiny test models), else none."""
    from simplematch.checkpoint import backbone_kwargs

    return backbone_kwargs(_init_weights(init))


def load_init(model: torch.nn.Module, init: str) -> dict[str, Any]:
    """``--init RUN``: RUN's whole model (weights only; the optimiser state is ``--resume``'s), strictly.

    Returns what init.json records: the folder, the weights file and its sha256.
    """
    from simplematch.files import sha256_file

    weights = _init_weights(init)
    try:
        load_model_weights(model, weights)
    except SimpleMatchError as err:
        raise SimpleMatchError(
            f"--init {init}: {err.problem}",
            "drop --preset/--config/--backbone/--img-size so that --init takes its run's architecture, or "
            "pass the preset that run was trained with",
        ) from err
    return {"init": str(init), "weights": str(weights), "sha256": sha256_file(weights)}


def _restore(run: _Run) -> None:
    """Weights, optimiser, scheduler, scaler, counters and RNG states of the run's last checkpoint."""
    ckpt, state = load_resume_state(run.out)
    load_model_weights(run.model, ckpt / "model.safetensors")
    try:
        run.opt.load_state_dict(state["optimizer"])
        run.sched.load_state_dict(state["scheduler"])
        run.scaler.load_state_dict(state["scaler"])
        run.step, run.epoch = int(state["step"]), int(state["epoch"])
        run.batch_in_epoch = int(state["batch_in_epoch"])
        run.best = json.loads(state["best"]) if state.get("best") else None
        run.pending_validation = bool(state.get("pending_validation", False))
        set_rng_state(state["rng"][min(dist_utils.rank(), len(state["rng"]) - 1)])
    except (KeyError, ValueError, TypeError, IndexError, RuntimeError) as err:
        raise SimpleMatchError(
            f"{ckpt / 'state.pt'} does not fit this run ({type(err).__name__}: {err})",
            "resume with the config.json saved in the run folder, or restart without --resume",
        ) from err
    _truncate_metrics(run.out, run.step)
    if dist_utils.is_main():  # the run's config now carries the new --max-steps target
        run.cfg.save(run.out / "config.json")


# ---- loop and step -------------------------------------------------------------------------------------
def _train_loop(run: _Run, flag: _StopFlag, show: Any) -> str:
    """Epochs of steps, validating and checkpointing every ``eval_every``; "finished" or "interrupted"."""
    stop = False
    if run.pending_validation:  # the run was interrupted in a validation: redo it first
        stop = _validate_and_save(run, flag)
        if stop:
            return _interrupt(run)
    while run.step < run.total:
        batches = epoch_batches(len(run.train_ds), run.cfg.batch_size, run.cfg.seed, run.epoch)
        for batch in _epoch_loader(run, batches):
            loss, heads, stop_requested = _step(run, batch, flag)
            stop = stop or stop_requested
            show(loss)
            if run.step % 10 == 0 or run.step == 1:
                _log_step(run, loss, heads)
            if run.step % run.eval_every == 0 or run.step == run.total:
                stop = _validate_and_save(run, flag) or stop
            if stop or run.step >= run.total:
                break
        if stop:
            return _interrupt(run)
        if run.step < run.total and run.batch_in_epoch >= len(batches):
            run.epoch, run.batch_in_epoch = run.epoch + 1, 0
    return "finished"


def _validate_and_save(run: _Run, flag: _StopFlag) -> bool:
    """Validate, then save a resumable checkpoint; True when a signal came meanwhile (stop the run).

    A signal during the validation aborts it (see :class:`_StopFlag`); the checkpoint of this step is then
    saved as not validated, and a resume validates it first."""
    flag.abortable = not dist_utils.is_distributed()  # under DDP every rank must reach the same collectives
    try:
        _validate(run)
    except Interrupted:
        run.pending_validation = True
    finally:
        flag.abortable = False
    if not run.pending_validation:
        _save_state(run)
        return flag.signum is not None
    _save_state(run)
    return True


def _epoch_loader(run: _Run, batches: list[list[int]]) -> DataLoader:
    """The rest of this epoch's batches (all of them unless resuming mid-epoch); model in train mode."""
    if hasattr(run.train_ds, "set_epoch"):
        run.train_ds.set_epoch(run.epoch)
    # Own generator: creating a DataLoader iterator draws a base seed, and drawing it from the global
    # torch RNG (which dropout uses) would make a resumed run diverge from an uninterrupted one.
    loader = DataLoader(
        run.train_ds, batch_sampler=batches[run.batch_in_epoch :], num_workers=run.cfg.num_workers,
        collate_fn=collate_pairs, generator=torch.Generator().manual_seed(run.cfg.seed * 100_003 + run.epoch),
    )  # fmt: skip
    run.ddp_model.train()
    return loader


def _step(run: _Run, batch: dict[str, Any], flag: _StopFlag) -> tuple[float, list[torch.Tensor], bool]:
    """One optimisation step (amp autocast, scaled backward) -> (mean loss over ranks, per-head losses,
    whether any rank was asked to stop). A non-finite loss raises before the weights change."""
    device = run.device
    src = batch["src_img"].to(device, non_blocking=True)
    trg = batch["trg_img"].to(device, non_blocking=True)
    src_kps, trg_kps, valid = (batch[k].to(device) for k in ("src_kps", "trg_kps", "valid"))
    with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=run.use_amp):
        preds = run.ddp_model(src, trg, src_kps)
    loss, losses = multiscale_loss(preds, trg_kps, valid)
    # One all-reduce carries the loss and the stop request, before backward: every rank then sees the same
    # NaN and the same Ctrl-C, so all stop at the same step instead of some waiting forever in DDP's
    # gradient all-reduce.
    loss_sum, stops = dist_utils.all_reduce_sum(
        [float(loss.detach()), float(flag.signum is not None)], device
    )
    loss_avg = loss_sum / dist_utils.world_size()
    if not math.isfinite(loss_avg):
        _refuse_non_finite(run, loss_avg)
    run.opt.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.step(run.opt)
    run.scaler.update()
    run.sched.step()
    run.step += 1
    run.batch_in_epoch += 1
    return loss_avg, losses, stops > 0


def _log_step(run: _Run, loss: float, heads: list[torch.Tensor]) -> None:
    row = {"step": run.step, "epoch": run.epoch, "loss": loss, "lr": run.sched.get_last_lr()[0]}
    row.update(head_losses=[float(x.detach()) for x in heads], time=round(time.time() - run.t0, 2))
    _log(run.out, row)


def _refuse_non_finite(run: _Run, loss: float) -> NoReturn:
    last = _last_checkpoint(run.out)
    kept = f"the last good checkpoint {last} is intact" if last else "no checkpoint was saved yet"
    raise SimpleMatchError(
        f"loss became {loss} at step {run.step + 1}; {kept}",
        "lower --lr (or check the data), then resume with `smatch train --resume` or restart",
    )


# ---- validate, save, interrupt -------------------------------------------------------------------------
def _validate(run: _Run) -> dict[str, Any]:
    """Validation PCK, logged; a new best (by PCK@0.1) is saved as the run's model + best.json."""
    run.pending_validation = False
    cfg = run.cfg
    preds: list = []
    res = evaluate_model(
        run.model, cfg, run.val_records, dataset=cfg.dataset, split=VAL_SPLIT, batch_size=cfg.batch_size,
        device=run.device, predictions=preds,
    )  # fmt: skip
    _log(run.out, {"step": run.step, "epoch": run.epoch, "val_pck": res["pck"], "val_pairs": res["pairs"]})
    score = res["pck"].get("0.1", float("nan"))
    if run.best is None or (not math.isnan(score) and score > run.best["pck"]["0.1"]):
        run.best = {"step": run.step, "epoch": run.epoch, "pck": res["pck"], "pairs": res["pairs"]}
        if dist_utils.is_main():
            save_checkpoint(run.model, _calibrated(cfg, preds, res), run.out)
            atomic_write_text(
                run.out / "best.json", json.dumps(stamped(run.best, "train_best"), indent=2) + "\n"
            )
    return res


def _calibrated(cfg: Config, preds: list, res: dict[str, Any]) -> Config:
    """The run's config with the calibration fitted on this validation's predictions (held-out pairs, the
    ones that chose the checkpoint), so a trained model's ``confidence`` is a probability from the start;
    unchanged when every validation point is right or every one wrong (nothing to fit)."""
    import datetime

    from simplematch import calibration
    from simplematch.metrics import confidence_points

    raw, ok, pair = confidence_points(preds, calibration.DEFAULT_ALPHA)
    if ok.all() or not ok.any():
        return cfg
    cal = calibration.fit(
        raw, ok, cfg.img_size, groups=pair, dataset=cfg.dataset, split=VAL_SPLIT, pairs=len(preds),
        date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        extra={"threshold": res["threshold"], "img_size": cfg.img_size, "source": "smatch train"},
    )  # fmt: skip
    return dataclasses.replace(cfg, calibration=cal.to_dict())


def _save_state(run: _Run) -> None:
    """A resumable checkpoint of this step (every rank's RNG states, gathered on the main rank)."""
    rngs = dist_utils.gather_objects(rng_state())
    if dist_utils.is_main():
        state = {
            "optimizer": run.opt.state_dict(),
            "scheduler": run.sched.state_dict(),
            "scaler": run.scaler.state_dict(),
            "step": run.step,
            "epoch": run.epoch,
            "batch_in_epoch": run.batch_in_epoch,
            "best": json.dumps(run.best) if run.best else "",
            "rng": rngs,
            "pending_validation": run.pending_validation,
        }
        _save_resumable(run.out, run.model, run.cfg, state, run.step, validated=not run.pending_validation)
    dist_utils.barrier()


def _interrupt(run: _Run) -> str:
    """SIGINT/SIGTERM: save a resumable checkpoint of the step just finished (unless one was just saved)."""
    if run.step % run.eval_every != 0 and run.step != run.total:
        _save_state(run)
    return "interrupted"


def _last_checkpoint(out: Path) -> str | None:
    try:
        return str(out / json.loads((out / "last.json").read_text())["checkpoint"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


@contextmanager
def _clean_up_failed_start(out: Path, fresh: bool, created: bool) -> Iterator[None]:
    """A fresh run that fails before its first checkpoint leaves nothing behind (no partial output).

    Once a checkpoint exists the folder is a resumable run and is kept whatever happens.
    """
    try:
        yield
    except BaseException:
        if fresh and dist_utils.is_main() and not (out / "last.json").exists():
            if created:
                shutil.rmtree(out, ignore_errors=True)
            else:  # a folder the user made: remove only what this run wrote
                for name in ("config.json", "metrics.jsonl", "init.json", "data.json"):
                    (out / name).unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------------------------------------------
# Run planning: everything `smatch train` decides before training, checked before anything is written.
RUN_FILES = ("config.json", "metrics.jsonl", "best.json", "last.json", "init.json", "data.json", WEIGHTS_NAME)


def plan_run(
    *,
    out: str | Path | None,
    resume: str | Path | None = None,
    preset: str | None = None,
    config_path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    window: int | None = None,
    max_steps: int | None = None,
    device: str | None = None,
    changed_flags: Sequence[str] = (),
    force: bool = False,
) -> tuple[Config, Path]:
    """(config, run folder) of a new run or of ``resume``; raises before anything is created.

    A new run starts from ``config_path`` or ``preset`` plus ``overrides`` (``None`` values ignored) and
    ``window`` (the fine head's). A resumed run keeps its saved config: only ``max_steps`` (the new
    total, beyond the step reached) and ``device`` may change, and ``changed_flags`` names any other
    option the user gave, which is refused.
    """
    from simplematch import validate
    from simplematch.config import resolve_config

    if resume is not None:
        cfg, run = _plan_resume(Path(resume), max_steps, device, changed_flags)
    else:
        if out is None:
            raise SimpleMatchError("no output folder given", "pass --out DIR (or --resume DIR)")
        given = {k: v for k, v in (overrides or {}).items() if v is not None}
        given.update({k: v for k, v in (("max_steps", max_steps), ("device", device)) if v is not None})
        if config_path is not None:
            if preset is not None:
                raise SimpleMatchError("--config and --preset both given", "pass one of them")
            base = Config.load(config_path).to_dict()
            if given.get("init") is not None and "weights" not in given:
                base["weights"] = None  # --init's safetensors holds the backbone the config's file would load
            cfg = Config.from_dict({**base, **given}, source=str(config_path))
        elif preset is None and given.get("init") is not None:
            cfg = _init_config(str(given["init"]), given)
        else:
            cfg = resolve_config(preset, given)
        if window is not None:
            cfg.windows = [*cfg.windows[:-1], window]
            cfg.validate()
        if cfg.init is not None:
            _init_weights(cfg.init)  # refuse a missing --init checkpoint before anything else
        run = validate.output_dir(
            out,
            "--out",
            inputs=[cfg.weights, cfg.data_root, config_path, cfg.init, cfg.coco_pairs, cfg.coco_images],
            force=force,
            what="run",
        )
    validate.check_memory(cfg, cfg.batch_size, cfg.device, training=True)
    return cfg, run


def _init_config(init: str, given: dict[str, Any]) -> Config:
    """``--init RUN`` without --preset/--config: RUN's config (its architecture and recipe) + the flags.

    ``weights`` is dropped: RUN's safetensors already holds the whole model, backbone included.
    """
    from simplematch.checkpoint import CONFIG_NAME

    folder = _init_weights(init).parent
    base = {**Config.load(folder / CONFIG_NAME).to_dict(), "weights": None, "max_steps": None}
    return Config.from_dict({**base, **given}, source=f"--init {init}")


# `smatch train` options that a resumed run keeps from its saved config, in the order a refusal names them
# (only --max-steps and --device may change on --resume).
_FIXED_ON_RESUME = (
    "out preset dataset data_root backbone weights img_size window batch_size epochs lr seed ap10k_split"
    " config force amp init"
).split() + [*COCO_FLAGS]


def plan_from_flags(
    *,
    out: Path | None,
    resume: Path | None,
    preset: str | None,
    config: Path | None,
    window: int | None,
    max_steps: int | None,
    device: str | None,
    force: bool,
    **options: Any,
) -> tuple[Config, Path]:
    """:func:`plan_run` from ``smatch train``'s options as the CLI parsed them (``None``: not given).

    ``options`` are the config overrides (``dataset``, ``data_root``, ..., ``amp``): choice enums become
    their value, paths strings, and ``amp=False`` (the flag's default) means "not given".
    """
    overrides = {k: v.value if isinstance(v, Enum) else str(v) if isinstance(v, Path) else v
                 for k, v in options.items()}  # fmt: skip
    overrides["amp"] = True if overrides.get("amp") else None
    if resume is None and any(overrides.get(k) is not None for k in COCO_FLAGS):
        from simplematch.data.coco_pairs import refuse_unused_flags

        refuse_unused_flags(_dataset_of(overrides, preset, config), overrides)
    if isinstance(overrides.get("coco_split_fractions"), str):
        from simplematch.data.coco_pairs import parse_fractions

        overrides["coco_split_fractions"] = parse_fractions(overrides["coco_split_fractions"])
    given = {**overrides, "out": out, "preset": preset, "window": window, "config": config}
    given["force"] = force or None
    return plan_run(
        out=out, resume=resume, preset=preset, config_path=config, overrides=overrides, window=window,
        max_steps=max_steps, device=device, force=force,
        changed_flags=[_flag(k) for k in _FIXED_ON_RESUME if given.get(k) is not None],
    )  # fmt: skip


def _dataset_of(overrides: dict[str, Any], preset: str | None, config: Path | None) -> str:
    """The dataset a new run will train on (the flag, else its --config, else its preset's)."""
    from simplematch.config import DEFAULT_PRESET, PRESETS

    if overrides.get("dataset"):
        return str(overrides["dataset"])
    if config is not None:
        return Config.load(config).dataset
    if preset is None and overrides.get("init"):  # --init alone: the run's own config
        return Config.load(_init_weights(str(overrides["init"])).parent / "config.json").dataset
    return str(PRESETS.get(preset or DEFAULT_PRESET, {}).get("dataset", "spair"))


def _flag(key: str) -> str:
    return COCO_FLAGS.get(key, f"--{key.replace('_', '-')}")


def _plan_resume(
    run: Path, max_steps: int | None, device: str | None, changed_flags: Sequence[str]
) -> tuple[Config, Path]:
    if changed_flags:
        raise SimpleMatchError(
            f"--resume continues a run with its saved config; {', '.join(changed_flags)} cannot be changed",
            "drop those options (only --max-steps and --device may be given with --resume)",
        )
    if not run.is_dir():
        raise SimpleMatchError(
            f"run folder not found: {run}", "pass the --out folder of an earlier `smatch train`"
        )
    cfg = Config.load(run / "config.json")
    cfg = dataclasses.replace(cfg, **{k: v for k, v in (("max_steps", max_steps), ("device", device)) if v})
    cfg.validate()
    reached, validated = _step_reached(run)
    # A run interrupted in its last validation resumes at the same total, to validate.
    if cfg.max_steps is not None and (cfg.max_steps < reached or (cfg.max_steps == reached and validated)):
        raise SimpleMatchError(
            f"--max-steps {cfg.max_steps} is not beyond step {reached}, where {run} stopped",
            f"pass --max-steps larger than {reached} (it is the new total, not the steps to add)",
        )
    return cfg, run


def _step_reached(run: Path) -> tuple[int, bool]:
    """(step of the run's last resumable checkpoint, whether that step was validated), from last.json."""
    pointer = run / "last.json"
    if not pointer.is_file():
        raise SimpleMatchError(
            f"{run} has no last.json (no resumable checkpoint was saved)",
            "start a new run with --out (a run saves one every validation and on Ctrl-C)",
        )
    try:
        info = json.loads(pointer.read_text())
        return int(info["step"]), bool(info.get("validated", True))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise SimpleMatchError(f"{pointer} is malformed", "delete it and restart the run") from err


def clear_run(out: Path, keep: Sequence[str] = ()) -> None:
    """Remove what an earlier run wrote in ``out`` (``--force``), so no stale checkpoint survives.

    ``keep``: files the caller is about to replace itself (atomically)."""
    for name in RUN_FILES:
        if name not in keep:
            (out / name).unlink(missing_ok=True)
    for old in out.glob("ckpt-*"):
        if old.is_dir():
            shutil.rmtree(old)
