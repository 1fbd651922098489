"""The plugin manager: built-in parts and entry points of group ``polycap``, loaded one at a time.

A plugin that fails to import, implements a hook that does not exist (a misspelt name), or
whose hook raises, is recorded as a load error and shown as a warning; the rest of polycap
keeps working. Two plugins claiming one name make only that name unusable: a warning names
both, and using the name is an error naming both.

``POLYCAP_LOAD_PLUGINS``: a comma-separated list of entry-point names to load (the others are
not imported); empty loads none. Built-in parts always load.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

import pluggy

from polycap import hookspecs
from polycap.errors import DuplicateName, warn
from polycap.registry import Registry

if TYPE_CHECKING:
    from collections.abc import Callable

    from polycap.language import LanguagePack
    from polycap.parts import CaptionFormat, ImageEncoder, IndexBackend, Metric

    EncoderLoader = Callable[[str, str | None, str], ImageEncoder]
    MapperClass = Callable[..., Any]  # cls(clip_dim, lm_dim, prefix_length, **options) -> Module

ENTRY_POINT_GROUP = "polycap"
LOAD_PLUGINS_ENV = "POLYCAP_LOAD_PLUGINS"
BUILTIN_PLUGINS = (
    "polycap.builtin.mappers",
    "polycap.builtin.encoders",
    "polycap.builtin.english",
    "polycap.builtin.formats",
    "polycap.builtin.tables",
    "polycap.builtin.benchmark_formats",
    "polycap.builtin.metrics",
    "polycap.builtin.index_backends",
)
REGISTRY_HOOKS = {
    "languages": ("register_languages", "language pack"),
    "encoders": ("register_encoders", "encoder"),
    "mappers": ("register_mappers", "mapper"),
    "metrics": ("register_metrics", "metric"),
    "caption_formats": ("register_caption_formats", "caption format"),
    "index_backends": ("register_index_backends", "index backend"),
}
ALIAS_HOOKS = {"register_datasets": "caption_formats"}  # the older name, still honoured


@dataclass
class PluginInfo:
    """What ``polycap plugins list`` shows for one plugin."""

    name: str
    distribution: str | None = None
    version: str | None = None
    hooks: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class Registries:
    """All registries, filled by the hooks of every loaded plugin."""

    languages: Registry[LanguagePack]
    encoders: Registry[EncoderLoader]
    mappers: Registry[MapperClass]
    metrics: Registry[Metric]
    caption_formats: Registry[CaptionFormat]
    index_backends: Registry[IndexBackend]

    @property
    def datasets(self) -> Registry[CaptionFormat]:
        """The caption formats (the registry's older name)."""
        return self.caption_formats


class PluginHost:
    """A plugin manager plus what was loaded, what failed, and the registries it filled."""

    def __init__(self, load_entry_points: bool = True, builtins: bool = True) -> None:
        self.pm = pluggy.PluginManager("polycap")
        self.pm.add_hookspecs(hookspecs)
        self._infos: dict[str, PluginInfo] = {}
        self._builtins_pending = builtins  # imported on first use: `polycap --help` needs none
        if load_entry_points:
            self._load_entry_points()
        self._registries: Registries | None = None

    @property
    def infos(self) -> dict[str, PluginInfo]:
        """Every plugin (built-in parts included) by name, with its hooks and load error."""
        self._load_builtins()
        return self._infos

    def _load_builtins(self) -> None:
        """Register the built-in parts (they implement no ``register_commands``)."""
        if self._builtins_pending:
            self._builtins_pending = False
            for module_name in BUILTIN_PLUGINS:
                self._register_module(module_name, importlib.import_module(module_name))

    def _register_module(
        self, name: str, module: Any, distribution: str | None = None, version: str | None = None
    ) -> None:
        """Register ``module``; a hook implementation matching no hookspec (a misspelt hook
        name) unregisters it again and is recorded as its load error."""
        info = PluginInfo(name, distribution, version, self._hook_names(module))
        self._infos[name] = info
        self.pm.register(module, name=name)
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError:
            self.pm.unregister(name=name)
            unknown = sorted(
                hook
                for hook in dir(module)
                if self.pm.parse_hookimpl_opts(module, hook) is not None
                and not hasattr(hookspecs, hook)
            )
            info.error = f"unknown hook(s) {', '.join(unknown)}: no such hookspec (misspelt?)"
            warn(f"plugin {name!r} not loaded: {info.error}")

    @staticmethod
    def _hook_names(module: Any) -> list[str]:
        return sorted(
            hook
            for hook in dir(hookspecs)
            if hook.startswith("register_") and hasattr(module, hook)
        )

    def _load_entry_points(self) -> None:
        for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            distribution = entry_point.dist.name if entry_point.dist else None
            version = entry_point.dist.version if entry_point.dist else None
            if entry_point.name in self._infos or not _selected(entry_point.name):
                continue
            try:
                module = entry_point.load()
                self._register_module(entry_point.name, module, distribution, version)
            except Exception as error:  # a broken plugin must not take the CLI down
                self._infos[entry_point.name] = PluginInfo(
                    entry_point.name,
                    distribution,
                    version,
                    error=f"{type(error).__name__}: {error}",
                )
                warn(f"plugin {entry_point.name!r} failed to load: {type(error).__name__}: {error}")

    def add_plugin(self, module: Any, name: str) -> None:
        """Register a plugin object directly (tests, embedding); registries are rebuilt."""
        self._register_module(name, module)
        self._registries = None

    @property
    def registries(self) -> Registries:
        """The registries, filled on first use by calling each plugin's hooks in turn."""
        if self._registries is None:
            self._load_builtins()
            self._registries = self._fill_registries()
        return self._registries

    def _fill_registries(self) -> Registries:
        filled: dict[str, Registry[Any]] = {}
        for attribute, (hook_name, kind) in REGISTRY_HOOKS.items():
            registry: Registry[Any] = Registry(kind)
            aliases = [alias for alias, target in ALIAS_HOOKS.items() if target == attribute]
            for name in (hook_name, *aliases):
                for impl in getattr(self.pm.hook, name).get_hookimpls():
                    register = _registering(registry, impl.plugin_name)
                    self._call_guarded(impl.plugin_name, impl.function, register)
            filled[attribute] = registry
        return Registries(**filled)

    def _call_guarded(self, source: str, function: Any, *args: Any) -> None:
        try:
            function(*args)
        except DuplicateName:
            raise
        except Exception as error:
            message = f"{hook_label(function)}: {type(error).__name__}: {error}"
            self._infos[source].error = message
            warn(f"plugin {source!r} failed in {message}")

    def register_commands(self, app: Any) -> None:
        """Let every plugin add its commands to ``app``."""
        for impl in self.pm.hook.register_commands.get_hookimpls():
            self._call_guarded(impl.plugin_name, impl.function, app)


def _registering(registry: Registry[Any], source: str) -> Any:
    """The ``register`` callable handed to ``source``'s hook: a name another plugin already
    claims becomes unusable (with a warning naming both), the rest of both plugins still works."""

    def register(name: str, item: Any) -> None:
        try:
            registry.register(name, item, source=source)
        except DuplicateName:
            warn(registry.disable(name, source))

    return register


def _selected(entry_point: str) -> bool:
    """Whether ``POLYCAP_LOAD_PLUGINS`` (when set) names this entry point."""
    chosen = os.environ.get(LOAD_PLUGINS_ENV)
    if chosen is None:
        return True
    return entry_point in {name.strip() for name in chosen.split(",")}


def canonical_name(distribution: str) -> str:
    """A distribution name as pip compares it: ``Polycap_JA`` -> ``polycap-ja``."""
    return re.sub(r"[-_.]+", "-", distribution).lower()


def hook_label(function: Any) -> str:
    """The hook's name, for messages."""
    return getattr(function, "__name__", "hook")


@cache
def get_host() -> PluginHost:
    """The process-wide plugin host (built once)."""
    return PluginHost()


def get_registries() -> Registries:
    """The process-wide registries."""
    return get_host().registries
