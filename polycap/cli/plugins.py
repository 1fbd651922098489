"""``polycap plugins``: list, install, uninstall, and start a new language pack.

The work is done in :mod:`polycap.plugin_install`; this module parses and prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from polycap.cli.output import console, err_console, fail, print_json

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
    rows = plugin_rows(records)
    columns = ["plugin", "version", "provides"]
    if any(row[3] for row in rows):
        columns.append("error")
    table = Table(title="polycap plugins")
    table.add_column("plugin", no_wrap=True)
    table.add_column("version", no_wrap=True)
    table.add_column("provides", ratio=1)
    if len(columns) == 4:
        table.add_column("error", ratio=1)
    for row in rows:
        table.add_row(*row[: len(columns)])
    console.print(table)
    console.print(
        "Hooks, entry-point names and more: polycap plugins list --json",
        style="dim",
        highlight=False,
    )


BUILT_IN = "polycap (built in)"


def plugin_rows(records: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    """(plugin, version, provides, error) per plugin for the table: the built-in plugins as one
    row, each other plugin as its name over its distribution, what it provides grouped by kind
    (``metric: bleu, chrf, ...``)."""
    built_in = [r for r in records if r["distribution"] == BUILT_IN]
    others = [r for r in records if r["distribution"] != BUILT_IN]
    rows = [
        (
            r["name"] if r["name"] == r["distribution"] else f"{r['name']}\n{r['distribution']}",
            r["version"],
            grouped_provides(r["provides"]),
            r["error"] or "",
        )
        for r in others
    ]
    if built_in:
        provides = [item for r in built_in for item in r["provides"]]
        errors = [f"{r['name']}: {r['error']}" for r in built_in if r["error"]]
        version = built_in[0]["version"]
        rows.append((BUILT_IN, version, grouped_provides(provides), "; ".join(errors)))
    return rows


def grouped_provides(items: list[str]) -> str:
    """``["metric bleu", "metric chrf", "encoder hf"]`` -> ``"encoder: hf\nmetric: bleu, chrf"``
    (one line per kind, kinds in registry order)."""
    from polycap.plugins import REGISTRY_HOOKS

    kinds = sorted((kind for _hook, kind in REGISTRY_HOOKS.values()), key=len, reverse=True)
    grouped: dict[str, list[str]] = {}
    for item in items:
        kind = next((k for k in kinds if item.startswith(k + " ")), "")
        grouped.setdefault(kind, []).append(item[len(kind) :].strip())
    order = [kind for _hook, kind in REGISTRY_HOOKS.values()] + [""]
    lines = [
        f"{kind + ': ' if kind else ''}{', '.join(grouped[kind])}"
        for kind in order
        if kind in grouped
    ]
    return "\n".join(lines) or "nothing registered"


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
