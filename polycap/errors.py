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
