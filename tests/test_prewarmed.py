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
from tests.prewarmed import _STARTED, SERVER, Prewarmed, shared_server

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


@pytest.mark.parametrize(
    "body, status",
    [
        (
            "import os, sys; print(sys.stdin.read().upper(), os.getcwd())\n"
            "print('e', file=sys.stderr); sys.exit(3)",
            3,
        ),
        ("import os, signal; print('before', flush=True); os.kill(os.getpid(), signal.SIGTERM)", 128 + 15),
    ],
    ids=["stdio, folder and exit code", "killed by a signal"],
)
def test_the_relay_runs_a_shells_command_as_a_plain_process_would(
    prewarmed: Prewarmed, tmp_path: Path, body: str, status: int
) -> None:
    # What the README's bash blocks do: `smatch` there is the relay, in a pipe, with redirections.
    (tmp_path / "script.py").write_text(body)
    shell = 'echo in | "$@" script.py > out.txt 2> err.txt; echo $? > status.txt'
    relay = [PYTHON, str(SERVER), "--relay", prewarmed.path]
    plain = [PYTHON]
    for argv, folder in ((relay, tmp_path / "relay"), (plain, tmp_path / "plain")):
        folder.mkdir()
        (folder / "script.py").write_text(body)
        subprocess.run(
            ["bash", "-c", shell, "bash", *argv], cwd=folder, env=subprocess_env(), timeout=60, check=True
        )
    for name in ("out.txt", "err.txt", "status.txt"):
        got, want = (tmp_path / "relay" / name).read_text(), (tmp_path / "plain" / name).read_text()
        assert got == want.replace(str(tmp_path / "plain"), str(tmp_path / "relay")), name
    assert (tmp_path / "relay" / "status.txt").read_text() == f"{status}\n"


def test_one_server_per_run_lives_while_a_lease_is_held(tmp_path: Path) -> None:
    # Two workers' fixtures, then none: the second is served by the first's server, which ends with the last
    # lease (a bare server: the lifetime is tested, not the imports).
    env = subprocess_env()
    (tmp_path / "script.py").write_text("print('ran')")
    with shared_server(tmp_path, env, bare=True) as first:
        server = _STARTED[-1]
        with shared_server(tmp_path, env, bare=True) as second:
            assert second.path == first.path and _STARTED[-1] is server
        assert server.poll() is None  # the first lease still holds it
        assert first.run([tmp_path / "script.py"], tmp_path).stdout == "ran\n"
    assert server.wait(timeout=30) == 0
    assert not Path(first.path).exists()  # it removed its socket
    with shared_server(tmp_path, env, bare=True) as third:  # a later worker starts a new one
        assert third.path != first.path and _STARTED[-1] is not server
    assert _STARTED[-1].wait(timeout=30) == 0


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
