"""The progress bar of the long-running commands (``data collect``, ``data import``, ``eval``), written once."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def progress_bar(console: Console, *extra: ProgressColumn | str) -> Progress:
    """A Rich progress bar: description, bar, done/total, the ``extra`` columns (a string is a text column, which
    may name a task field: ``"discarded {task.fields[discarded]}"``), elapsed and remaining time. It stays on
    screen when done."""
    columns = [TextColumn(c) if isinstance(c, str) else c for c in extra]
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *columns,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
