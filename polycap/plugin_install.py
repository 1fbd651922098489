"""What ``polycap plugins install / uninstall / new`` do; the CLI only parses and prints.

- ``install``: curated short names, the language packs (``ja``, ``ru``, ``zh``) and the
  project's other plugins (``faiss``, ``hf-encoders``), become their distributions
  (``polycap-ja``, ``polycap-faiss``, ...), installed from the checkout's ``languages/`` or
  ``plugins/`` folder when polycap runs from a checkout (editable, built with the setuptools
  already installed, so it works offline), else from the package index; other names, paths and
  URLs go to pip as they are. pip runs as ``sys.executable -m pip``. Afterwards a *fresh*
  Python process loads every plugin (without the current folder on its path, so a folder that
  holds a ``polycap/`` checkout does not shadow the installed polycap), and the difference
  from before says what the install added, or which plugin fails to load.
- ``uninstall``: curated names, plugin names and distribution names → ``pip uninstall``.
- ``new``: a ready-to-edit language pack from the templates in ``polycap/templates/pack``.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import json
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from polycap.errors import BadInput, PolycapError, UnknownName
from polycap.plugins import (
    BUILTIN_PLUGINS,
    ENTRY_POINT_GROUP,
    REGISTRY_HOOKS,
    PluginHost,
    canonical_name,
)
from polycap.version import __version__, package_version

CURATED: dict[str, str] = {"ja": "polycap-ja", "ru": "polycap-ru", "zh": "polycap-zh"}
# the project's plugins that are not language packs (folders under plugins/ in a checkout)
CURATED_PLUGINS: dict[str, str] = {"faiss": "polycap-faiss", "hf-encoders": "polycap-hf-encoders"}
_SHORT_NAME = re.compile(r"^[A-Za-z]{2,3}$")
_CODE = re.compile(r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$")
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
# ``python -c`` puts the current folder ('') first on sys.path: drop it, so that a folder with a
# polycap/ checkout in it does not shadow the polycap being checked. (Not ``python -I``: that
# would also drop PYTHONPATH and the user's site-packages, where polycap may be installed.)
_PROBE = (
    "import sys; sys.path[:] = [p for p in sys.path if p != '']; "
    "from polycap.plugin_install import probe_main; probe_main()"
)


class PipFailed(PolycapError):
    """pip itself reported an error (its own output says which)."""

    exit_code = 1


class PluginBroken(PolycapError):
    """The distribution installed, but its plugin does not load; polycap works without it."""

    exit_code = 1


# -- what each name means ----------------------------------------------------------------------


@dataclass
class Target:
    """One thing to install: what the user asked for and what pip is given."""

    request: str
    pip_args: list[str]
    origin: str  # "checkout", "index", "path" or "pip"


def checkout_languages() -> Path | None:
    """``<checkout>/languages`` when polycap runs from a source checkout, else ``None``."""
    languages = Path(__file__).resolve().parents[1] / "languages"
    return languages if languages.is_dir() else None


def checkout_plugins() -> Path | None:
    """``<checkout>/plugins`` when polycap runs from a source checkout, else ``None``."""
    plugins = Path(__file__).resolve().parents[1] / "plugins"
    return plugins if plugins.is_dir() else None


def curated_names() -> dict[str, str]:
    """Every curated short name -> its distribution (language packs and other plugins)."""
    return {**CURATED, **CURATED_PLUGINS}


def _curated(name: str) -> Target | None:
    """A curated short name as a Target: its checkout folder, else its distribution."""
    key = name.lower()
    if key in CURATED:
        folder = checkout_languages()
    elif key in CURATED_PLUGINS:
        folder = checkout_plugins()
    else:
        return None
    if folder is not None and (folder / key / "pyproject.toml").is_file():
        return Target(name, ["-e", str(folder / key)], "checkout")
    return Target(name, [curated_names()[key]], "index")


def resolve(name: str, editable: bool = False) -> Target:
    """Turn one ``plugins install`` argument into pip arguments (see the module docstring)."""
    curated = _curated(name)
    if curated is not None:
        return curated
    if _SHORT_NAME.match(name):
        message = f"No curated language pack {name!r}."
        close = difflib.get_close_matches(name.lower(), CURATED, n=1, cutoff=0.5)
        if close:
            message += f" Did you mean {close[0]!r}?"
        message += (
            f" Curated: {', '.join(sorted(curated_names()))}; other plugins install by "
            "distribution name (polycap-xx) or path."
        )
        raise UnknownName(message)
    if "://" in name or name.startswith(("git+", "hg+", "svn+", "bzr+")):
        return Target(name, [name], "pip")
    if _looks_like_path(name):
        path = Path(name).expanduser()
        if not path.exists():
            raise BadInput(f"{name}: no such file or directory")
        path = path.resolve()
        return Target(name, ["-e", str(path)] if editable else [str(path)], "path")
    return Target(name, [name], "pip")


def _looks_like_path(name: str) -> bool:
    return (
        "/" in name
        or "\\" in name
        or name.startswith(".")
        or name.endswith(".whl")
        or name.endswith((".tar.gz", ".zip"))
        or Path(name).exists()
    )


# -- running pip and probing plugins -----------------------------------------------------------


def pip_command(args: Sequence[str]) -> list[str]:
    """``python -m pip ...`` for the Python that runs polycap."""
    return [sys.executable, "-m", "pip", *args]


def run_pip(args: Sequence[str]) -> None:
    """Run pip with its output on the terminal; a failure is :class:`PipFailed`."""
    completed = subprocess.run(pip_command(args), check=False)
    if completed.returncode != 0:
        raise PipFailed(
            f"pip {args[0]} failed (exit code {completed.returncode}); its messages are above"
        )


@dataclass
class Probe:
    """Every plugin as a fresh process sees it (``records`` as in ``plugins list --json``)."""

    records: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None  # e.g. two plugins claiming one name, or polycap not starting

    def by_name(self) -> dict[str, dict[str, Any]]:
        return {record["name"]: record for record in self.records}


def probe(python: str | None = None) -> Probe:
    """Load every plugin in a new ``python`` process (default: this one's interpreter)."""
    completed = subprocess.run(
        [python or sys.executable, "-c", _PROBE], capture_output=True, text=True, check=False
    )
    lines = completed.stdout.strip().splitlines()
    if completed.returncode != 0 or not lines:
        stderr = [line for line in completed.stderr.strip().splitlines() if line.strip()]
        reason = stderr[-1] if stderr else f"exit code {completed.returncode}"
        return Probe(error=f"polycap does not start in a fresh process: {reason}")
    data = json.loads(lines[-1])
    return Probe(records=data["plugins"], error=data["error"])


def probe_main() -> None:
    """Body of the fresh process: print one JSON line with every plugin's record."""
    host = PluginHost()
    error = None
    try:
        records = plugin_records(host)
    except PolycapError as failure:  # e.g. two plugins register one name
        error = str(failure)
        records = plugin_records(host, with_provides=False)
    print(json.dumps({"plugins": records, "error": error}, ensure_ascii=False))


def plugin_records(host: Any, with_provides: bool = True) -> list[dict[str, Any]]:
    """One dict per plugin: name, distribution, version, hooks, what it provides, its error."""
    provided: dict[str, list[str]] = {}
    if with_provides:
        registries = host.registries
        for attribute, (_hook, kind) in REGISTRY_HOOKS.items():
            registry = getattr(registries, attribute)
            for name in registry.names():
                provided.setdefault(registry.source(name), []).append(f"{kind} {name}")
            for name, sources in registry.conflicts().items():
                for source in sources:
                    provided.setdefault(source, []).append(
                        f"{kind} {name} (unusable: also claimed by "
                        f"{', '.join(s for s in sources if s != source)})"
                    )
    infos = sorted(host.infos.values(), key=lambda info: (info.distribution is None, info.name))
    return [
        {
            "name": info.name,
            "distribution": info.distribution or "polycap (built in)",
            "version": info.version or __version__,
            "hooks": info.hooks,
            "provides": provided.get(info.name, []),
            "error": info.error,
        }
        for info in infos
    ]


# -- install / uninstall -----------------------------------------------------------------------


@dataclass
class InstallReport:
    """What an install did: the pip targets, and the plugins that are new or changed."""

    targets: list[Target]
    changed: list[dict[str, Any]]
    error: str | None = None

    @property
    def broken(self) -> list[dict[str, Any]]:
        return [record for record in self.changed if record["error"]]


@dataclass(frozen=True)
class PipOptions:
    """``pip install`` flags ``plugins install`` passes on (``editable`` applies to paths)."""

    upgrade: bool = False
    editable: bool = False
    no_deps: bool = False
    no_build_isolation: bool = False
    force_reinstall: bool = False

    def flags(self) -> list[str]:
        """The pip flags, e.g. ``["--upgrade", "--no-deps"]``."""
        wanted = (
            ("--upgrade", self.upgrade),
            ("--no-deps", self.no_deps),
            ("--no-build-isolation", self.no_build_isolation),
            ("--force-reinstall", self.force_reinstall),
        )
        return [flag for flag, on in wanted if on]


def install(
    names: Sequence[str],
    options: PipOptions | None = None,
    *,
    pip: Callable[[Sequence[str]], None] = run_pip,
    prober: Callable[[], Probe] = probe,
    on_targets: Callable[[list[Target]], None] | None = None,
) -> InstallReport:
    """Resolve every name first (a bad one stops everything before pip runs), install them in
    one pip call, then compare the plugins a fresh process loads before and after."""
    if not names:
        raise BadInput("name at least one plugin to install")
    options = options or PipOptions()
    targets = [resolve(name, editable=options.editable) for name in names]
    if on_targets is not None:
        on_targets(targets)
    if any(target.origin == "checkout" for target in targets) and _have_setuptools():
        # build checkout packs with the setuptools already here
        options = replace(options, no_build_isolation=True)
    before = prober().by_name()
    pip(["install", *options.flags(), *(arg for target in targets for arg in target.pip_args)])
    after = prober()
    changed = [record for name, record in after.by_name().items() if before.get(name) != record]
    return InstallReport(targets, changed, after.error)


def _have_setuptools() -> bool:
    """setuptools is importable and new enough (>= 68) to build the checkout's packs."""
    version = installed_distribution_version("setuptools")
    return version is not None and int(version.split(".")[0]) >= 68


def installed_distribution_version(name: str) -> str | None:
    return package_version(name)


def installed_distribution(name: str) -> str | None:
    """The installed distribution called ``name`` (any spelling), or ``None``."""
    try:
        return importlib.metadata.distribution(name).metadata["Name"]
    except importlib.metadata.PackageNotFoundError:
        return None


def distribution_for(name: str) -> str:
    """The installed distribution behind a curated name, plugin name or distribution name."""
    candidates = [curated_names().get(name.lower(), name)]
    candidates += [
        ep.dist.name
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        if ep.name == name and ep.dist is not None
    ]
    for candidate in candidates:
        found = installed_distribution(candidate)
        if found is not None:
            if canonical_name(found) == "polycap":
                raise BadInput("refusing to uninstall polycap itself; use pip for that")
            return found
    raise BadInput(
        f"{name}: no installed plugin or distribution by that name (see 'polycap plugins list')"
    )


def uninstall(names: Sequence[str], pip: Callable[[Sequence[str]], None] = run_pip) -> list[str]:
    """``pip uninstall -y`` the distributions behind ``names``; returns their names."""
    if not names:
        raise BadInput("name at least one plugin to uninstall")
    distributions = list(dict.fromkeys(distribution_for(name) for name in names))
    pip(["uninstall", "-y", *distributions])
    return distributions


# -- a new pack ---------------------------------------------------------------------------------


@dataclass
class NewPack:
    """Where ``new_pack`` wrote a pack, and the names it chose."""

    directory: Path
    code: str
    name: str
    distribution: str
    module: str
    files: list[Path]
    conflict: str | None = None  # an installed distribution that already provides ``code``


def pack_names(code: str, name: str | None = None) -> dict[str, str]:
    """Template values: code, name, distribution, module, class name, polycap version."""
    if not _CODE.match(code) or len(code) > 24:
        raise BadInput(
            f"{code!r} is not a language code: use lower-case letters and digits, "
            "optionally with - or _ (e.g. 'uk', 'pt-br')"
        )
    name = (name or code).strip()
    if not name or len(name) > 40 or any(c in name for c in '"\\\n\r'):
        raise BadInput(
            f"{name!r} is not usable as a language name (at most 40 "
            "characters; no quotes, backslashes or line breaks)"
        )
    words = re.findall(r"[A-Za-z0-9]+", name)
    if not words or not words[0][0].isalpha():
        words = re.findall(r"[a-z0-9]+", code)
    class_name = "".join(word[:1].upper() + word[1:] for word in words) + "Pack"
    return {
        "code": code,
        "name": name,
        "distribution": "polycap-" + code.replace("_", "-"),
        "module": "polycap_" + code.replace("-", "_"),
        "class_name": class_name,
        "polycap_version": __version__,
    }


def render(template: str, values: dict[str, str]) -> str:
    """Replace every ``{{key}}``; an unknown key is a bug in the template."""

    def substitute(match: re.Match[str]) -> str:
        try:
            return values[match.group(1)]
        except KeyError:
            raise KeyError(f"template placeholder {match.group(0)} has no value") from None

    return _PLACEHOLDER.sub(substitute, template)


def _template_files() -> list[tuple[str, str]]:
    """(relative path, text) of every template, e.g. ``("module/__init__.py.tmpl", ...)``."""
    root = resources.files("polycap").joinpath("templates", "pack")
    found: list[tuple[str, str]] = []

    def walk(node: Any, prefix: str) -> None:
        for child in sorted(node.iterdir(), key=lambda item: item.name):
            if child.is_dir():
                walk(child, f"{prefix}{child.name}/")
            elif child.name.endswith(".tmpl"):
                found.append((prefix + child.name, child.read_text(encoding="utf-8")))

    walk(root, "")
    return found


def new_pack(code: str, name: str | None = None, directory: Path | None = None) -> NewPack:
    """Write a language pack for ``code`` that installs and passes its tests unedited."""
    values = pack_names(code, name)
    directory = Path(directory) if directory is not None else Path.cwd() / values["distribution"]
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise BadInput(f"{directory}: already exists and is not empty; choose another --dir")
    files: list[Path] = []
    for relative, text in _template_files():
        target = relative.removesuffix(".tmpl")
        target = target.replace("module/", values["module"] + "/").replace(
            "test_module.py", f"test_{values['module']}.py"
        )
        path = directory / target
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(text, values), encoding="utf-8")
        files.append(path)
    return NewPack(
        directory,
        values["code"],
        values["name"],
        values["distribution"],
        values["module"],
        files,
        _provider_of(values["code"]),
    )


def _provider_of(code: str) -> str | None:
    """Who already provides language ``code``: a distribution, polycap itself, or nobody."""
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.name == code:
            return entry_point.dist.name if entry_point.dist is not None else entry_point.value
    for module_name in BUILTIN_PLUGINS:
        hook = getattr(importlib.import_module(module_name), "register_languages", None)
        codes: list[str] = []
        if hook is not None:
            hook(lambda name, _item, _codes=codes: _codes.append(name))
        if code in codes:
            return "polycap (built in)"
    return None
