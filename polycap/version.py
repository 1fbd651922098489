"""polycap's version, and the one way to read any installed distribution's version."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterable

__version__ = "0.1.0"


def package_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or None when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def package_versions(names: Iterable[str]) -> dict[str, str]:
    """Versions of those of ``names`` that are installed (polycap's own from this module)."""
    found: dict[str, str] = {}
    for name in names:
        version = __version__ if name == "polycap" else package_version(name)
        if version is not None:
            found[name] = version
    return found
