"""The prewarmed server's children (tests/prewarmed.py) behave as plain ``python`` processes do.

Each case runs the same small script both ways and compares exit status, stdout and stderr: exit codes,
an uncaught exception and KeyboardInterrupt, a signal, atexit, the working folder, argv and sys.path[0],
stdin (empty), RLIMIT_AS, and a torch command of the CLI.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.helpers import PYTHON, ROOT, subprocess_env
from tests.prewarmed import Prewarmed

GIB = 2**30

SCRIPTS = {
    "exit 3": "import sys; print('out'); sys.exit(3)",
    "exit message": "import sys; sys.exit('bye')",
    "exception": "raise ValueError('boom')",
    "keyboard interrupt": "raise KeyboardInterrupt",
    "own SIGTERM": "import os, signal; os.kill(os.getpid(), signal.SIGTERM)",
    "atexit and flush": "import atexit; atexit.register(print, 'at exit'); print('buffered', end='')",
    "where": "import os, sys; print(os.getcwd(), sys.argv[1:], sys.path[0] == os.path.dirname(sys.argv[0]))",
    "limit": "import resource; print(resource.getrlimit(resource.RLIMIT_AS))",
    "stdin is empty": "import sys; print(repr(sys.stdin.read()))",
    "torch-free start": "import sys; print(sorted(m for m in ('onnxruntime',) if m in sys.modules))",
}


def _normal(text: str, script: Path) -> str:
    # A traceback names the frames that lead to the script: the interpreter's vs runpy's. Keep the rest.
    kept = [line for line in text.splitlines() if not line.startswith("  ")]
    return "\n".join(kept).replace(str(script), "S")


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_child_ends_as_a_plain_process_does(prewarmed: Prewarmed, tmp_path: Path, name: str) -> None:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(SCRIPTS[name]))
    limit = 3 * GIB if name == "limit" else None

    def preexec() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    argv = [str(script), "a", "b"]
    plain = subprocess.run(
        [PYTHON, *argv], cwd=tmp_path, env=subprocess_env(), stdin=subprocess.DEVNULL, capture_output=True,
        text=True, timeout=60, preexec_fn=preexec,
    )  # fmt: skip
    forked = prewarmed.run(argv, tmp_path, limit_as=limit, timeout=60)
    assert forked.returncode == plain.returncode, (forked, plain)
    assert forked.stdout == plain.stdout
    assert _normal(forked.stderr, script) == _normal(plain.stderr, script)


def test_a_child_has_its_own_pid_and_answers_signals(prewarmed: Prewarmed, tmp_path: Path) -> None:
    script = tmp_path / "wait.py"
    # Short sleeps, not one long one: a signal that lands between the file's creation and the start of the
    # sleep's system call only sets Python's flag, and a single 60 s sleep would not notice it for 60 s.
    body = "import os, time\nprint(os.getpid(), flush=True)\nopen('up', 'w').close()\n"
    body += "for _ in range(1200):\n    time.sleep(0.05)\n"
    script.write_text(body)
    child = prewarmed.start([script], tmp_path)
    assert child.pid != os.getpid()
    deadline = time.monotonic() + 60
    while not (tmp_path / "up").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert child.poll() is None
    child.send_signal(signal.SIGINT)  # the default handler: KeyboardInterrupt, then the interpreter's exit
    out, err = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGINT and out == f"{child.pid}\n" and "KeyboardInterrupt" in err
    with pytest.raises(subprocess.TimeoutExpired):
        prewarmed.run([script], tmp_path, timeout=0.5)


@pytest.mark.slow  # a plain torch process: seconds
def test_a_torch_command_gives_what_a_plain_process_gives(
    prewarmed: Prewarmed, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    argv = ["-m", "simplematch.cli", "eval", str(tiny_checkpoint), "--dataset", "synthetic", "--limit", "2"]
    plain = subprocess.run(
        [PYTHON, *argv], cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300
    )
    forked = prewarmed.run(argv, ROOT)
    assert plain.returncode == forked.returncode == 0, (plain.stderr, forked.stderr)
    assert forked.stdout == plain.stdout and "PCK" in plain.stdout
    assert forked.stderr == plain.stderr
    assert sys.executable == PYTHON
