"""``repetition_penalty`` and ``no_repeat_ngram_size`` in every decoding strategy: the same
tokens as transformers' ``generate()`` with the same settings (its own logits processors), a
batch gives what one image at a time gives, the cache changes nothing, and a tiny model that
loops ("a red red red ...") stops repeating."""

from __future__ import annotations

import importlib
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from helpers_lm import CLIP_DIM, fit, new_captioner, torch_threads

from polycap.errors import BadInput
from polycap.model.generation import GenerationConfig, caption_features, generate_ids

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # benchmarks/ lives beside polycap/, not installed
    sys.path.insert(0, str(ROOT))
peer = importlib.import_module("benchmarks.peer")
workload = importlib.import_module("benchmarks.workload")

MAX = 12
PENALTIES = {"repetition_penalty": 1.4, "no_repeat_ngram_size": 2}
STRATEGIES = {
    "greedy": {},
    "beam": {"beams": 4},
    "sample": {"sample": True, "top_p": 0.9, "seed": 3},
}


def config(strategy: str, max_length: int = MAX, **more) -> GenerationConfig:
    return GenerationConfig(max_length=max_length, **STRATEGIES[strategy], **more)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def random_model() -> tuple:
    """The tiny captioner untrained (a small vocabulary: tokens recur by chance)."""
    features = torch.randn(5, CLIP_DIM, generator=torch.Generator().manual_seed(1))
    return new_captioner(seed=5).eval(), features


@pytest.fixture(scope="module")
def looping() -> tuple:
    """A tiny captioner fitted on captions that repeat one word ("a red red red ..."): greedy
    decoding loops."""
    features = torch.randn(3, CLIP_DIM, generator=torch.Generator().manual_seed(0))
    texts = ["a" + " red" * 16] * 3
    model = fit(new_captioner(train_lm=True, seed=4), features, texts, steps=80)
    return model, features


def repeated_ngrams(ids: list[int], size: int) -> int:
    grams = Counter(tuple(ids[i : i + size]) for i in range(len(ids) - size + 1))
    return sum(count - 1 for count in grams.values())


@pytest.mark.parametrize("settings", [PENALTIES, {"repetition_penalty": 0.7}], ids=["both", "low"])
@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("which", ["looping", "random"])
def test_the_same_tokens_as_generate_with_the_same_settings(
    which, strategy, settings, looping, random_model
) -> None:
    """Forced caption lengths (so that transformers' beam search, which ranks finished beams
    differently, meets the same end), every row running many steps with its penalties."""
    model, features = looping if which == "looping" else random_model
    lengths = [3, MAX, 7, 10, 2][: len(features)]
    hook = workload.ForcedLengths(lengths, model.end_token_id)
    chosen = config(strategy, **settings)
    ours = [c[0] for c in generate_ids(model, features, chosen, logits_hook=hook)]
    assert [len(ids) + 1 for ids in ours] == lengths
    with pytest.warns(UserWarning, match="inputs_embeds"):  # generate: only new tokens count
        theirs = peer.generate_ids(model, features, chosen, hook)
    assert theirs == ours
    if which == "looping" and settings is PENALTIES:
        plain = generate_ids(model, features, config(strategy), logits_hook=hook)
        assert [c[0] for c in plain] != ours  # the settings changed the captions


def test_greedy_equals_generate_where_captions_end_by_themselves(looping) -> None:
    model, features = looping
    chosen = config("greedy", max_length=20, **PENALTIES)
    ours = [c[0] for c in generate_ids(model, features, chosen)]
    with pytest.warns(UserWarning):
        assert peer.generate_ids(model, features, chosen) == ours


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_a_batch_gives_what_one_image_at_a_time_gives(strategy, random_model, looping) -> None:
    for model, features in (random_model, looping):
        chosen = config(strategy, **PENALTIES)
        batch = generate_ids(model, features, chosen)
        assert batch == [generate_ids(model, row, chosen)[0] for row in features]


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_the_cache_changes_nothing(strategy, looping) -> None:
    model, features = looping
    chosen = config(strategy, **PENALTIES)
    uncached = GenerationConfig(**{**chosen.to_json(), "use_cache": False})
    assert generate_ids(model, features, chosen) == generate_ids(model, features, uncached)


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_a_looping_model_stops_repeating(strategy, looping) -> None:
    model, features = looping
    plain = [c[0] for c in generate_ids(model, features, config(strategy, max_length=20))]
    assert all(repeated_ngrams(ids, 2) >= 5 for ids in plain)  # "a red red red ..."
    for size in (2, 3):
        chosen = config(strategy, max_length=20, no_repeat_ngram_size=size)
        for ids in (c[0] for c in generate_ids(model, features, chosen)):
            assert repeated_ngrams(ids, size) == 0
    if strategy == "beam":  # the penalty scales log-probabilities there (as in generate):
        return  # a sure token's log-probability, about 0, stays about 0
    penalised = config(strategy, max_length=20, repetition_penalty=3.0)
    for before, after in zip(plain, (c[0] for c in generate_ids(model, features, penalised))):
        top = Counter(before).most_common(1)[0][0]
        assert after.count(top) < before.count(top)


def test_caption_text_loses_the_loop(looping) -> None:
    model, features = looping
    [[plain], *_] = caption_features(model, features, config("greedy", max_length=8))
    [[fixed], *_] = caption_features(
        model, features, config("greedy", max_length=8, no_repeat_ngram_size=1)
    )
    assert plain.split().count("red") >= 4
    assert fixed.split().count("red") <= 1


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"repetition_penalty": -1.0}, "repetition_penalty"),
        ({"no_repeat_ngram_size": -1}, "no_repeat_ngram_size"),
    ],
)
def test_bad_settings_are_one_line(settings, message) -> None:
    with pytest.raises(BadInput, match=message):
        GenerationConfig(**settings)
