"""The built-in index backend: ``numpy``, the exact chunked scan (the reference for others)."""

from __future__ import annotations

from polycap.hookspecs import Register, hookimpl


@hookimpl
def register_index_backends(register: Register) -> None:
    """``numpy``: no index files; every row scored (see ``polycap.retrieval.backends``)."""
    from polycap.retrieval.backends import NumpyBackend

    register("numpy", NumpyBackend())
