"""A logits hook through the caption path (``CaptionPipeline.caption_features`` /
``caption_files``): the benchmarks fix caption lengths with one, batch by batch."""

from __future__ import annotations

import torch

from polycap.inference.pipeline import CaptionPipeline, generation_config


def test_a_hook_that_changes_nothing_gives_the_same_captions(trained) -> None:
    model, features, _ = trained
    pipeline = CaptionPipeline(model)
    config = generation_config(max_length=12)
    plain = pipeline.caption_features(features, config, batch_size=2).captions
    calls: list[tuple[int, list[int]]] = []

    def hook(step: int, rows: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        calls.append((step, rows.tolist()))
        return scores

    hooked = pipeline.caption_features(features, config, batch_size=2, logits_hook=hook)
    assert hooked.captions == plain
    # every batch starts at step 0 with all of its rows, numbered within the batch
    starts = [rows for step, rows in calls if step == 0]
    sizes = [len(features[i : i + 2]) for i in range(0, len(features), 2)]
    assert starts == [list(range(n)) for n in sizes]


def test_forced_lengths_hold_across_batches(trained) -> None:
    from benchmarks.workload import BatchedForcedLengths

    model, features, _ = trained
    n = len(features)
    lengths = [3 + (i % 4) for i in range(n)]  # end token included
    hook = BatchedForcedLengths(lengths, int(model.end_token_id))
    config = generation_config(max_length=max(lengths) + 2)
    seen: list[int] = []
    end = int(model.end_token_id)

    def counting(step: int, rows: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = hook(step, rows, scores)
        picks = scores.argmax(dim=-1)
        seen.extend([step + 1] * int((picks == end).sum()))
        return scores

    found = CaptionPipeline(model).caption_features(features, config, 3, logits_hook=counting)
    assert len(found.captions) == n
    assert sorted(seen) == sorted(lengths)
