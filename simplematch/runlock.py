"""One process per output: ``train`` / ``convert`` / ``export`` hold a lock on what they write, so a second
command writing the same run folder (or file) is refused in one line instead of both "succeeding" into
one interleaved ``metrics.jsonl``.

The lock is an ``fcntl.flock`` on a small file named by the output's real path, in one folder of the
machine's temporary directory (``smatch-locks/``, shared by all users like ``/tmp`` itself), so nothing
is added to the user's folders and the lock does not depend on which parts of the output path exist
yet. The file holds the owner's pid for the message. The kernel drops a flock when its process ends,
however it ends, so a lock left by a killed process is never stale: the next command takes it. The file
is removed on release; taking the lock re-checks that the file is still the one on disk, so a release
racing a new taker cannot give two processes the lock. Processes on *other* machines writing the same
network folder are not seen. Where ``fcntl`` is missing (Windows) nothing is locked.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from simplematch.errors import SimpleMatchError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]


def lock_path(output: str | os.PathLike) -> Path:
    """The lock file of ``output`` (however spelled: symlinks and ``..`` resolved)."""
    real = os.path.realpath(output)
    folder = Path(tempfile.gettempdir()) / "smatch-locks"
    if not folder.is_dir():
        with contextlib.suppress(FileExistsError):
            folder.mkdir()
            os.chmod(folder, 0o1777)  # every user's commands lock here, none may remove another's file
    return folder / (hashlib.sha256(real.encode()).hexdigest()[:32] + ".lock")


def _owner(path: Path) -> str:
    with contextlib.suppress(OSError, ValueError):
        pid = int(path.read_text().strip() or "0")
        if pid:
            return f" (pid {pid})"
    return ""


@contextlib.contextmanager
def hold(output: str | os.PathLike, flag: str = "--out") -> Iterator[None]:
    """Hold the lock of ``output`` for the block; another holder -> one-line :class:`SimpleMatchError`."""
    if fcntl is None:
        yield
        return
    path = lock_path(output)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except PermissionError:  # another user's lock file: a read-only descriptor locks as well
            fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = _owner(path)
            os.close(fd)
            raise SimpleMatchError(
                f"{flag} {output} is being written by another smatch process{owner}",
                "wait for it to finish, or choose another path",
            ) from None
        # The holder before us may have removed the file between our open and our flock: then we locked a
        # file nobody else will see, so start over on the one now at the path.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        with contextlib.suppress(OSError):  # the pid only improves the message
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)
