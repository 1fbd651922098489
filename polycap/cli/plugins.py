"""``polycap plugins``: list, install, uninstall, and start a new language pack.

The work is done in :mod:`polycap.plugin_install`; this module parses and prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from polycap.cli.output import console, err_console, fail, print_json, print_table

app = typer.Typer(help="Language packs and other plugins.", no_args_is_help=True)


@app.command("list")
def list_command(
    json_output: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Installed plugins: name, version, hooks, load errors, and the names they registered."""
    from polycap.plugin_install import plugin_records
    from polycap.plugins import get_host

    records = plugin_records(get_host())
    if json_output:
        print_json(records)
        return
    columns = ["name", "distribution", "version", "hooks", "provides", "error"]
    print_table(
        "polycap plugins",
        columns,
        [
            (
                r["name"],
                r["distribution"],
                r["version"],
                ", ".join(r["hooks"]),
                ", ".join(r["provides"]),
                r["error"] or "",
            )
            for r in records
        ],
    )


@app.command("install")
def install_command(
    names: list[str] = typer.Argument(
        ...,
        metavar="NAME",
        help="Curated name (ja, ru, zh, faiss, hf-encoders), distribution name, path or URL.",
    ),
    upgrade: bool = typer.Option(False, "--upgrade", "-U", help="Upgrade if installed."),
    editable: bool = typer.Option(False, "--editable", "-e", help="Install paths editable."),
    no_deps: bool = typer.Option(False, "--no-deps", help="Do not install dependencies."),
    no_build_isolation: bool = typer.Option(
        False, "--no-build-isolation", help="Build with what is installed (offline installs)."
    ),
    force_reinstall: bool = typer.Option(False, "--force-reinstall", help="Reinstall anyway."),
) -> None:
    """Install plugins with pip, then check in a fresh process what they added.

    Curated names (ja, ru, zh; faiss, hf-encoders) come from languages/ or plugins/ in a
    checkout, else from the package index (polycap-ja, polycap-faiss, ...).
    """
    from polycap.plugin_install import PipOptions, PluginBroken, Target, install

    def announce(targets: list[Target]) -> None:
        for target in targets:
            where = {
                "checkout": "this checkout",
                "index": "the package index",
                "path": "a local path",
                "pip": "pip",
            }[target.origin]
            command = " ".join(target.pip_args)
            err_console.print(
                f"Installing {target.request} from {where}: pip install {command}",
                highlight=False,
                soft_wrap=True,
            )

    options = PipOptions(upgrade, editable, no_deps, no_build_isolation, force_reinstall)
    report = install(names, options, on_targets=announce)
    working = [record for record in report.changed if not record["error"]]
    for record in working:
        console.print(f"Added plugin {_describe(record)}", highlight=False, soft_wrap=True)
    if report.error:
        fail(f"installed, but polycap now reports: {report.error}", 1)
    if report.broken:
        lines = [
            f"plugin {record['name']!r} ({record['distribution']} {record['version']}) "
            f"fails to load: {record['error']}"
            for record in report.broken
        ]
        distributions = " ".join(sorted({r["distribution"] for r in report.broken}))
        raise PluginBroken(
            "; ".join(lines) + ". polycap keeps working without it; fix the plugin or run "
            f"'polycap plugins uninstall {distributions}'."
        )
    if not working:
        console.print(
            "pip finished; no polycap plugin was added or changed "
            "(already installed? try --upgrade).",
            highlight=False,
            soft_wrap=True,
        )


@app.command("uninstall")
def uninstall_command(
    names: list[str] = typer.Argument(
        ..., metavar="NAME", help="Curated pack, plugin name or distribution name."
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Uninstall plugins (their distributions) with pip."""
    from polycap.plugin_install import distribution_for, uninstall

    distributions = list(dict.fromkeys(distribution_for(name) for name in names))
    if not yes and not typer.confirm(f"Uninstall {', '.join(distributions)}?"):
        raise typer.Exit(1)
    for distribution in uninstall(distributions):
        console.print(f"Uninstalled {distribution}", highlight=False, soft_wrap=True)


@app.command("new")
def new_command(
    code: str = typer.Argument(..., help="Language code of the new pack, e.g. uk or pt-br."),
    name: str = typer.Option(None, "--name", help='Language name, e.g. "Ukrainian".'),
    directory: Path = typer.Option(
        None, "--dir", help="Where to write it (default: ./polycap-CODE).", file_okay=False
    ),
) -> None:
    """Write a ready-to-edit language pack that installs and passes its tests as it is."""
    from polycap.plugin_install import new_pack

    made = new_pack(code, name, directory)
    console.print(
        f"Wrote the {made.name} pack {made.distribution} "
        f"(module {made.module}, language code {made.code}) to {made.directory}:",
        highlight=False,
        soft_wrap=True,
    )
    for path in made.files:
        console.print(f"  {path.relative_to(made.directory)}", highlight=False, soft_wrap=True)
    if made.conflict:
        err_console.print(
            f"Note: {made.conflict} already provides the language {made.code!r}; "
            "installing both is an error.",
            highlight=False,
            soft_wrap=True,
        )
    console.print(
        "Next:\n"
        f"  polycap plugins install -e {made.directory}\n"
        f"  pytest {made.directory / 'tests'}\n"
        f"  then edit the TODOs in {made.directory / made.module / '__init__.py'}",
        highlight=False,
        soft_wrap=True,
    )


def _describe(record: dict[str, Any]) -> str:
    provides = ", ".join(record["provides"]) or "nothing registered"
    return f"{record['name']!r} ({record['distribution']} {record['version']}): {provides}"
