"""``polycap plugins``: list what is installed (and what failed to load)."""

from __future__ import annotations

import typer

from polycap.cli.output import print_json, print_table

app = typer.Typer(help="Language packs and other plugins.", no_args_is_help=True)


@app.command("list")
def list_command(
    json_output: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Installed plugins: name, version, hooks, load errors, and the names they registered."""
    from polycap.plugins import REGISTRY_HOOKS, get_host

    host = get_host()
    registries = host.registries
    provided: dict[str, list[str]] = {}
    for attribute, (_hook, kind) in REGISTRY_HOOKS.items():
        registry = getattr(registries, attribute)
        for name in registry.names():
            provided.setdefault(registry.source(name), []).append(f"{kind} {name}")
    infos = sorted(host.infos.values(), key=lambda info: (info.distribution is None, info.name))
    records = [
        {"name": info.name, "distribution": info.distribution or "polycap (built in)",
         "version": info.version or __import__("polycap").__version__, "hooks": info.hooks,
         "provides": provided.get(info.name, []), "error": info.error}
        for info in infos
    ]
    if json_output:
        print_json(records)
        return
    print_table("polycap plugins", ["name", "distribution", "version", "hooks", "provides", "error"],
                [(r["name"], r["distribution"], r["version"], ", ".join(r["hooks"]),
                  ", ".join(r["provides"]), r["error"] or "") for r in records])
