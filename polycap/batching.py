"""Length-bucketed batches: captions of similar length share a batch; little padding wasted."""

from __future__ import annotations

import random
from collections.abc import Sequence


def bucketed_batches(
    lengths: Sequence[int], batch_size: int, seed: int, bucket_batches: int = 50
) -> list[list[int]]:
    """Indices grouped into batches of similar length, in a seeded random order.

    Shuffle, cut into pools of ``bucket_batches`` batches, sort each pool by length, cut it
    into batches, then shuffle the batches: the order is random but padding is small.
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    pool_size = batch_size * bucket_batches
    batches: list[list[int]] = []
    for start in range(0, len(order), pool_size):
        pool = sorted(order[start : start + pool_size], key=lambda index: lengths[index])
        batches.extend(pool[i : i + batch_size] for i in range(0, len(pool), batch_size))
    rng.shuffle(batches)
    return batches


def padded_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Consecutive batches in data order (evaluation: order does not matter, bucketing does not)."""
    order = sorted(range(len(lengths)), key=lambda index: lengths[index])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
