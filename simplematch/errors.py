"""The project's one user-facing error type.

Every problem a user can fix (bad path, malformed file, unknown name, incompatible checkpoint) is raised as
:class:`SimpleMatchError` with a one-line message that names the problem *and* the fix. The CLI turns it
into that one line on stderr and exit code 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations


class SimpleMatchError(Exception):
    """A user error: ``str(err)`` is one line naming the problem and the fix."""

    exit_code = 2

    def __init__(self, problem: str, fix: str | None = None) -> None:
        problem = " ".join(str(problem).split())
        msg = problem if not fix else f"{problem.rstrip('.')}. Fix: {' '.join(fix.split())}"
        super().__init__(msg)
        self.problem = problem
        self.fix = fix


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first non-blank line of an exception's message, for embedding in a one-line error.

    Some libraries raise with an empty message (``torch.load`` on an empty file), so this never indexes
    blindly: an empty message gives the exception's type name.
    """
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return (lines[0] if lines else type(err).__name__)[:limit]
