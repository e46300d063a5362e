"""Run ``smatch`` with a signal sent to itself at a chosen point: the fault-injection suite's entry point.

``python tests/faults/inject.py MODULE:FUNCTION:SIGNAL:N ARGS...`` wraps ``MODULE.FUNCTION`` so that its
N-th call first sends SIGNAL (``SIGINT`` / ``SIGTERM``) to this process, then runs as usual; ``-`` as the
first argument injects nothing. The signal arrives exactly at that phase on every run, unlike a timer.
"""

from __future__ import annotations

import functools
import importlib
import os
import signal
import sys


def _arm(spec: str) -> None:
    module_name, function, signame, nth = spec.split(":")
    module = importlib.import_module(module_name)
    original = getattr(module, function)
    calls = 0

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == int(nth):
            os.kill(os.getpid(), getattr(signal, signame))
        return original(*args, **kwargs)

    setattr(module, function, wrapper)


if __name__ == "__main__":
    spec, args = sys.argv[1], sys.argv[2:]
    if spec != "-":
        _arm(spec)
    from simplematch.cli import main  # the console script's entry point, exit included

    sys.argv = [sys.argv[0], *args]
    main()
