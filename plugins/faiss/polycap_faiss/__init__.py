"""polycap-faiss: caption banks searched with FAISS (``polycap index --backend faiss``)."""

from __future__ import annotations

from polycap.hookspecs import Register, hookimpl
from polycap_faiss.backend import FaissBackend

__all__ = ["FaissBackend", "register_index_backends"]


@hookimpl
def register_index_backends(register: Register) -> None:
    """``faiss``: flat (exact inner product), ivf (inverted lists) and hnsw (graph)."""
    register("faiss", FaissBackend())
