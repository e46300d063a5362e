"""A Python that has imported the training stack once and forks a child per command.

The fault and signal suites start ``smatch train / eval / export`` in child processes a few dozen times, and
each such child spends about 3 s of CPU importing torch, timm (with torchvision and ``torch._dynamo``) and
the training and export modules before its command begins. This server imports them once; the
``prewarmed`` fixture (tests/conftest.py) starts it and hands out :class:`Child` processes forked from it::

    python tests/prewarmed.py SOCKET

A child is a real process: its own pid, exit status, signals and signal handlers, stdin/stdout/stderr,
working folder and ``RLIMIT_AS``. It runs ``python ARGV...`` (a script or ``-m module``) the way the
interpreter does, and ends as an interpreter does (atexit handlers, the final flush of stdout, the exit
status of an uncaught exception or KeyboardInterrupt): tests/test_prewarmed.py compares it with plain
processes. What it skips is the interpreter's start and the imports; their output is checked once, on the
server, and must be empty (no library noise at import). Tests about start-up itself (``--help`` without
torch, the runtime-only install, torchrun, the README's commands) start plain processes.

The server never imports onnxruntime: its native thread pools, started at import, cannot be joined by a
forked child at exit (the child aborts). Children import it themselves when their command needs it.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import pkgutil
import resource
import runpy
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

SERVER = Path(__file__)

# What `smatch train / eval / export` import lazily, beyond the package's own modules (imported below).
PRELOAD = (
    "torch",
    "timm",
    "albumentations",
    "scipy.optimize",
    "scipy.stats",
    "scipy.ndimage",
    "scipy.interpolate",
    "skimage.io",
    "skimage.transform",
    "torch.export",
    "torch.onnx",
    "torch.onnx._internal.exporter._core",
    "onnxscript",
    "onnx.reference",
    "rich.progress",
)
# Package modules that import onnxruntime (see above) or serve no torch command.
SKIP = ("simplematch.runtime", "simplematch.serve", "simplematch.cli.__main__", "simplematch.bench.__main__")


# ---- server ------------------------------------------------------------------------------------------------
def preload() -> None:
    for name in PRELOAD:
        importlib.import_module(name)
    import simplematch

    for info in pkgutil.walk_packages(simplematch.__path__, "simplematch."):
        if not info.name.startswith(SKIP):
            importlib.import_module(info.name)
    if "onnxruntime" in sys.modules:
        raise SystemExit("prewarmed: a preloaded module imports onnxruntime; add it to SKIP")
    # gc.freeze's documented use before forking: the children's collections (and their shutdown collection,
    # as simplematch.shutdown does for every entry point) leave the preloaded objects alone.
    gc.freeze()


def serve(path: str) -> list[str]:
    """Accept commands until stdin closes; returns only in a forked child, set up as the command's process."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(64)
    print("ready", flush=True)
    waiting: dict[int, socket.socket] = {}
    while True:
        ready, _, _ = select.select([srv, 0], [], [], 0.02 if waiting else 1.0)
        if 0 in ready and not os.read(0, 1024):
            os._exit(0)  # the fixture closed stdin (or its process died): children finish on their own
        if srv in ready:
            conn, _ = srv.accept()
            request, fds = _receive(conn)
            sys.stdout.flush()
            sys.stderr.flush()
            started_r, started_w = os.pipe()
            pid = os.fork()
            if pid == 0:
                # Past the interpreter's after-fork reset of pending signals: a signal sent now is seen.
                os.close(started_r)
                os.write(started_w, b".")
                os.close(started_w)
                srv.close()
                conn.close()
                for other in waiting.values():
                    other.close()
                return _become(request, fds)
            os.close(started_w)
            os.read(started_r, 1)  # the pid goes out only once the child can take a signal
            os.close(started_r)
            for fd in fds:
                os.close(fd)
            conn.sendall(b"%d\n" % pid)
            waiting[pid] = conn
        while waiting:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            conn = waiting.pop(pid)
            with contextlib.suppress(OSError):  # the client gave up on it (a timeout)
                conn.sendall(b"%d\n" % os.waitstatus_to_exitcode(status))
            conn.close()


def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    data, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
    while not data.endswith(b"\n"):
        data += conn.recv(1 << 20)
    return json.loads(data), fds


def _become(request: dict, fds: list[int]) -> list[str]:
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    if request["limit_as"] is not None:
        limit = request["limit_as"]
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return request["argv"]


def run_as_main(argv: list[str]) -> None:
    """``python ARGV...``: sys.argv and sys.path[0] as the interpreter sets them, then the script/module."""
    if argv[0] == "-m":
        sys.argv = argv[1:]
        sys.path[0] = os.getcwd()
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(argv)
        sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
        runpy.run_path(argv[0], run_name="__main__")


# ---- client ------------------------------------------------------------------------------------------------
class Child:
    """A forked command, with the parts of :class:`subprocess.Popen` the suites use."""

    def __init__(self, conn: socket.socket, args: list[str], stdout: IO[bytes], stderr: IO[bytes]) -> None:
        self.args = args
        self._conn = conn
        self._buf = b""
        self._out, self._err = stdout, stderr
        self.pid = int(self._line(60.0))
        self.returncode: int | None = None

    def _line(self, timeout: float | None) -> bytes:
        end = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = None if end is None else max(0.0, end - time.monotonic())
            if left == 0.0 or not select.select([self._conn], [], [], left)[0]:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
            chunk = self._conn.recv(4096)
            if not chunk:
                raise RuntimeError(f"the prewarmed server went away while running {self.args}")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = int(self._line(timeout))
            self._conn.close()
        return self.returncode

    def poll(self) -> int | None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.wait(0.0)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        return _text(self._out), _text(self._err)


def _text(fh: IO[bytes]) -> str:
    fh.seek(0)
    return fh.read().decode()


class Prewarmed:
    """Client of a running server (see :func:`start_server`)."""

    def __init__(self, path: str, log: Path) -> None:
        self.path = path
        self.log = log

    def start(self, argv: Sequence[object], cwd: Path, *, limit_as: int | None = None) -> Child:
        """``python ARGV...`` in ``cwd``; stdout and stderr are kept for :meth:`Child.communicate`."""
        args = [str(a) for a in argv]
        out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(self.path)
        except OSError as exc:
            raise RuntimeError(f"prewarmed server unreachable ({exc}); log: {self.log.read_text()}") from exc
        message = json.dumps({"argv": args, "cwd": str(cwd), "limit_as": limit_as}).encode() + b"\n"
        with open(os.devnull, "rb") as null:
            socket.send_fds(conn, [message], [null.fileno(), out.fileno(), err.fileno()])
        return Child(conn, args, out, err)

    def run(
        self, argv: Sequence[object], cwd: Path, *, limit_as: int | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess:
        child = self.start(argv, cwd, limit_as=limit_as)
        try:
            out, err = child.communicate(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            raise
        return subprocess.CompletedProcess(child.args, child.returncode, out, err)


@contextlib.contextmanager
def start_server(folder: Path, env: dict[str, str]):
    """Run the server for the ``with`` block (it stops when its stdin closes); yields a :class:`Prewarmed`.

    ``env`` is every child's environment (read once, at import, by some libraries: OpenMP's thread count)."""
    # AF_UNIX paths are limited to ~100 bytes: a short folder of its own.
    sock_dir = tempfile.mkdtemp(prefix="smatch-pw-")
    path = os.path.join(sock_dir, "s")
    log = folder / "prewarmed.log"
    with open(log, "wb") as log_fh:
        proc = subprocess.Popen(
            [sys.executable, str(SERVER), path], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=log_fh, preexec_fn=_sigint_default,
        )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdin is not None
        ready = proc.stdout.readline()
        assert ready == b"ready\n", f"prewarmed server did not start: {log.read_text()}"
        # The children skip their imports, so the import-time output is checked here, once: none at all.
        assert log.read_text() == "", f"importing the training stack printed: {log.read_text()}"
        yield Prewarmed(path, log)
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(timeout=60)
        with contextlib.suppress(OSError):
            os.unlink(path)
            os.rmdir(sock_dir)


def _sigint_default() -> None:
    # A shell starts background jobs with SIGINT ignored, and an ignored signal stays ignored across exec:
    # with the default disposition Python installs its KeyboardInterrupt handler, which the children inherit,
    # as a command started from a terminal has it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


if __name__ == "__main__":
    preload()
    run_as_main(serve(sys.argv[1]))
