"""The GPU decoding path on the CPU: the static KV cache (and its compiled step) gives the same
tokens as the dynamic cache for greedy, beam search and sampling."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch

from polycap.errors import BadInput
from polycap.model.generation import GenerationConfig, StaticCachedLM, decode, generate_ids

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
workload = importlib.import_module("benchmarks.workload")

MAX = 12
CONFIGS = {
    "greedy": {},
    "beam": {"beams": 4, "num_captions": 3},
    "sample": {"sample": True, "seed": 5, "top_p": 0.9, "num_captions": 2},
}


@pytest.mark.parametrize("strategy", list(CONFIGS))
def test_static_cache_gives_the_dynamic_cache_tokens(strategy, trained) -> None:
    model, features, _ = trained  # captions end by themselves, at different steps
    dynamic = GenerationConfig(max_length=MAX, **CONFIGS[strategy])
    static = GenerationConfig(max_length=MAX, cache="static", **CONFIGS[strategy])
    expected = generate_ids(model, features, dynamic)
    assert generate_ids(model, features, static) == expected
    assert len({len(c[0]) for c in expected}) > 1


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_static_cache_at_forced_lengths(strategy, tmp_path: Path) -> None:
    model = workload.build_captioner("tiny", 24, tmp_path, seed=3)
    features = workload.random_features(5, 24, seed=4)
    hook = workload.ForcedLengths([3, 9, 5, MAX, 2], model.end_token_id)
    kwargs = {"max_length": MAX, **CONFIGS[strategy]}
    expected = generate_ids(model, features, GenerationConfig(**kwargs), logits_hook=hook)
    static = GenerationConfig(cache="static", **kwargs)
    assert generate_ids(model, features, static, logits_hook=hook) == expected


def test_compiled_static_step_gives_the_same_tokens(trained) -> None:
    model, features, _ = trained
    config = GenerationConfig(max_length=MAX, beams=3, num_captions=2)
    expected = generate_ids(model, features, config)
    step = StaticCachedLM(model.lm, MAX, compile=True, backend="eager")  # dynamo, no inductor
    with torch.inference_mode():
        got = decode(
            step,
            model.prefix(features),
            config,
            end_token_id=model.end_token_id,
            pad_token_id=model.pad_token_id,
        )
    assert got == expected


def test_static_settings_are_checked() -> None:
    with pytest.raises(BadInput, match="cache must be"):
        GenerationConfig(cache="paged")
    with pytest.raises(BadInput, match="static cache"):
        GenerationConfig(compile=True)
