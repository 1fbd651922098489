"""Diversity (distinct-n) and novelty (share of captions not in a training set)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any


def distinct_n(token_lists: Sequence[Sequence[str]], n: int) -> float:
    """Distinct n-grams over all n-grams of all captions (Li et al., 2016), as a fraction."""
    seen: set[tuple[str, ...]] = set()
    total = 0
    for tokens in token_lists:
        for start in range(len(tokens) - n + 1):
            seen.add(tuple(tokens[start : start + n]))
            total += 1
    return len(seen) / total if total else 0.0


def caption_hash(text: str) -> int:
    """A stable 63-bit hash of a (normalised) caption, for set membership over big banks."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def hash_array(texts: Iterable[str]) -> Any:
    """Sorted, unique int64 hashes of ``texts`` (a numpy array)."""
    import numpy as np

    return np.unique(np.fromiter((caption_hash(t) for t in texts), dtype=np.int64))


def novelty(captions: Sequence[str], training_hashes: Any) -> tuple[float, list[bool]]:
    """(share of ``captions`` not among the training captions, per-caption novel flags).

    ``training_hashes`` is a sorted int64 array from :func:`hash_array`; captions must be
    normalised the same way as the training captions were.
    """
    import numpy as np

    if not captions:
        return 0.0, []
    hashes = np.fromiter((caption_hash(c) for c in captions), dtype=np.int64)
    if len(training_hashes) == 0:
        return 1.0, [True] * len(captions)
    positions = np.searchsorted(training_hashes, hashes).clip(max=len(training_hashes) - 1)
    novel = training_hashes[positions] != hashes
    return float(novel.mean()), [bool(v) for v in novel]
