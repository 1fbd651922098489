"""The command line as it reads in an 80-column terminal: every option name whole in --help
(so ``polycap train --help | grep`` finds it), no ``<bool>`` on flags, no rich markup left in
the text; ``plugins list`` readable; ``--version``; shell completion offered."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import typer

from polycap.cli import app

ENV = {**os.environ, "COLUMNS": "80", "TERM": "dumb", "PYTHONWARNINGS": "ignore"}


def polycap(*args: str, columns: int = 80) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "polycap", *args],
        capture_output=True,
        text=True,
        env={**ENV, "COLUMNS": str(columns)},
        check=False,
        timeout=300,
    )


def option_names(command: str) -> list[str]:
    """Every visible ``--name`` and ``-x`` of ``polycap COMMAND``, from the command itself."""
    click_command = typer.main.get_command(app).commands[command]
    return [
        name
        for param in click_command.params
        if not getattr(param, "hidden", False) and param.param_type_name == "option"
        for name in (*param.opts, *param.secondary_opts)
    ]


@pytest.mark.parametrize("command", ["train", "caption", "demo", "eval", "compare"])
def test_every_option_name_is_whole_at_80_columns(command) -> None:
    result = polycap(command, "--help")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    names = option_names(command)
    assert len(names) > 5
    for name in names:
        assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text), f"{name} cut or missing"
    assert not re.search(r"-[\w-]*…", text)  # no name cut short ("--retrieval-ba…")
    assert "<bool>" not in text
    assert "[bold]" not in text and "[/]" not in text
    assert max(len(line) for line in text.splitlines()) <= 80


def test_grep_finds_the_retrieval_options() -> None:
    lines = polycap("train", "--help").stdout.splitlines()
    found = [line.split()[0] for line in lines if line.strip().startswith("--retrieval")]
    expected = [n for n in option_names("train") if n.startswith("--retrieval")]
    assert expected and sorted(found) == sorted(expected)


def test_a_wide_terminal_gets_wider_help() -> None:
    wide = polycap("caption", "--help", columns=160).stdout
    assert max(len(line) for line in wide.splitlines()) > 80


def test_version() -> None:
    from polycap.version import __version__

    result = polycap("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"polycap {__version__}"


def test_shell_completion_is_offered() -> None:
    text = polycap("--help").stdout
    assert "--install-completion" in text and "--show-completion" in text
    script = polycap("--show-completion", "bash")
    assert script.returncode == 0, script.stderr
    assert "_POLYCAP_COMPLETE" in script.stdout


def test_plugins_list_reads_at_80_columns() -> None:
    result = polycap("plugins", "list")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert not re.search(r"\w…", text) and max(len(line) for line in text.splitlines()) <= 80
    assert text.count("polycap (built in)") == 1  # the built-in plugins as one row
    for name in ("ru", "polycap-ru", "zh", "polycap-zh"):
        assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text)
    for provided in ("open_clip", "webdataset", "transformer", "clipscore", "numpy", "en"):
        assert re.search(rf"(?<![\w-]){provided}(?![\w-])", text), provided


def test_plugins_list_groups_what_each_provides() -> None:
    from polycap.cli.plugins import grouped_provides

    assert grouped_provides(["metric bleu", "encoder hf", "metric chrf", "language pack uk"]) == (
        "language pack: uk\nencoder: hf\nmetric: bleu, chrf"
    )
    assert grouped_provides([]) == "nothing registered"
