"""The built-in English pack passes the same conformance suite as every installed pack."""

from __future__ import annotations

import pytest

from polycap.testing import LanguagePackConformance, check_loader, is_tokenizer_of


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


@pytest.fixture(scope="module")
def english(tmp_path_factory):
    """The English pack and a tiny tokenizer + decoder of its kind, saved locally."""
    from polycap.plugins import get_registries
    from polycap.testing import build_tiny_decoder, training_texts

    pack = get_registries().languages.get("en")
    texts = training_texts(pack, TestEnglishConformance.sample_texts)
    return pack, build_tiny_decoder(pack, texts, tmp_path_factory.mktemp("en")), texts[0]


@pytest.mark.parametrize(
    "name",
    ["GPT2Tokenizer", "GPT2TokenizerFast", "PreTrainedTokenizerFast", "TokenizersBackend"],
)
def test_the_tokenizer_check_holds_across_transformers_versions(name, english) -> None:
    """A pack that names its tokenizer by its transformers 4 name (``PreTrainedTokenizerFast``,
    ``GPT2TokenizerFast``) or its transformers 5 one (``TokenizersBackend``) passes with
    either version installed: the check asks what the tokenizer is, not what it is called."""
    pack, directory, text = english
    check_loader(pack, directory, text, name)


def test_the_tokenizer_check_still_refuses_another_kind(english) -> None:
    pack, directory, text = english
    tokenizer = pack.load_tokenizer(str(directory))
    assert is_tokenizer_of(tokenizer, "PreTrainedTokenizerBase")
    for wrong in ("BertTokenizer", "T5Tokenizer", "NoSuchTokenizer", "PreTrainedTokenizer"):
        assert not is_tokenizer_of(tokenizer, wrong)
    with pytest.raises(AssertionError, match="expected a BertTokenizer"):
        check_loader(pack, directory, text, "BertTokenizer")
