"""Ending a process that has imported torch without a full garbage collection on the way out.

At interpreter shutdown Python runs its cyclic garbage collector over every object still alive. After a
torch command that is millions of objects (torch, timm and their dependencies alone define about 3000
modules): about 1 s of CPU on a 2-core machine, for a process that is exiting anyway. The entry points
(``smatch``, ``python -m simplematch.cli``, the benchmark's worker processes) end through
:func:`exit_process`, which freezes the surviving objects out of that collection (:func:`gc.freeze`) and
then exits normally: atexit handlers, the final flush of stdout and stderr and reference counting still
run, so every file is closed and flushed as before. What no longer runs is the collection of objects kept
alive only by reference cycles, whose ``__del__`` Python does not promise to call at exit anyway.
Torch-free.
"""

from __future__ import annotations

import gc
import sys
from typing import NoReturn


def exit_process(code: int | None) -> NoReturn:
    """``sys.exit(code)`` without the shutdown collection over the objects alive now."""
    gc.freeze()
    sys.exit(code)
