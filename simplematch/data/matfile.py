"""One guarded entry point to MATLAB v5 files (scipy.io.loadmat) for the PF-PASCAL and PF-WILLOW readers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from simplematch.errors import SimpleMatchError

MAX_MAT_BYTES = 16 * 1024 * 1024  # annotation .mat files are a few KB; refuse anything absurd before parsing


def read_mat(path: Path, fix: str) -> dict[str, Any]:
    """``scipy.io.loadmat(path)`` or one SimpleMatchError naming the file."""
    import scipy.io

    if not path.is_file():
        raise SimpleMatchError(f"missing annotation file {path}", fix)
    if path.stat().st_size > MAX_MAT_BYTES:
        raise SimpleMatchError(f"annotation file {path} is implausibly large for a keypoint .mat", fix)
    try:
        return scipy.io.loadmat(str(path))
    # scipy's MAT reader raises a wide, version-dependent zoo of types on corrupt input (ValueError,
    # TypeError, MatReadError, struct.error, zlib.error, OverflowError, IndexError, MemoryError, ...);
    # all of them mean "this file is not a readable annotation", so they become one user-facing error.
    except Exception as err:
        raise SimpleMatchError(f"cannot read MATLAB file {path} ({type(err).__name__})", fix) from err
