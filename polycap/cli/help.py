"""``--help`` as plain text that reads at 80 columns: click's own layout (an option's names in
full on its line, the help wrapped beside or below it; flags without a metavar), so that
``polycap train --help | grep retrieval`` finds every option. The commands' docstrings keep
their rich markup (``[bold]...[/]``) for the console; it is taken out of the help here."""

from __future__ import annotations

import re
from typing import Any

# rich markup in docstrings and option help: [bold], [/], [/bold], [dim], [yellow], ...
_MARKUP = re.compile(
    r"\[/?(?:bold|dim|italic|underline|red|green|yellow|blue|magenta|cyan|white)?"
    r"(?: [a-z ]+)?\]"
)
WIDEST = 120  # a wide terminal's help is at most this wide (click's default stops at 80)


def plain(text: str | None) -> str | None:
    """``text`` without rich markup tags."""
    return _MARKUP.sub("", text) if text else text


def plain_help(command: Any) -> Any:
    """Strip rich markup from the help of ``command`` (a click command), its options and, for
    a group, every subcommand; returns ``command``."""
    command.help = plain(command.help)
    command.short_help = plain(command.short_help)
    command.context_settings.setdefault("max_content_width", WIDEST)
    for param in getattr(command, "params", []):
        if hasattr(param, "help"):
            param.help = plain(param.help)
    for sub in getattr(command, "commands", {}).values():
        plain_help(sub)
    return command
