"""Test kit for plugin authors: the language-pack conformance suite.

Every language pack's tests subclass :class:`LanguagePackConformance` (pytest) or call the
``check_*`` functions directly; see ``docs/writing-a-language-pack.md``.
"""

from polycap.testing.conformance import (
    DEMO_COLOURS,
    DEMO_SHAPES,
    LanguagePackConformance,
    build_tiny_decoder,
    check_demo_lexicon,
    check_end_of_caption,
    check_eval_tokenize,
    check_loader,
    check_pack_fields,
    check_plugin_metadata,
    check_round_trip,
    is_tokenizer_of,
    load_pack,
    training_texts,
)
from polycap.testing.decoder_contract import check_decoder_contract

__all__ = [
    "DEMO_COLOURS",
    "DEMO_SHAPES",
    "LanguagePackConformance",
    "build_tiny_decoder",
    "check_decoder_contract",
    "check_demo_lexicon",
    "check_end_of_caption",
    "check_eval_tokenize",
    "check_loader",
    "check_pack_fields",
    "check_plugin_metadata",
    "check_round_trip",
    "is_tokenizer_of",
    "load_pack",
    "training_texts",
]
