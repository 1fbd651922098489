"""One generic registry: register, get, names; duplicates refused; unknown names get a hint."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from typing import Generic, TypeVar

from polycap.errors import DuplicateName, UnknownName

T = TypeVar("T")


class Registry(Generic[T]):
    """Named objects of one kind (language packs, mappers, encoders, ...).

    ``kind`` is the human name used in messages, e.g. "language pack".
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._sources: dict[str, str] = {}
        self._conflicts: dict[str, list[str]] = {}

    def register(self, name: str, item: T, source: str = "polycap") -> None:
        """Add ``item`` under ``name``; a second claim on one name is an error naming both."""
        if name in self._conflicts:
            raise DuplicateName(self.conflict_message(name) + f" (and {source!r})")
        if name in self._items:
            raise DuplicateName(
                f"Two plugins register the {self.kind} {name!r}: "
                f"{self._sources[name]!r} and {source!r}. Uninstall one of them."
            )
        self._items[name] = item
        self._sources[name] = source

    def disable(self, name: str, source: str) -> str:
        """Make ``name`` unusable because ``source`` claims it too; returns the message that
        :meth:`get` will raise for it (naming every plugin that claims it)."""
        claimants = self._conflicts.setdefault(name, [])
        if name in self._items:
            claimants.append(self._sources.pop(name))
            del self._items[name]
        claimants.append(source)
        return self.conflict_message(name)

    def conflict_message(self, name: str) -> str:
        first, *others = self._conflicts[name]
        named = " and ".join(repr(source) for source in [first, *others])
        return (
            f"Two plugins register the {self.kind} {name!r}: {named}. "
            "Uninstall one of them to use it."
        )

    def conflicts(self) -> dict[str, list[str]]:
        """Names claimed by more than one plugin (unusable) -> the plugins claiming them."""
        return {name: list(sources) for name, sources in self._conflicts.items()}

    def get(self, name: str) -> T:
        """The item called ``name``, or an UnknownName error with a 'did you mean'
        (DuplicateName when two plugins claim it)."""
        if name in self._conflicts:
            raise DuplicateName(self.conflict_message(name))
        try:
            return self._items[name]
        except KeyError:
            raise UnknownName(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        """``No language pack 'jp'. Did you mean 'ja'? Installed: ja, ru.``"""
        message = f"No {self.kind} {name!r}."
        close = difflib.get_close_matches(name, self._items, n=1, cutoff=0.5)
        if close:
            message += f" Did you mean {close[0]!r}?"
        names = self.names()
        if not names:
            message += " None installed."
        elif len(names) <= 8:
            message += f" Installed: {', '.join(names)}."
        else:
            message += f" {len(names)} installed; see 'polycap plugins list'."
        return message

    def source(self, name: str) -> str:
        """Which plugin registered ``name``."""
        return self._sources[name]

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def items(self) -> Iterator[tuple[str, T]]:
        """(name, item) pairs, sorted by name."""
        for name in self.names():
            yield name, self._items[name]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)
