"""Run the real ``polycap`` entry point in-process and capture what a user would see."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import pytest


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def flat(text: str) -> str:
    """Output with rich's line wrapping undone (white space runs folded to one space)."""
    return " ".join(text.split())


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> CliResult:
    """Call ``polycap.cli.main`` with ``args``; return exit code, stdout and stderr."""
    from polycap.cli import main

    saved = sys.argv
    sys.argv = ["polycap", *args]
    code = 0
    try:
        main()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        sys.argv = saved
    captured = capsys.readouterr()
    return CliResult(code, captured.out, captured.err)
