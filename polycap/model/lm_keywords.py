"""Keyword names of Hugging Face causal LMs that changed across transformers versions."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LMKeywords:
    """``keep``: the keyword that limits the output projection to the last N positions
    (``logits_to_keep``; ``num_logits_to_keep`` before transformers 4.50; None when absent).
    ``cache``: the keyword that passes the KV cache (``cache`` in transformers 5.x,
    ``past_key_values`` before)."""

    keep: str | None
    cache: str

    def keep_last(self, positions: int) -> dict[str, int]:
        """``{keep: positions}``, or nothing when the LM has no such keyword."""
        return {self.keep: positions} if self.keep else {}

    def keep_window(self, first: int, stop: int, total: int, device: Any) -> tuple[dict, slice]:
        """Keywords that ask the LM for the logits of positions ``first .. stop - 1`` of
        ``total``, and the slice of the logits it returns that holds them.

        ``logits_to_keep`` takes the positions as a tensor: the LM gathers those hidden states
        into a contiguous tensor, so the output projection runs as one matrix product. (The
        int form slices a strided view, which ``torch.matmul`` does not fold when it needs
        gradients: training then ran the projection as a batched product with the weight
        expanded per row, several times slower.)"""
        if self.keep == "logits_to_keep":
            import torch

            return {self.keep: torch.arange(first, stop, device=device)}, slice(None)
        if self.keep:  # before transformers 4.50: the last N positions only
            return {self.keep: total - first}, slice(0, stop - first)
        return {}, slice(first, stop)


def lm_keywords(lm: Any) -> LMKeywords:
    """The keywords ``lm.forward`` takes."""
    try:
        parameters = inspect.signature(lm.forward).parameters
    except (TypeError, ValueError):
        return LMKeywords(None, "past_key_values")
    keep = next((n for n in ("logits_to_keep", "num_logits_to_keep") if n in parameters), None)
    return LMKeywords(keep, "cache" if "cache" in parameters else "past_key_values")
