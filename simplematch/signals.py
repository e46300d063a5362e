"""SIGINT and SIGTERM handled alike by every command: the command unwinds (its ``with`` blocks remove what
it half-wrote), then the CLI prints one line and exits 128 + the signal number (130 / 143), as shells do.

Python turns SIGINT into :class:`KeyboardInterrupt` by itself; SIGTERM (``kill``, a job scheduler, a
container stop) would end the process at once with no clean-up and no word. :func:`install` makes SIGTERM
raise :class:`Interrupted` too. ``smatch train`` installs its own handlers for the length of its loop
(finish the step, save a resumable checkpoint) and reports the signal it got.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from typing import Any


class Interrupted(KeyboardInterrupt):
    """A stop signal, raised in the main thread. A :class:`KeyboardInterrupt`, so code that already cleans
    up on Ctrl-C cleans up on SIGTERM as well."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


def exit_code(signum: int) -> int:
    """The status a shell reports for a process ended by ``signum`` (SIGINT 130, SIGTERM 143)."""
    return 128 + int(signum)


def signum_of(err: BaseException) -> int:
    """The signal behind an interrupt: SIGTERM for :class:`Interrupted` from SIGTERM, else SIGINT."""
    return getattr(err, "signum", int(signal.SIGINT))


def message(signum: int) -> str:
    return f"interrupted by {signal.Signals(signum).name}"


def _raise(signum: int, _frame: Any) -> None:
    raise Interrupted(signum)


def install() -> None:
    """SIGTERM raises :class:`Interrupted` in the main thread (SIGINT keeps Python's KeyboardInterrupt)."""
    try:
        signal.signal(signal.SIGTERM, _raise)
    except ValueError:  # not the main thread: the host application owns the signals
        pass


@contextlib.contextmanager
def handled_by(handler: Callable[[int, Any], Any]) -> Iterator[None]:
    """SIGINT and SIGTERM call ``handler`` for the block (a loop that finishes its current unit of work
    before stopping: a training step, one transferred image), and the previous handlers come back after."""
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for s in old:
            signal.signal(s, handler)
    except ValueError:  # not the main thread (a library caller's worker): no handlers, the work still runs
        old = {}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
