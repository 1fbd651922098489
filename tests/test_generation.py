"""Batched decoding: cache == no cache, batch == one by one, beam 1 == greedy, seeded sampling."""

from __future__ import annotations

import pytest
import torch
from helpers_lm import new_captioner

from polycap.errors import BadInput
from polycap.model.generation import (
    GenerationConfig,
    _reorder_cache,
    caption_features,
    filter_logits,
    generate_ids,
)

MAX = 12


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


# -- independent references: plain loops, no cache, one hypothesis at a time ------------------


def _ids(ids: list[int]) -> torch.Tensor:
    return torch.tensor([ids], dtype=torch.long)


def naive_greedy(model, feature: torch.Tensor, max_length: int) -> list[int]:
    """Greedy decoding re-running the whole sequence for every token."""
    with torch.no_grad():
        prefix = model.prefix(feature[None])
        ids: list[int] = []
        for _ in range(max_length):
            embeds = torch.cat([prefix, model.embed_tokens(_ids(ids))], dim=1)
            token = int(model.lm(inputs_embeds=embeds).logits[0, -1].argmax())
            if token == model.end_token_id:
                break
            ids.append(token)
    return ids


def naive_beam(model, feature: torch.Tensor, width: int, max_length: int, keep: int):
    """ClipCap's beam search written plainly: each hypothesis is re-run from the prefix; the
    candidates of all hypotheses are ranked by summed log-probability / length (end token
    counted); a finished hypothesis stays as one candidate. Returns (the ``keep`` best distinct
    captions, whether the surviving hypotheses ever came from their parents out of order)."""
    end = model.end_token_id
    reordered = False
    with torch.no_grad():
        prefix = model.prefix(feature[None])
        beams = [([], 0.0, 0, False)]  # tokens, summed log-probability, length, finished
        for step in range(max_length):
            candidates = []  # (rank, parent, token or None, log-probability)
            for parent, (ids, score, length, finished) in enumerate(beams):
                if finished:
                    candidates.append((score / length, parent, None, 0.0))
                    continue
                embeds = torch.cat([prefix, model.embed_tokens(_ids(ids))], dim=1)
                logits = model.lm(inputs_embeds=embeds).logits[0, -1].float()
                logp = torch.log_softmax(logits, dim=-1)
                best = ((score + logp) / (length + 1)).topk(width)
                for rank, token in zip(best.values.tolist(), best.indices.tolist()):
                    candidates.append((rank, parent, token, float(logp[token])))
            candidates.sort(key=lambda c: -c[0])
            survivors = []
            for _, parent, token, logp in candidates[:width]:
                ids, score, length, _ = beams[parent]
                if token is None:
                    survivors.append((ids, score, length, True))
                else:
                    survivors.append((ids + [token], score + logp, length + 1, token == end))
            parents = [c[1] for c in candidates[:width]]
            reordered |= step > 0 and parents != sorted(parents)
            beams = survivors
            if all(b[3] for b in beams):
                break
    beams.sort(key=lambda b: -b[1] / max(b[2], 1))
    captions: list[list[int]] = []
    for ids, *_ in beams:
        ids = ids[: ids.index(end)] if end in ids else ids
        if ids not in captions:
            captions.append(ids)
    return captions[:keep], reordered


# captions that branch early and late, and whose endings depend on words many tokens back
# (the colour named again at the end): beams that get another beam's cache end wrongly
BRANCHING = [
    [
        ("a red one , it is round and red", 3),
        ("a red one , it is big and red", 2),
        ("a blue one , it is round and blue", 3),
        ("a green one , it is big and green", 1),
    ],
    [
        ("the yellow one is big , so yellow", 3),
        ("the blue one is big , so blue", 3),
        ("the blue one is small , so blue", 2),
    ],
]


@pytest.fixture(scope="module")
def branching() -> tuple:
    """A model trained so that each image has several likely captions (weighted as above)."""
    from helpers_lm import CLIP_DIM, fit

    centres = torch.randn(len(BRANCHING), CLIP_DIM, generator=torch.Generator().manual_seed(0))
    features, texts = [], []
    for centre, options in zip(centres, BRANCHING, strict=True):
        for text, count in options:
            features += [centre] * count
            texts += [text] * count
    model = fit(new_captioner(train_lm=True, seed=2), torch.stack(features), texts, steps=200)
    return model, centres


@pytest.mark.parametrize("use_cache", [True, False])
def test_beam_search_equals_a_plain_reference_when_beams_diverge(branching, use_cache) -> None:
    model, features = branching
    config = GenerationConfig(max_length=24, beams=3, num_captions=3, use_cache=use_cache)
    found = generate_ids(model, features, config)
    references = [naive_beam(model, feature, 3, 24, 3) for feature in features]
    assert found == [captions for captions, _ in references]
    # the evidence is only worth something if the beams really go separate ways
    texts = [{model.pack.decode_caption(model.tokenizer, ids) for ids in c} for c in found]
    likeliest = [{text for text, _ in sorted(o, key=lambda c: -c[1])[:3]} for o in BRANCHING]
    assert texts == likeliest  # the three most frequent captions of each image
    assert all(len({tuple(c[:5]) for c in captions}) >= 2 for captions in found)  # early
    assert any(reordered for _, reordered in references)  # parents change order mid-search


def test_beam_width_one_is_greedy(trained, random_model, branching) -> None:
    from polycap.model.generation import _Decoder

    cases = ((trained[0], trained[1]), (random_model, features_for(4)), branching)
    for model, features in cases:
        reference = [[naive_greedy(model, feature, MAX)] for feature in features]
        greedy = generate_ids(model, features, GenerationConfig(max_length=MAX))
        assert greedy == reference
        with torch.inference_mode():  # the beam search loop itself with a single beam
            beam = _Decoder(model, GenerationConfig(max_length=MAX)).beam(model.prefix(features))
        assert beam == reference
        assert [naive_beam(model, f, 1, MAX, 1)[0] for f in features] == reference


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


def _random_cache(rows: int, layers: int = 2):
    from transformers import DynamicCache

    cache = DynamicCache()
    generator = torch.Generator().manual_seed(0)
    for layer in range(layers):
        keys, values = (torch.randn(rows, 2, 5, 3, generator=generator) for _ in range(2))
        cache.update(keys, values, layer)
    return cache


@pytest.mark.parametrize(
    "done", [[False, True, False, True, False, False], [True] * 5 + [False], [False] * 6]
)
def test_rows_leave_the_cache_in_place(done) -> None:
    """Finished rows leave by a compaction (fill_holes): the cache then holds exactly what a
    gather of those rows holds, only the moved rows having been copied, in the same tensors."""
    from polycap.model.generation import fill_holes
    from polycap.model.kv_cache import compaction

    order = fill_holes(done)
    assert sorted(order) == [i for i, flag in enumerate(done) if not flag]
    moved, _ = compaction(torch.tensor(order), len(done))
    assert moved.numel() == sum(done[: len(order)])  # only the holes before the new end
    cache, expected = _random_cache(len(done)), _random_cache(len(done))
    storage = [layer.keys.data_ptr() for layer in cache.layers]
    _reorder_cache(cache, torch.tensor(order))
    expected.reorder_cache(torch.tensor(order))  # transformers' own gather
    for ours, theirs in zip(cache.layers, expected.layers, strict=True):
        assert torch.equal(ours.keys, theirs.keys) and torch.equal(ours.values, theirs.values)
    assert [layer.keys.data_ptr() for layer in cache.layers] == storage


def test_a_reorder_that_is_no_compaction_gathers() -> None:
    cache, expected = _random_cache(4), _random_cache(4)
    for rows in ([3, 1, 0], [0, 0, 1, 1, 2, 2]):  # a row moving backwards; beams
        _reorder_cache(cache, torch.tensor(rows))
        expected.reorder_cache(torch.tensor(rows))
        assert torch.equal(cache.layers[1].values, expected.layers[1].values)


def _forced_ends(lengths: list[int], end: int):
    """A logits hook that ends row ``i`` after ``lengths[i]`` tokens (end token included)."""

    def hook(step: int, rows: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        at_end = torch.tensor(lengths)[rows] - 1 == step
        scores = scores.clone()
        scores[:, end] = float("-inf")
        scores[at_end] = float("-inf")
        scores[at_end, end] = 0.0
        return scores

    return hook


@pytest.mark.parametrize("sample", [False, True], ids=["greedy", "sample"])
def test_rows_that_leave_early_keep_the_other_rows_tokens(trained, sample) -> None:
    """Rows finish at the first steps, so rows from the end of the batch move into their
    places in the KV cache and go on from there: each row's tokens must still be those of
    decoding without a cache (and, greedy, of decoding that image alone). The trained model's
    tokens follow its image, so a row reading another row's cache gives another caption."""
    model, features, _ = trained
    end = int(model.end_token_id)
    lengths = [1, 9, 2, 9, 9, 9]
    config = GenerationConfig(max_length=MAX, sample=sample, seed=1)

    def run(**settings) -> list:
        chosen = GenerationConfig(**{**config.to_json(), **settings})
        return generate_ids(model, features, chosen, logits_hook=_forced_ends(lengths, end))

    cached = run()
    assert [len(c[0]) + 1 for c in cached] == lengths
    assert cached == run(use_cache=False)
    if not sample:
        for i, length in enumerate(lengths):
            hook = _forced_ends([length], end)
            assert generate_ids(model, features[i : i + 1], config, logits_hook=hook) == [cached[i]]


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
