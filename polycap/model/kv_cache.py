"""Rows leaving the KV cache of polycap's decoding loops in place.

When rows finish, the loops ask the cache for a *compaction* (every row stays in its place, or
fills the place of a finished row from past the new end:
:func:`polycap.model.generation.fill_holes`), and transformers' plain (full-attention)
``DynamicCache`` layers carry it out in place, copying only the moved rows: a reorder
(``reorder_cache``) gathers every row of every layer into new tensors, and a batch of captions of
different lengths drops rows at most steps.

Any other cache (sliding windows, other transformers versions) is reordered by its own
``reorder_cache``: the same rows, the copies the library makes.
"""

from __future__ import annotations

from typing import Any

import torch

Plan = tuple[torch.Tensor, torch.Tensor]  # (moved rows, the rows they are taken from)


def compaction(rows: torch.Tensor, batch: int) -> Plan | None:
    """``(moved, sources)`` when taking ``rows`` of a batch of ``batch`` rows can be done in
    place: row ``i`` of the result is row ``i`` itself, or a row at or past the new end
    ``len(rows)`` (which nothing reads afterwards), so ``moved`` rows are overwritten by their
    ``sources`` and the batch is cut to ``len(rows)``. None for any other ``rows`` (beams:
    repeats and reorders)."""
    kept = rows.numel()
    if kept > batch:
        return None
    moved = (rows != torch.arange(kept, device=rows.device)).nonzero().flatten()
    sources = rows.index_select(0, moved)
    if moved.numel() and bool((sources < kept).any()):
        return None
    return moved, sources


def compact(tensor: torch.Tensor, plan: Plan, kept: int) -> torch.Tensor:
    """``tensor``'s first ``kept`` rows after moving the planned rows into place."""
    moved, sources = plan
    if moved.numel():
        tensor.index_copy_(0, moved, tensor.index_select(0, sources))
    return tensor[:kept]


def _layer_types() -> tuple[type, ...] | None:
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:  # transformers before 4.56: caches are lists of tensors
        return None
    return (DynamicLayer,)


def reorder(cache: Any, rows: torch.Tensor) -> Any:
    """``cache`` with its batch rows taken from ``rows``: in place for a compaction of plain
    layers, else by the cache's own ``reorder_cache`` (or index_select of a legacy tuple)."""
    if cache is None:
        return None
    if hasattr(cache, "reorder_cache"):  # transformers Cache objects (DynamicCache, ...)
        if not _compact_plain_layers(cache, rows):
            cache.reorder_cache(rows)
        return cache
    return tuple(  # legacy tuple-of-tuples cache
        tuple(tensor.index_select(0, rows.to(tensor.device)) for tensor in layer) for layer in cache
    )


def _compact_plain_layers(cache: Any, rows: torch.Tensor) -> bool:
    """Compact transformers' own plain layers in place; False (untouched) when ``rows`` is no
    compaction or the layers are of another kind."""
    plain = _layer_types()
    layers = getattr(cache, "layers", None)
    if plain is None or not layers or any(type(layer) not in plain for layer in layers):
        return False
    tensors = [t for layer in layers for t in (layer.keys, layer.values)]
    if any(t is None or t.dim() != 4 for t in tensors):
        return False
    batch = min(t.shape[0] for t in tensors)
    plan = compaction(rows.to(tensors[0].device), batch)
    if plan is None:
        return False
    for layer in layers:
        layer.keys = compact(layer.keys, plan, rows.numel())
        layer.values = compact(layer.values, plan, rows.numel())
    return True
