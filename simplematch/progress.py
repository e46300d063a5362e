"""The one progress bar of the package (training steps, evaluation pairs, many-pair inference), so every
command shows the same columns: what, bar, done/total, elapsed, ETA."""

from __future__ import annotations

from typing import Any


def progress_bar(
    console: Any = None, *, enabled: bool = True, transient: bool = True, extra: str = ""
) -> Any:
    """A ``rich.progress.Progress``; ``extra``: one more text column, e.g. ``"loss {task.fields[loss]:.3f}"``.

    ``transient``: the bar disappears when done (evaluation, inference); training keeps its last line.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn()]
    columns += [TextColumn(extra)] if extra else []
    columns += [TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    return Progress(*columns, console=console, disable=not enabled, transient=transient)
