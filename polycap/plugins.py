"""The plugin manager: built-in parts and entry points of group ``polycap``, loaded one at a time.

A plugin that fails to import, or whose hook raises, is recorded as a load error and shown as a
warning; the rest of polycap keeps working. Two plugins claiming one name is a clear error.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import sys
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

import pluggy

from polycap import hookspecs
from polycap.errors import DuplicateName
from polycap.registry import Registry

if TYPE_CHECKING:
    from collections.abc import Callable

    from polycap.data import CaptionFormat
    from polycap.encoding import ImageEncoder
    from polycap.eval.runner import Metric
    from polycap.language import LanguagePack

    EncoderLoader = Callable[[str, str | None, str], ImageEncoder]
    MapperClass = Callable[..., Any]  # cls(clip_dim, lm_dim, prefix_length, **options) -> Module

ENTRY_POINT_GROUP = "polycap"
BUILTIN_PLUGINS = (
    "polycap.builtin.mappers",
    "polycap.builtin.encoders",
    "polycap.builtin.english",
    "polycap.builtin.formats",
    "polycap.builtin.metrics",
)
REGISTRY_HOOKS = {
    "languages": ("register_languages", "language pack"),
    "encoders": ("register_encoders", "encoder"),
    "mappers": ("register_mappers", "mapper"),
    "metrics": ("register_metrics", "metric"),
    "datasets": ("register_datasets", "caption format"),
}


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
    datasets: Registry[CaptionFormat]


class PluginHost:
    """A plugin manager plus what was loaded, what failed, and the registries it filled."""

    def __init__(self, load_entry_points: bool = True, builtins: bool = True) -> None:
        self.pm = pluggy.PluginManager("polycap")
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        if builtins:
            for module_name in BUILTIN_PLUGINS:
                self._register_module(module_name, importlib.import_module(module_name))
        if load_entry_points:
            self._load_entry_points()
        self._registries: Registries | None = None

    def _register_module(
        self, name: str, module: Any, distribution: str | None = None, version: str | None = None
    ) -> None:
        self.pm.register(module, name=name)
        self.infos[name] = PluginInfo(name, distribution, version, self._hook_names(module))

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
            if entry_point.name in self.infos:
                continue
            try:
                module = entry_point.load()
                self._register_module(entry_point.name, module, distribution, version)
            except Exception as error:  # a broken plugin must not take the CLI down
                self.infos[entry_point.name] = PluginInfo(
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
            self._registries = self._fill_registries()
        return self._registries

    def _fill_registries(self) -> Registries:
        filled: dict[str, Registry[Any]] = {}
        for attribute, (hook_name, kind) in REGISTRY_HOOKS.items():
            registry: Registry[Any] = Registry(kind)
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                source = impl.plugin_name

                def register(
                    name: str, item: Any, _source: str = source, _registry: Registry[Any] = registry
                ) -> None:
                    _registry.register(name, item, source=_source)

                self._call_guarded(source, impl.function, register)
            filled[attribute] = registry
        return Registries(**filled)

    def _call_guarded(self, source: str, function: Any, *args: Any) -> None:
        try:
            function(*args)
        except DuplicateName:
            raise
        except Exception as error:
            message = f"{hook_label(function)}: {type(error).__name__}: {error}"
            self.infos[source].error = message
            warn(f"plugin {source!r} failed in {message}")

    def register_commands(self, app: Any) -> None:
        """Let every plugin add its commands to ``app``."""
        for impl in self.pm.hook.register_commands.get_hookimpls():
            self._call_guarded(impl.plugin_name, impl.function, app)


def canonical_name(distribution: str) -> str:
    """A distribution name as pip compares it: ``Polycap_JA`` -> ``polycap-ja``."""
    return re.sub(r"[-_.]+", "-", distribution).lower()


def hook_label(function: Any) -> str:
    """The hook's name, for messages."""
    return getattr(function, "__name__", "hook")


def warn(message: str) -> None:
    """One yellow warning line on stderr."""
    print(f"Warning: {message}", file=sys.stderr)


@cache
def get_host() -> PluginHost:
    """The process-wide plugin host (built once)."""
    return PluginHost()


def get_registries() -> Registries:
    """The process-wide registries."""
    return get_host().registries
