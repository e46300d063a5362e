"""All-or-nothing outputs of one command, and the one-line form of a write that the machine refused.

A command that writes several files (``infer --out --viz``, ``eval --json --predictions --plots``,
``convert --out DIR``) stages each next to its final path (same file system, so the final move is a
rename) and moves them into place only once every one of them was written::

    with outputs.transaction() as tx:
        tx.write_text(out, report)
        tx.write_bytes(viz, picture)      # disk full here: neither file appears

A failure (disk full, permission, a signal) removes every staged file and every folder the transaction
created, and leaves what existed: an existing file that ``--force`` replaces is moved aside first and put
back if a later move fails. Torch-free.

Inside the block, :func:`simplematch.files.atomic_path` (and the writers built on it) and
:func:`simplematch.files.make_dir` join the open transaction, so a command wraps its writing
code once instead of threading ``tx`` through every writer.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from simplematch.errors import SimpleMatchError

# errno -> (what happened, the fix) for the writes a user can do something about.
_WRITE_ERRORS = {
    errno.ENOSPC: ("the disk is full", "free disk space or choose another path"),
    errno.EDQUOT: ("the disk quota is exceeded", "free space in your quota or choose another path"),
    errno.EROFS: ("the file system is read-only", "choose a writable path"),
    errno.EACCES: ("permission denied", "choose a writable path or fix its permissions"),
    errno.EPERM: ("permission denied", "choose a writable path or fix its permissions"),
    errno.EFBIG: ("the file is too large for this file system", "choose another path"),
    errno.EIO: ("an input/output error", "check the disk, or choose another path"),
}


def write_error(err: OSError, path: str | os.PathLike | None = None) -> SimpleMatchError | None:
    """``err`` as one line naming the path and the fix, or None when it is not a write a user can fix."""
    known = _WRITE_ERRORS.get(err.errno or 0)
    if known is None:
        return None
    where = path if path is not None else err.filename
    return SimpleMatchError(f"cannot write {where or 'the output'}: {known[0]}", known[1])


def _one_line(err: OSError, path: Path) -> BaseException:
    return write_error(err, path) or SimpleMatchError(
        f"cannot write {path} ({err.strerror or err})", "choose another path"
    )


class Transaction:
    """Staged outputs of one command; see the module docstring. Use :func:`transaction`."""

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []  # (temporary, final)
        self._made: list[Path] = []  # folders this transaction created, deepest last

    def _parent(self, final: Path) -> None:
        missing = []
        folder = final.parent
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        for folder in reversed(missing):
            folder.mkdir()
            self._made.append(folder)

    def make_folder(self, folder: str | os.PathLike) -> Path:
        """Create ``folder`` (and missing parents) now; removed again on abort if still empty."""
        folder = Path(folder)
        try:
            self._parent(folder / "x")
        except OSError as err:
            raise _one_line(err, folder) from err
        return folder

    def path(self, final: str | os.PathLike) -> Path:
        """A new temporary file next to ``final``, moved onto ``final`` at commit."""
        final = Path(final)
        try:
            self._parent(final)
            fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
        except OSError as err:
            raise _one_line(err, final) from err
        os.close(fd)
        self._staged.append((Path(tmp), final))
        return Path(tmp)

    def folder(self, final: str | os.PathLike) -> Path:
        """A new temporary folder next to ``final``, moved onto ``final`` at commit (an existing one is
        replaced whole: the caller has already checked ``--force``)."""
        final = Path(final)
        try:
            self._parent(final)
            tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
        except OSError as err:
            raise _one_line(err, final) from err
        self._staged.append((tmp, final))
        return tmp

    def write_bytes(self, final: str | os.PathLike, data: bytes) -> None:
        tmp = self.path(final)
        try:
            tmp.write_bytes(data)
        except OSError as err:
            raise _one_line(err, final) from err

    def write_text(self, final: str | os.PathLike, text: str) -> None:
        self.write_bytes(final, text.encode())

    def commit(self) -> None:
        """Move every staged output into place; on a failed move, undo the moves already made."""
        umask = os.umask(0)
        os.umask(umask)
        done: list[tuple[Path, Path | None]] = []  # (final, its previous version moved aside)
        try:
            for tmp, final in self._staged:
                # mkstemp / mkdtemp create 0600 / 0700; give outputs the permissions open() would.
                os.chmod(tmp, (0o777 if tmp.is_dir() else 0o666) & ~umask)
                aside = None
                if final.exists() or final.is_symlink():
                    aside = Path(f"{tmp}.old")
                    os.replace(final, aside)
                done.append((final, aside))
                os.replace(tmp, final)
        except BaseException as err:
            for final, aside in reversed(done):
                _remove(final)
                if aside is not None:
                    os.replace(aside, final)
            one = write_error(err, final) if isinstance(err, OSError) else None
            if one is not None:
                raise one from err
            raise
        for _, aside in done:
            if aside is not None:
                _remove(aside)
        self._staged.clear()
        self._made.clear()

    def abort(self) -> None:
        """Remove every staged output and every folder this transaction created (if still empty)."""
        for tmp, _ in self._staged:
            _remove(tmp)
        for folder in reversed(self._made):
            with contextlib.suppress(OSError):
                folder.rmdir()
        self._staged.clear()
        self._made.clear()


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


_CURRENT: contextvars.ContextVar[Transaction | None] = contextvars.ContextVar("outputs", default=None)


def current() -> Transaction | None:
    """The transaction open in this context, if any (the writers in :mod:`simplematch.files` join it)."""
    return _CURRENT.get()


@contextlib.contextmanager
def transaction() -> Iterator[Transaction]:
    """Stage outputs in the block; all of them are moved into place when it ends without an error.

    Inside an open transaction this joins it (the outer one commits)."""
    outer = _CURRENT.get()
    if outer is not None:
        yield outer
        return
    tx = Transaction()
    token = _CURRENT.set(tx)
    try:
        yield tx
        _CURRENT.reset(token)
        tx.commit()
    except BaseException as err:
        if _CURRENT.get() is tx:
            _CURRENT.reset(token)
        tx.abort()
        one = write_error(err) if isinstance(err, OSError) else None
        if one is not None:
            raise one from err  # e.g. torch.save hitting a full disk inside the block
        raise


# ---- standard output ---------------------------------------------------------------------------------
def stdout_closed() -> None:
    """Standard output's reader went away (``smatch ... | head -1``): be quiet from now on, like the tools
    users know; point stdout at /dev/null so the interpreter's last flush does not complain."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def flush_stdout() -> None:
    """Flush now, inside the error handling, instead of at interpreter exit where a failure is a
    traceback-like 'Exception ignored' message. Started with stdout closed (``>&-``), Python has none
    (``sys.stdout is None``, and print writes nothing): nothing to flush."""
    if sys.stdout is not None:
        sys.stdout.flush()
