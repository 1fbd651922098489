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


def lm_keywords(lm: Any) -> LMKeywords:
    """The keywords ``lm.forward`` takes."""
    try:
        parameters = inspect.signature(lm.forward).parameters
    except (TypeError, ValueError):
        return LMKeywords(None, "past_key_values")
    keep = next((n for n in ("logits_to_keep", "num_logits_to_keep") if n in parameters), None)
    return LMKeywords(keep, "cache" if "cache" in parameters else "past_key_values")
