"""Built-in prefix mappers: ClipCap's ``mlp``, ``transformer`` and ``linear``."""

from __future__ import annotations

from typing import Any

from polycap.hookspecs import Register, hookimpl


def _lazy(class_name: str) -> Any:
    """A constructor that imports torch (via polycap.mapping) only when a mapper is built."""

    def build(clip_dim: int, lm_dim: int, prefix_length: int, **options: Any) -> Any:
        from polycap import mapping

        return getattr(mapping, class_name)(clip_dim, lm_dim, prefix_length, **options)

    build.__name__ = build.__qualname__ = class_name
    build.__doc__ = f"Build polycap.mapping.{class_name} (torch imported on first use)."
    return build


@hookimpl
def register_mappers(register: Register) -> None:
    """Register ClipCap's three mappers."""
    register("mlp", _lazy("MLPMapper"))
    register("transformer", _lazy("TransformerMapper"))
    register("linear", _lazy("LinearMapper"))
