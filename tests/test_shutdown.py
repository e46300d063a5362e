"""simplematch.shutdown: the entry points exit with the command's code, atexit handlers and the final flush
still run, and the objects alive at exit are frozen out of the shutdown garbage collection."""

from __future__ import annotations

import subprocess

import pytest

from tests.helpers import PYTHON, ROOT, subprocess_env

# Runs an entry point as `python -m MODULE ARGS` would, after registering a report that runs at exit: the
# number of objects frozen out of the shutdown collection (0 when nothing was frozen).
REPORT = """
import atexit, gc, runpy, sys
atexit.register(lambda: print("frozen", gc.get_freeze_count() > 0, "buffered", end=""))
{patch}
sys.argv = [sys.argv[0], *{args!r}]
runpy.run_module({module!r}, run_name="__main__", alter_sys=True)
"""


def _run(module: str, args: list[str], patch: str = "") -> subprocess.CompletedProcess:
    code = REPORT.format(module=module, args=args, patch=patch)
    return subprocess.run(
        [PYTHON, "-c", code], cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("args, code", [(["presets"], 0), (["eval", "nowhere"], 2)])
def test_smatch_exits_with_its_code_and_freezes(args: list[str], code: int) -> None:
    proc = _run("simplematch.cli", args)
    assert proc.returncode == code, proc.stderr
    # The atexit report ran and its unterminated line was flushed at exit.
    assert proc.stdout.endswith("frozen True buffered"), proc.stdout[-300:]


def test_the_bench_worker_exits_with_its_code_and_freezes() -> None:
    patch = "import simplematch.bench.worker as w; w.main = lambda spec: 7"
    proc = _run("simplematch.bench", ["--worker", "spec.json"], patch)
    assert proc.returncode == 7, proc.stderr
    assert proc.stdout == "frozen True buffered"
