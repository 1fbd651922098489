"""Progress bars on stderr (rich), one look for every command; nothing at all when disabled."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


def rich_progress(console: Any = None, enabled: bool = True) -> Any:
    """A transient ``rich.progress.Progress``: description, bar, done/total, time left.

    ``console`` defaults to one on stderr; use it with ``add_task`` for several bars.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    console = console if console is not None else Console(stderr=True)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        # a transient bar shows nothing on a file or pipe but leaves a blank line behind
        disable=not enabled or not console.is_terminal,
        transient=True,
    )


@contextmanager
def progress_bar(
    description: str, total: int, enabled: bool = True
) -> Iterator[Callable[[int], None]]:
    """One bar over ``total`` items; the context value is ``advance(n)``."""
    if not enabled:
        yield lambda n: None
        return
    with rich_progress() as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)
