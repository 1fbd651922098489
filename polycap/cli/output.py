"""Shared CLI output: one console, JSON printing, tables."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from polycap.data.images import describe_skipped

console = Console()
err_console = Console(stderr=True, soft_wrap=True)


def print_json(data: Any) -> None:
    """JSON on stdout, nothing else (so it pipes into jq)."""
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2, default=str) + "\n")


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A rich table on stdout."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    console.print(table)


def fail(message: str, code: int = 2) -> None:
    """One red line on stderr, then exit with ``code`` (the message is shown as written)."""
    from rich.markup import escape

    err_console.print(f"[bold red]Error:[/] {escape(message)}", highlight=False, markup=True)
    raise SystemExit(code)


def report_skipped(skipped: Sequence[tuple[Any, str]]) -> None:
    """One yellow line on stderr naming the unreadable images (the first five) and why."""
    if skipped:
        err_console.print(f"[yellow]Skipped[/] {describe_skipped(skipped)}", highlight=False)


def print_not_applicable(not_applicable: dict[str, str]) -> None:
    """``n/a METEOR, SPICE: <reason>``, one line per reason."""
    reasons: dict[str, list[str]] = {}
    for column, reason in not_applicable.items():
        reasons.setdefault(reason, []).append(column)
    for reason, columns in reasons.items():
        console.print(f"n/a {', '.join(columns)}: {reason}", highlight=False)
