"""Built-in prefix mappers: ClipCap's ``mlp``, ``transformer`` and ``linear``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from polycap.hookspecs import Register, hookimpl


@dataclass(frozen=True)
class BuiltinMapper:
    """A mapper kind whose class lives in :mod:`polycap.model.mapping`; calling it builds one.

    Registering this stand-in instead of the class keeps torch unimported until a mapper is
    built (``polycap --help`` and ``plugins list`` stay fast).
    """

    class_name: str

    @property
    def cls(self) -> type:
        """The mapper class itself (imports torch)."""
        from polycap.model import mapping

        return getattr(mapping, self.class_name)

    def __call__(self, clip_dim: int, lm_dim: int, prefix_length: int, **options: Any) -> Any:
        return self.cls(clip_dim, lm_dim, prefix_length, **options)


@hookimpl
def register_mappers(register: Register) -> None:
    """Register ClipCap's three mappers."""
    register("mlp", BuiltinMapper("MLPMapper"))
    register("transformer", BuiltinMapper("TransformerMapper"))
    register("linear", BuiltinMapper("LinearMapper"))
