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
torch, the runtime-only install, torchrun) start plain processes. A shell script reaches the server through
``--relay`` (see :func:`relay`): the README's bash blocks run ``smatch`` so.

The server never imports onnxruntime: its native thread pools, started at import, cannot be joined by a
forked child at exit (the child aborts). Children import it themselves when their command needs it.
"""

from __future__ import annotations

import contextlib
import fcntl
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
from collections.abc import Iterator, Sequence
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
    """Accept commands while a lease is held; returns only in a forked child, set up as the command's process.

    Each user of the server (a pytest worker) holds a lease: a connection it keeps open for its session. The
    server exits when the last lease ends (closed, or its holder died), or when none came within a minute of
    its start; children still running finish on their own."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(64)
    print("ready", flush=True)
    waiting: dict[int, socket.socket] = {}
    leases: set[socket.socket] = set()
    first_lease_by = time.monotonic() + 60.0
    while True:
        ready, _, _ = select.select([srv, *leases], [], [], 0.02 if waiting else 1.0)
        for held in leases.intersection(ready):
            if not held.recv(1024):
                leases.discard(held)
                held.close()
        if not leases and (first_lease_by is None or time.monotonic() > first_lease_by):
            with contextlib.suppress(OSError):
                os.unlink(path)
                os.rmdir(os.path.dirname(path))
            os._exit(0)
        if srv in ready:
            conn, _ = srv.accept()
            request, fds = _receive(conn)
            if request.get("lease"):
                leases.add(conn)
                first_lease_by = None
                conn.sendall(b"leased\n")
                continue
            sys.stdout.flush()
            sys.stderr.flush()
            started_r, started_w = os.pipe()
            pid = os.fork()
            if pid == 0:
                # Past the interpreter's after-fork reset of pending signals: a signal sent now is seen.
                os.close(started_r)
                os.write(started_w, b".")
                os.close(started_w)
                for other in (srv, conn, *waiting.values(), *leases):
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

    def __init__(
        self, conn: socket.socket, args: list[str], stdout: IO[bytes] | None, stderr: IO[bytes] | None
    ) -> None:
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
        assert self._out is not None and self._err is not None, "a relayed child writes to the relay's stdio"
        return _text(self._out), _text(self._err)


def _request(
    path: str, args: list[str], cwd: Path | str, limit_as: int | None, fds: list[int], log: Path | None
) -> socket.socket:
    """Ask the server at ``path`` to fork ``python ARGS...`` with ``fds`` as its stdin, stdout and stderr."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
    except OSError as exc:
        more = f"; log: {log.read_text()}" if log is not None else ""
        raise RuntimeError(f"prewarmed server unreachable ({exc}){more}") from exc
    message = json.dumps({"argv": args, "cwd": str(cwd), "limit_as": limit_as}).encode() + b"\n"
    socket.send_fds(conn, [message], fds)
    return conn


def relay(path: str, argv: list[str]) -> int:
    """``python ARGV...`` forked from the server at ``path``, with this process's stdin, stdout, stderr and
    folder; returns its exit status as a shell reports it (128 + N for signal N). For shell scripts:
    ``python tests/prewarmed.py --relay SOCKET -m simplematch.cli ...`` (the server itself is not loaded)."""
    child = Child(_request(path, argv, os.getcwd(), None, [0, 1, 2], None), argv, None, None)
    code = child.wait()
    return code if code >= 0 else 128 - code


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
        with open(os.devnull, "rb") as null:
            fds = [null.fileno(), out.fileno(), err.fileno()]
            conn = _request(self.path, args, cwd, limit_as, fds, self.log)
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
def shared_server(folder: Path, env: dict[str, str], *, bare: bool = False) -> Iterator[Prewarmed]:
    """The server of ``folder``, held for the ``with`` block; yields a :class:`Prewarmed`.

    Every pytest worker of one run passes the same folder: the first to come starts the server, each holds a
    lease while its block lasts, and the server exits when the last lease ends. ``env`` is every child's
    environment (read once, at import, by some libraries: OpenMP's thread count). ``bare=True`` starts a
    server that imports nothing (for the tests of the server itself)."""
    with locked(folder / "prewarmed.lock"):
        # AF_UNIX paths are limited to ~100 bytes: the socket lives in a short folder of its own.
        record = folder / "prewarmed.socket"
        path = record.read_text() if record.is_file() else ""
        lease = _lease(path) if path else None
        if lease is None:
            path = _start(folder, env, bare)
            record.write_text(path)
            lease = _lease(path)
            assert lease is not None, (folder / "prewarmed.log").read_text()
    try:
        yield Prewarmed(path, folder / "prewarmed.log")
    finally:
        lease.close()


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on the file ``path`` (made if missing) for the ``with`` block: between the
    xdist workers of one run."""
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _lease(path: str) -> socket.socket | None:
    """A lease on the server at ``path``, or None when no server answers there (none started, or it ended)."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
        conn.sendall(json.dumps({"lease": True}).encode() + b"\n")
        conn.settimeout(60)
        if conn.recv(64) == b"leased\n":
            conn.settimeout(None)
            return conn
    except OSError:
        pass
    conn.close()
    return None


def _start(folder: Path, env: dict[str, str], bare: bool) -> str:
    """Start a server; returns its socket's path once it listens. Its import-time output must be empty."""
    path = os.path.join(tempfile.mkdtemp(prefix="smatch-pw-"), "s")
    log = folder / "prewarmed.log"
    with open(log, "wb") as log_fh:
        proc = subprocess.Popen(
            [sys.executable, str(SERVER), path, *(["--bare"] if bare else [])], env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log_fh, preexec_fn=_sigint_default,
        )  # fmt: skip
    _STARTED.append(proc)  # kept, not waited for: it outlives this worker while another holds a lease
    assert proc.stdout is not None
    ready = proc.stdout.readline()
    assert ready == b"ready\n", f"prewarmed server did not start: {log.read_text()}"
    # The children skip their imports, so the import-time output is checked here, once: none at all.
    assert log.read_text() == "", f"importing the training stack printed: {log.read_text()}"
    return path


_STARTED: list[subprocess.Popen] = []


def _sigint_default() -> None:
    # A shell starts background jobs with SIGINT ignored, and an ignored signal stays ignored across exec:
    # with the default disposition Python installs its KeyboardInterrupt handler, which the children inherit,
    # as a command started from a terminal has it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


if __name__ == "__main__":
    if sys.argv[1] == "--relay":
        sys.exit(relay(sys.argv[2], sys.argv[3:]))
    if sys.argv[2:] != ["--bare"]:
        preload()
    run_as_main(serve(sys.argv[1]))
