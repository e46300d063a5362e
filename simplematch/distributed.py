"""torchrun / DistributedDataParallel plumbing: init, rank helpers, exact reductions.

``torchrun --nproc_per_node N -m simplematch.cli train ...`` sets WORLD_SIZE/RANK/LOCAL_RANK; everything
else (single process) runs with world size 1 and these helpers become no-ops.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def launched_as_main() -> bool:
    """Rank 0 of a torchrun job (or no torchrun at all), read from the launcher's environment: valid
    before the process group exists, when :func:`is_main` still answers True on every rank."""
    return int(os.environ.get("RANK", "0")) == 0


def init_from_env(device: torch.device) -> bool:
    """Initialise the process group when launched by torchrun (gloo on CPU, nccl on CUDA)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_distributed():
        return is_distributed()
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return True


@contextmanager
def joined(device: torch.device) -> Iterator[torch.device]:
    """This process's device (its own GPU under torchrun), inside torchrun's process group for the block.

    The group is destroyed on the way out, whatever happens: a rank that exits while still a member can
    abort in gloo's teardown ("terminate called without an active exception", SIGABRT) after its work
    is done. Alone (no torchrun) it only picks the device. A group that was already there (a caller's own)
    is used and left as it was.
    """
    owned = not is_distributed()
    init_from_env(device)
    try:
        yield local_device(device)
    finally:
        if owned:
            cleanup()


def local_device(device: torch.device) -> torch.device:
    """On CUDA each rank uses its own GPU (LOCAL_RANK)."""
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        idx = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(idx)
        return torch.device("cuda", idx)
    return device


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    if not is_distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's object, in rank order (exact: no float reduction involved)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()
