"""Progress bars on stderr (rich), one look for every command; nothing at all when disabled."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


def rich_progress(console: Any = None, enabled: bool = True, unit: str | None = None) -> Any:
    """A transient ``rich.progress.Progress``: description, bar, done/total, time left (and,
    with ``unit``, the rate: "12.5 images/s").

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
    rate = [_rate_column(unit)] if unit else []
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *rate,
        TimeRemainingColumn(),
        console=console,
        # a transient bar shows nothing on a file or pipe but leaves a blank line behind
        disable=not enabled or not console.is_terminal,
        transient=True,
    )


def _rate_column(unit: str) -> Any:
    from rich.progress import ProgressColumn
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text(
                "?" if speed is None else f"{speed:.1f} {unit}/s", style="progress.data.speed"
            )

    return Rate()


@contextmanager
def progress_bar(
    description: str, total: int, enabled: bool = True, unit: str | None = None
) -> Iterator[Callable[[int], None]]:
    """One bar over ``total`` items (with ``unit``: their rate); the context value is
    ``advance(n)``."""
    if not enabled:
        yield lambda n: None
        return
    with rich_progress(unit=unit) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)
