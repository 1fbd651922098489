"""Japanese words for polycap's synthetic demo: "赤い丸が2つあります" and friends."""

from __future__ import annotations

import random

from polycap.language import DemoLexicon

COLOUR_WORDS = {
    "red": ("赤い",),
    "green": ("緑の", "緑色の"),
    "blue": ("青い",),
    "yellow": ("黄色い",),
}
SHAPE_WORDS = {
    "circle": ("丸",),
    "square": ("四角", "四角形"),
    "triangle": ("三角", "三角形"),
}
COLOUR_NOUNS = {"red": ("赤",), "green": ("緑",), "blue": ("青",), "yellow": ("黄色",)}
NUMBER_WORDS = {
    1: ("ひとつ", "1つ", "一つ"),
    2: ("ふたつ", "2つ", "二つ"),
    3: ("みっつ", "3つ", "三つ"),
}
TEMPLATES = (
    "{colour}{shape}が{number}あります",
    "{colour}{shape}が{number}",
    "暗い背景に{colour}{shape}が{number}描かれている",
    "{number}の{colour}{shape}",
    # shape before colour too, so a model can learn the two words separately (unseen pairs)
    "{shape}が{number}、色は{colour_noun}",
    "{shape}が{number}、すべて{colour_noun}",
)
ONE_ONLY = ("{colour}{shape}が{number}だけある",)
MANY_ONLY = ("{colour}{shape}が{number}並んでいる",)


def describe(colour: str, shape: str, count: int, rng: random.Random) -> str:
    """One Japanese caption, e.g. ``describe("red", "circle", 2, rng) -> "赤い丸が2つあります"``."""
    templates = TEMPLATES + (ONE_ONLY if count == 1 else MANY_ONLY)
    numbers = NUMBER_WORDS.get(count, (f"{count}つ",))
    return rng.choice(templates).format(
        colour=rng.choice(COLOUR_WORDS[colour]),
        colour_noun=rng.choice(COLOUR_NOUNS[colour]),
        shape=rng.choice(SHAPE_WORDS[shape]),
        number=rng.choice(numbers),
    )


JAPANESE_DEMO = DemoLexicon(
    describe=describe,
    colour_terms={"red": "赤", "green": "緑", "blue": "青", "yellow": "黄"},
    shape_terms={"circle": "丸", "square": "四角", "triangle": "三角"},
)
