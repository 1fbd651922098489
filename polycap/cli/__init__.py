"""The ``polycap`` command line: one module per command group, plugins add their own."""

from __future__ import annotations

import errno

import typer

from polycap.cli import (
    caption,
    compare,
    demo,
    encode,
    evaluate,
    export,
    importing,
    plugins,
    retrieval,
    serve,
    train,
)
from polycap.errors import PolycapError

# a write that fails midway (disk full, read-only, quota, permissions): one line, no traceback
WRITE_ERRORS = frozenset(
    {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EFBIG}
)

app = typer.Typer(
    name="polycap",
    help="Multilingual image captioning: CLIP prefix + a causal LM per language, as plugins.",
    no_args_is_help=True,
    # `polycap --install-completion` / `--show-completion`: bash, zsh, fish, PowerShell
    add_completion=True,
    pretty_exceptions_enable=False,
    # click's plain help layout: option names are never cut at 80 columns (cli/help.py)
    rich_markup_mode=None,
)


def _show_version(value: bool) -> None:
    if value:
        from polycap.version import __version__

        typer.echo(f"polycap {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", is_eager=True, callback=_show_version, help="Print the version."
    ),
) -> None:
    """Multilingual image captioning: CLIP prefix + a causal LM per language, as plugins."""


app.command("train")(train.train_command)
app.command("encode")(encode.encode_command)
app.command("caption")(caption.caption_command)
app.command("demo")(demo.demo_command)
app.command("eval")(evaluate.eval_command)
app.command("index")(retrieval.index_command)
app.command("retrieve")(retrieval.retrieve_command)
app.command("compare")(compare.compare_command)
app.command("serve")(serve.serve_command)
app.command("export")(export.export_command)
app.add_typer(plugins.app, name="plugins")
app.add_typer(importing.app, name="import")


def quiet_libraries() -> None:
    """Our own progress bars only: no per-shard bars or info logs from Hugging Face."""
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def command() -> None:
    """Run the command line (``app`` with its help as plain text, :mod:`polycap.cli.help`)."""
    from polycap.cli.help import plain_help

    plain_help(typer.main.get_command(app))(prog_name="polycap")


def main() -> None:
    """Entry point: user errors become one line and exit code 2, never a traceback."""
    from polycap.cli.output import fail
    from polycap.plugins import get_host

    quiet_libraries()

    try:
        get_host().register_commands(app)
        command()
    except PolycapError as error:
        fail(str(error), error.exit_code)
    except OSError as error:
        if error.errno not in WRITE_ERRORS:
            raise
        where = f"{error.filename}: " if error.filename else ""
        reason = error.strerror or str(error)
        if error.errno in (errno.EACCES, errno.EPERM):  # a read or a write
            fail(f"{where}{reason}")
        fail(f"{where}a write failed ({reason}); nothing half-written is kept")
    except KeyboardInterrupt:
        fail("interrupted", 130)
