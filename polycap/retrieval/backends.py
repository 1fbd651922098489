"""Index backends: how a bank's rows are searched.

A backend is registered through ``register_index_backends(register)``; ``polycap index
--backend NAME --index-type TYPE`` builds with it and records it in the bank's ``meta.json``
(``"index": {"backend": ..., "text": record, "image": record}``), and ``polycap retrieve``
opens whatever backend built the bank. The built-in ``numpy`` backend is the exact reference:
a chunked scan of the memory-mapped matrix (:func:`polycap.retrieval.search.top_k`). Other
backends (``plugins/faiss``) implement the same two methods:

- ``build(matrix, folder, kind, index_type, options) -> record``: index ``matrix`` (``[N, D]``
  L2-normalised rows, memory-mapped; read it in blocks) into files in ``folder`` whose names
  start with ``kind`` ("text" or "image"); return a JSON-safe record of what was built;
- ``open(folder, kind, record, matrix) -> Searcher`` whose ``search(queries, k, chunk_size)``
  returns ``(scores [B, k'], ids [B, k'])``, best first, for L2-normalised float32 queries.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polycap.errors import BadInput
from polycap.parts import IndexBackend as IndexBackend  # re-exported: their former home
from polycap.parts import Searcher as Searcher

DEFAULT_BACKEND = "numpy"


@dataclass
class NumpyScan:
    """Exact search: every row scored, ``chunk_size`` rows at a time."""

    matrix: Any

    def search(self, queries: Any, k: int, chunk_size: int) -> tuple[Any, Any]:
        from polycap.retrieval.search import top_k

        return top_k(self.matrix, queries, k, chunk_size)


class NumpyBackend:
    """The built-in backend: no index files, an exact scan of the bank's matrix."""

    name = "numpy"
    index_types = ("flat",)

    def build(
        self, matrix: Any, folder: Path, kind: str, index_type: str, options: Mapping[str, str]
    ) -> dict[str, Any]:
        if options:
            raise BadInput(f"--index-options: the numpy backend takes none (got {dict(options)})")
        return {"index_type": index_type}

    def open(self, folder: Path, kind: str, record: Mapping[str, Any], matrix: Any) -> NumpyScan:
        return NumpyScan(matrix)


@dataclass(frozen=True)
class IndexChoice:
    """Which backend and index type ``build_bank`` indexes with, and the backend's options."""

    backend: str = DEFAULT_BACKEND
    index_type: str | None = None  # None: the backend's first type
    options: Mapping[str, str] = field(default_factory=dict)

    def resolve(self, registries: Any = None) -> tuple[IndexBackend, str]:
        """(backend, index type), checked before any work starts."""
        backend = get_backend(self.backend, registries)
        return backend, check_index_type(backend, self.index_type)


def parse_options(text: str | None) -> dict[str, str]:
    """``"nlist=1024,nprobe=16"`` -> ``{"nlist": "1024", "nprobe": "16"}``."""
    options: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise BadInput(f"--index-options: {part.strip()!r} is not KEY=VALUE")
        options[key.strip()] = value.strip()
    return options


def get_backend(name: str, registries: Any = None) -> IndexBackend:
    """The registered backend ``name`` (UnknownName with a hint otherwise)."""
    if registries is None:
        from polycap.plugins import get_registries

        registries = get_registries()
    return registries.index_backends.get(name)


def check_index_type(backend: IndexBackend, index_type: str | None) -> str:
    """``index_type`` if the backend has it (its first type when None); BadInput otherwise."""
    if index_type is None:
        return backend.index_types[0]
    if index_type not in backend.index_types:
        raise BadInput(
            f"--index-type {index_type}: the {backend.name} backend has "
            f"{', '.join(backend.index_types)}"
        )
    return index_type
