"""The built-in English pack passes the same conformance suite as every installed pack."""

from __future__ import annotations

from polycap.testing import LanguagePackConformance


class TestEnglishConformance(LanguagePackConformance):
    code = "en"
    distribution = None  # built in
    tokenizer_class = "GPT2Tokenizer"
    sample_texts = (
        "A dog catches a red frisbee in the park.",
        "Two children are flying a kite on the beach!",
        "There's a bowl of soup, 3 spoons and a glass of water.",
        "café  au lait   on a wooden table",
    )
    eval_cases = (
        ("Two red circles.", ["two", "red", "circles", "."]),
        ("A dog's ball, on the grass!", ["a", "dog's", "ball", ",", "on", "the", "grass", "!"]),
        ("  THREE   blue squares ", ["three", "blue", "squares"]),
    )
