"""Small torch-free file helpers: atomic writes (temporary file in the same folder, then rename) and sha256.

Atomic writes mean a run killed at any moment never leaves a half-written artefact where a good one was.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from simplematch import outputs
from simplematch.errors import SimpleMatchError


def ensure_writable_dir(path: Path) -> Path:
    """Create ``path`` (a folder) if needed; raise a one-line error when that is impossible."""
    path = Path(path)
    tx = outputs.current()
    try:
        if tx is not None:  # a folder this command creates is removed again if the command fails
            tx.make_folder(path)
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SimpleMatchError(
            f"cannot create output folder {path} ({err.strerror})", "choose a writable path"
        ) from err
    if not os.access(path, os.W_OK):
        raise SimpleMatchError(
            f"output folder {path} is not writable", "choose a writable path or fix permissions"
        )
    return path


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable_dir(path: str | Path, what: str = "output folder") -> Path:
    """Raise the one-line error :func:`ensure_writable_dir` would, but create nothing.

    Commands call this before any slow work so a bad output path fails at once and leaves no partial output.
    """
    path = Path(path)
    base = _nearest_existing(path)
    if not base.is_dir():
        raise SimpleMatchError(f"cannot create {what} {path}: {base} is not a folder", "choose another path")
    if not os.access(base, os.W_OK):
        raise SimpleMatchError(f"{what} {path} is not writable", "choose a writable path or fix permissions")
    return path


def check_output_file(path: str | Path, what: str = "output file") -> Path:
    """A file we will write later: it must not be a folder and its folder must be creatable/writable."""
    path = Path(path)
    if path.is_dir():
        raise SimpleMatchError(f"{what} {path} is a folder", "pass a file name")
    base = _nearest_existing(path.parent)
    if not base.is_dir():
        raise SimpleMatchError(f"cannot write {what} {path}: {base} is not a folder", "choose another path")
    if not os.access(base, os.W_OK):
        raise SimpleMatchError(
            f"cannot write {what} {path}: {base} is not writable", "choose a writable path"
        )
    return path


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` only if the block succeeds.

    Inside :func:`simplematch.outputs.transaction` the rename waits for the whole transaction."""
    path = Path(path)
    tx = outputs.current()
    if tx is not None:
        staged = tx.path(path)
        try:
            yield staged
        except OSError as err:
            raise outputs.write_error(err, path) or SimpleMatchError(
                f"cannot write {path} ({err.strerror or err})", "choose another path"
            ) from err
        return
    ensure_writable_dir(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise SimpleMatchError(f"cannot write {path} ({err.strerror})", "choose a writable path") from err
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
            # mkstemp creates the file 0600; give the result the permissions a plain open() would have.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp_path, 0o666 & ~umask)
            os.replace(tmp_path, path)
        except OSError as err:  # disk full, path turned into a folder, ...: the user can fix these
            raise outputs.write_error(err, path) or SimpleMatchError(
                f"cannot write {path} ({err.strerror or err})", "free disk space or choose another path"
            ) from err
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: str | Path | None, data: Any) -> None:
    """``data`` as indented JSON, atomically; ``None`` writes nothing (an optional ``--json``)."""
    if path is not None:
        atomic_write_text(Path(path), json.dumps(data, indent=2) + "\n")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
