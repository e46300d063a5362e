"""Shared by the service tests: a tiny model, and a real ``smatch serve`` process on a free loopback port.

The server is the installed command started as a user would (``python -m simplematch.cli serve``), bound to
127.0.0.1 only; it is stopped by the fixture that started it, and every wait here is bounded in time.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from simplematch.serve.client import Client
from tests.helpers import ROOT, subprocess_env

EXAMPLES = ROOT / "examples"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_server(model: Path, *args: str, env: dict | None = None, log: Path) -> Iterator[str]:
    """``smatch serve MODEL --port P ARGS`` until the block ends; yields its base URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "simplematch.cli", "serve", str(model), "--host", "127.0.0.1",
           "--port", str(port), *args]  # fmt: skip
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            cmd, env={**subprocess_env(), **(env or {})}, stdout=fh, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"smatch serve exited {proc.returncode}: {log.read_text()}")
            try:
                Client(url, timeout=2).health()
                break
            except Exception:  # not listening yet
                if time.monotonic() > deadline:
                    raise RuntimeError(f"smatch serve did not answer in 60 s: {log.read_text()}") from None
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
