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

from simplematch.errors import SimpleMatchError


def make_dir(path: Path) -> Path:
    """Create the folder ``path`` (and its parents) when writing into it; one line when that is impossible.

    The writer's side only: the checks before any work are :mod:`simplematch.validate`'s, which create
    nothing, so a folder appears only once a command writes its first file.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SimpleMatchError(
            f"cannot create folder {path} ({err.strerror})", "choose a writable path"
        ) from err
    return path


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` only if the block succeeds."""
    path = Path(path)
    make_dir(path.parent)
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
            raise SimpleMatchError(
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
