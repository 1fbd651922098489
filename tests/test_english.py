"""The built-in English pack."""

from __future__ import annotations

import random
from pathlib import Path

from polycap.builtin import english
from polycap.builtin.english import ENGLISH
from polycap.plugins import PluginHost


def test_registered_as_en():
    host = PluginHost(load_entry_points=False, builtins=False)
    host.add_plugin(english, "polycap.builtin.english")
    assert host.registries.languages.get("en") is ENGLISH
    assert ENGLISH.default_lm == "gpt2" and ENGLISH.tokenizer_kind == "bpe"


def test_eval_tokenize_lowercases_and_splits_punctuation():
    words = ENGLISH.eval_tokenize("Two RED circles, on a dark   background.")
    assert words == ["two", "red", "circles", ",", "on", "a", "dark", "background", "."]
    assert ENGLISH.eval_tokenize("It's a cat's toy") == ["it's", "a", "cat's", "toy"]


def test_describe_names_colour_shape_and_number():
    rng = random.Random(0)
    for count in (1, 2, 3):
        for _ in range(10):
            text = ENGLISH.demo.describe("yellow", "triangle", count, rng)
            assert "yellow" in text and "triangle" in text
            assert ("triangles" in text) == (count > 1)
    assert "two red squares" in {ENGLISH.demo.describe("red", "square", 2, rng) for _ in range(50)}


def test_tiny_tokenizer_round_trip(tmp_path: Path):
    rng = random.Random(1)
    texts = [
        ENGLISH.demo.describe(c, s, n, rng)
        for c in ENGLISH.demo.colour_terms
        for s in ENGLISH.demo.shape_terms
        for n in (1, 2, 3)
    ]
    tokenizer = ENGLISH.load_tokenizer(str(ENGLISH.build_tiny_tokenizer(texts, tmp_path)))
    ids = ENGLISH.encode_caption(tokenizer, "  there are  two red circles ")
    assert ids[-1] == ENGLISH.end_token_id(tokenizer) == tokenizer.eos_token_id
    assert ENGLISH.decode_caption(tokenizer, ids + ids) == "there are two red circles"
    assert ENGLISH.pad_token_id(tokenizer) == tokenizer.eos_token_id  # GPT-2 has no pad token
