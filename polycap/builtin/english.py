"""The English language pack (built in): GPT-2 decoder, byte-level BPE, regex word split."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from polycap.hookspecs import Register, hookimpl
from polycap.language import DemoLexicon, LanguagePack

_WORDS = re.compile(r"\w+(?:'\w+)*|[^\w\s]")

_NUMBERS = {1: "one", 2: "two", 3: "three"}
_ONE = (
    "a {colour} {shape}",
    "one {colour} {shape} on a dark background",
    "a single {colour} {shape}",
    "there is one {colour} {shape}",
    "a picture of a {colour} {shape}",
    # shape before colour too, so a model can learn the two words separately (unseen pairs)
    "a {shape} that is {colour}",
    "one {shape}, coloured {colour}",
)
_MANY = (
    "{number} {colour} {shape}s",
    "{number} {colour} {shape}s on a dark background",
    "there are {number} {colour} {shape}s",
    "a picture of {number} {colour} {shape}s",
    "{number} {shape}s that are {colour}",
    "{number} {shape}s, coloured {colour}",
)


def describe(colour: str, shape: str, count: int, rng: random.Random) -> str:
    """One English caption for ``count`` shapes of one colour, e.g. "two red circles"."""
    template = rng.choice(_ONE if count == 1 else _MANY)
    return template.format(colour=colour, shape=shape, number=_NUMBERS.get(count, str(count)))


ENGLISH_DEMO = DemoLexicon(
    describe=describe,
    colour_terms={key: key for key in ("red", "green", "blue", "yellow")},
    shape_terms={key: key for key in ("circle", "square", "triangle")},
)


@dataclass
class EnglishPack(LanguagePack):
    """English: cased GPT-2 text; evaluation lower-cases and splits words and punctuation."""

    def eval_tokenize(self, text: str) -> list[str]:
        """``"Two red circles."`` -> ``["two", "red", "circles", "."]``."""
        return _WORDS.findall(self.normalize(text).lower())


ENGLISH = EnglishPack(
    code="en",
    name="English",
    default_lm="gpt2",
    segmenter="lowercase + regex word split",
    tokenizer_kind="bpe",
    demo=ENGLISH_DEMO,
    retrieval_prompt="Similar images show: {captions}. This image shows:",
    caption_separator="; ",
    identifier_language="en",
)


@hookimpl
def register_languages(register: Register) -> None:
    """English is built in."""
    register("en", ENGLISH)
