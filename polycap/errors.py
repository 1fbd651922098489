"""Errors the CLI turns into one clear line and exit code 2."""

from __future__ import annotations


class PolycapError(Exception):
    """Base class: a problem the user can fix; shown as one line, never a traceback."""

    exit_code = 2


class BadInput(PolycapError):
    """User data (images, caption files, checkpoints, configs) is missing or malformed."""


class UnknownName(PolycapError):
    """A name (language, encoder, mapper, metric, format) that nothing registered."""


class DuplicateName(PolycapError):
    """Two plugins registered the same name in one registry."""


def first_line(error: BaseException, limit: int | None = None) -> str:
    """The first line of ``error``'s message (its class name when it has none), at most
    ``limit`` characters: what one-line error messages quote of a library's exception."""
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    return line if limit is None else line[:limit]


def warn(message: str) -> None:
    """One warning line on stderr."""
    import sys

    print(f"Warning: {message}", file=sys.stderr)
