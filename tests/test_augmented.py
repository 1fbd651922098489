"""Retrieval-augmented decoding: prompts of different lengths in one batch decode exactly as
each image alone (greedy, beam), the KV cache matches no cache, teacher forcing is per row."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
import torch
from helpers_lm import new_captioner, torch_threads, trained_captioner

from polycap.errors import BadInput
from polycap.model.augmented import generate_augmented_ids, left_padded
from polycap.model.generation import GenerationConfig

MAX = 10


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def models() -> dict:
    trained, features, _ = trained_captioner()
    random_model = new_captioner(seed=7).eval()
    return {"random": (random_model, torch.randn(5, 16)), "trained": (trained, features[:5])}


def prompts_for(model, n: int, seed: int = 0) -> list[list[int]]:
    """Prompts of very different lengths (one empty), tokens from the vocabulary."""
    rng = random.Random(seed)
    vocab = len(model.tokenizer)
    lengths = [0, 7, 2, 11, 5, 1, 9][:n]
    return [[rng.randrange(vocab) for _ in range(length)] for length in lengths]


CONFIGS = {
    "greedy": GenerationConfig(max_length=MAX),
    "beam": GenerationConfig(max_length=MAX, beams=3, num_captions=2),
    "sample": GenerationConfig(max_length=MAX, sample=True, seed=1, num_captions=2),
    "penalised": GenerationConfig(max_length=MAX, repetition_penalty=1.5, no_repeat_ngram_size=2),
}


@pytest.mark.parametrize("strategy", ["greedy", "beam", "penalised"])
@pytest.mark.parametrize("which", ["random", "trained"])
def test_a_padded_batch_decodes_as_each_image_alone(models, which, strategy) -> None:
    model, features = models[which]
    prompts = prompts_for(model, len(features))
    config = CONFIGS[strategy]
    batch = generate_augmented_ids(model, features, prompts, config)
    alone = [
        generate_augmented_ids(model, features[i : i + 1], [prompts[i]], config)[0]
        for i in range(len(features))
    ]
    assert batch == alone
    assert len({tuple(rows[0]) for rows in batch}) > 1  # not all the same caption


@pytest.mark.parametrize("strategy", ["greedy", "beam", "sample", "penalised"])
def test_kv_cache_equals_no_cache_with_padding(models, strategy) -> None:
    model, features = models["random"]
    prompts = prompts_for(model, len(features), seed=2)
    config = CONFIGS[strategy]
    uncached = GenerationConfig(**{**config.to_json(), "use_cache": False})
    assert generate_augmented_ids(model, features, prompts, config) == generate_augmented_ids(
        model, features, prompts, uncached
    )


@pytest.mark.parametrize("strategy", ["greedy", "beam", "sample"])
def test_no_repeated_ngrams_in_augmented_captions(models, strategy) -> None:
    """The retrieval-augmented path applies the repetition settings too; only the caption's
    own tokens count (a prompt token may be copied once)."""
    model, features = models["random"]
    prompts = prompts_for(model, len(features), seed=3)
    plain = CONFIGS[strategy]
    config = GenerationConfig(**{**plain.to_json(), "no_repeat_ngram_size": 1})
    found = generate_augmented_ids(model, features, prompts, config)
    assert all(len(set(ids)) == len(ids) for rows in found for ids in rows)
    before = generate_augmented_ids(model, features, prompts, plain)
    assert any(len(set(ids)) < len(ids) for rows in before for ids in rows)


def test_teacher_forcing_with_padded_prompts_is_per_row(models) -> None:
    model, features = models["random"]
    prompts = prompts_for(model, 3, seed=3)
    captions = [[5, 6, 7, int(model.end_token_id)], [8, int(model.end_token_id)], [9, 10, 11, 12]]
    ids, mask = left_padded(prompts, int(model.pad_token_id))
    cap = torch.full((3, 4), int(model.pad_token_id))
    cap_mask = torch.zeros(3, 4, dtype=torch.long)
    for i, row in enumerate(captions):
        cap[i, : len(row)] = torch.tensor(row)
        cap_mask[i, : len(row)] = 1
    with torch.no_grad():
        batch = model(features[:3], cap, cap_mask, ids, mask).logits
        for i, row in enumerate(captions):
            alone = model(
                features[i : i + 1],
                torch.tensor([row]),
                prompt_ids=torch.tensor([prompts[i]], dtype=torch.long).view(1, -1),
            ).logits
            torch.testing.assert_close(batch[i, : len(row)], alone[0], atol=1e-4, rtol=1e-4)


def test_static_cache_is_refused(models) -> None:
    model, features = models["random"]
    with pytest.raises(BadInput, match="dynamic"):
        generate_augmented_ids(
            model, features[:1], [[1]], GenerationConfig(max_length=3, cache="static")
        )


@pytest.mark.parametrize("code", ["en", "ja", "ru", "zh"])
def test_each_pack_has_a_retrieval_prompt_in_its_own_language(code) -> None:
    from polycap.language import DEFAULT_RETRIEVAL_PROMPT
    from polycap.plugins import get_registries

    pack = get_registries().languages.get(code)
    assert "{captions}" in pack.retrieval_prompt
    prompt = pack.format_retrieval_prompt(["A", "B"])
    assert pack.normalize(f"A{pack.caption_separator}B") in prompt
    if code != "en":
        assert pack.retrieval_prompt != DEFAULT_RETRIEVAL_PROMPT
