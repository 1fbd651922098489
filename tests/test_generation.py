"""Batched decoding: cache == no cache, batch == one by one, beam 1 == greedy, seeded sampling."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from helpers_lm import new_captioner, torch_threads, trained_captioner

from polycap.errors import BadInput
from polycap.generation import (
    GenerationConfig,
    _reorder_cache,
    caption_features,
    filter_logits,
    generate_ids,
)

MAX = 12


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def trained() -> tuple:
    model, features, texts = trained_captioner()
    return model, features, texts


@pytest.fixture(scope="module")
def random_model():  # untrained: flat distributions, captions run to max_length
    return new_captioner(seed=5).eval()


def features_for(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 16, generator=torch.Generator().manual_seed(seed))


def test_greedy_learns_the_captions_and_stops_per_sequence(trained) -> None:
    model, features, texts = trained
    ids = generate_ids(model, features, GenerationConfig(max_length=MAX))
    assert [len(per_image) for per_image in ids] == [1] * len(texts)
    lengths = {len(per_image[0]) for per_image in ids}
    assert len(lengths) > 1 and max(lengths) < MAX  # sequences end at different steps
    assert all(model.end_token_id not in per_image[0] for per_image in ids)
    assert caption_features(model, features, GenerationConfig(max_length=MAX)) == [
        [text] for text in texts
    ]


@pytest.mark.parametrize(
    "config",
    [
        GenerationConfig(max_length=MAX),
        GenerationConfig(max_length=MAX, beams=3, num_captions=3),
        GenerationConfig(max_length=MAX, sample=True, seed=3, num_captions=2, top_k=20, top_p=0.9),
    ],
    ids=["greedy", "beam", "sample"],
)
@pytest.mark.parametrize("which", ["trained", "random"])
def test_kv_cache_gives_the_same_tokens_as_no_cache(config, which, trained, random_model) -> None:
    model, features = (
        (trained[0], trained[1]) if which == "trained" else (random_model, features_for(5))
    )
    no_cache = GenerationConfig(**{**config.to_json(), "use_cache": False})
    assert generate_ids(model, features, config) == generate_ids(model, features, no_cache)


def test_beam_width_one_is_greedy(trained, random_model) -> None:
    for model, features in ((trained[0], trained[1]), (random_model, features_for(4))):
        greedy = generate_ids(model, features, GenerationConfig(max_length=MAX))
        beam1 = generate_ids(model, features, GenerationConfig(max_length=MAX, beams=1))
        assert beam1 == greedy
        # the beam code path itself with a single beam
        from polycap.generation import _Decoder

        config = GenerationConfig(max_length=MAX)
        with torch.inference_mode():
            beam = _Decoder(model, config).beam(model.prefix(features))
        assert beam == greedy


@pytest.mark.parametrize(
    "config",
    [GenerationConfig(max_length=MAX), GenerationConfig(max_length=MAX, beams=3, num_captions=2)],
    ids=["greedy", "beam"],
)
def test_a_batch_gives_what_one_image_at_a_time_gives(config, trained) -> None:
    model, features, _ = trained
    batched = generate_ids(model, features, config)
    one_by_one = [generate_ids(model, features[i : i + 1], config)[0] for i in range(len(features))]
    assert batched == one_by_one
    split = caption_features(model, features, config, batch_size=4)
    assert split == caption_features(model, features, config, batch_size=64)


def test_beams_are_distinct_and_ranked_by_length_normalised_logprob(trained) -> None:
    model, features, _ = trained
    config = GenerationConfig(max_length=MAX, beams=4, num_captions=4)
    for image, captions in enumerate(generate_ids(model, features, config)):
        assert len(captions) == len({tuple(c) for c in captions}) >= 2
        scores = []
        for ids in captions:
            finished = len(ids) < MAX
            full = torch.tensor([[*ids, model.end_token_id] if finished else ids])
            with torch.no_grad():
                logits = model(features[image : image + 1], full).logits
            logp = torch.log_softmax(logits.float(), dim=-1).gather(2, full[..., None]).sum()
            scores.append(float(logp) / full.shape[1])
        assert scores == sorted(scores, reverse=True)


def test_sampling_is_reproducible_and_distinct(random_model) -> None:
    features = features_for(3)
    config = GenerationConfig(max_length=8, sample=True, seed=11, num_captions=3)
    first = generate_ids(random_model, features, config)
    assert first == generate_ids(random_model, features, config)
    assert first != generate_ids(
        random_model, features, GenerationConfig(**{**config.to_json(), "seed": 12})
    )
    for captions in first:
        assert len(captions) == 3 and len({tuple(c) for c in captions}) == 3
    texts = caption_features(random_model, features, config)
    assert texts == caption_features(random_model, features, config)
    assert all(len(set(per_image)) == len(per_image) for per_image in texts)


def test_sampling_a_confident_model_returns_fewer_rather_than_duplicates(trained) -> None:
    model, features, _ = trained
    config = GenerationConfig(max_length=MAX, sample=True, seed=0, num_captions=3, temperature=0.05)
    for captions in generate_ids(model, features[:2], config):
        assert 1 <= len(captions) <= 3
        assert len({tuple(c) for c in captions}) == len(captions)


def test_max_length_and_mode_restored(random_model) -> None:
    random_model.train()
    ids = generate_ids(random_model, features_for(2), GenerationConfig(max_length=5))
    assert random_model.training  # restored after decoding
    random_model.eval()
    assert all(len(per_image[0]) <= 5 for per_image in ids)
    assert generate_ids(random_model, features_for(0), GenerationConfig()) == []
    assert len(generate_ids(random_model, features_for(1)[0], GenerationConfig())) == 1


def test_filter_logits() -> None:
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    top2 = filter_logits(scores, top_k=2)
    assert torch.isinf(top2[0, 2:]).all() and torch.isfinite(top2[0, :2]).all()
    nucleus = filter_logits(scores, top_p=0.7)  # 0.5 + 0.3 crosses 0.7: keep two
    assert torch.isfinite(nucleus[0, :2]).all() and torch.isinf(nucleus[0, 2:]).all()
    assert torch.isfinite(filter_logits(scores, top_p=0.01)[0, 0])  # always keep one
    assert torch.equal(filter_logits(scores), scores)


def test_legacy_tuple_cache_is_reordered() -> None:
    layer = (torch.arange(3.0)[:, None], torch.arange(3.0)[:, None] * 10)
    reordered = _reorder_cache((layer,), torch.tensor([2, 2, 0]))
    assert reordered[0][0].flatten().tolist() == [2.0, 2.0, 0.0]
    assert reordered[0][1].flatten().tolist() == [20.0, 20.0, 0.0]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_length": 0}, "max_length"),
        ({"beams": 2, "sample": True}, "not both"),
        ({"num_captions": 3}, "beams >= 3"),
        ({"top_p": 0.0}, "top_p"),
        ({"temperature": 0.0}, "temperature"),
    ],
)
def test_bad_generation_settings(kwargs, message) -> None:
    with pytest.raises(BadInput, match=message):
        GenerationConfig(**kwargs)
