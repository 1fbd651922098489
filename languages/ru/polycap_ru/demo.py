"""Russian words for the synthetic demo, with the agreement numerals demand.

All three shapes are masculine nouns (круг, квадрат, треугольник), so:

- 1 (and 21, 31, ...): adjective and noun in the nominative singular — «один красный круг»;
- 2-4 (and 22-24, ...): adjective in the genitive plural, noun in the genitive singular —
  «два красных круга», «три жёлтых треугольника»;
- 5-20, 25-30, ...: both in the genitive plural — «пять синих квадратов».

Colour terms are stems that survive every form used here (красн-, зелён-/зелен- → «зел»,
син-, жёлт-); captions keep ё, which the demo scorer sees after the pack's normalisation
(NFC only, so ё stays ё).
"""

from __future__ import annotations

import random

from polycap.language import DemoLexicon

# colour -> (nominative singular masculine, genitive plural)
_ADJECTIVES = {
    "red": ("красный", "красных"),
    "green": ("зелёный", "зелёных"),
    "blue": ("синий", "синих"),
    "yellow": ("жёлтый", "жёлтых"),
}
# shape -> (nominative singular, genitive singular, genitive plural)
_NOUNS = {
    "circle": ("круг", "круга", "кругов"),
    "square": ("квадрат", "квадрата", "квадратов"),
    "triangle": ("треугольник", "треугольника", "треугольников"),
}
_NUMBERS = {1: "один", 2: "два", 3: "три", 4: "четыре", 5: "пять", 6: "шесть"}

_ONE = (
    "{adjective} {noun}",
    "один {adjective} {noun}",
    "один {adjective} {noun} на тёмном фоне",
    "на картинке {adjective} {noun}",
    "на изображении один {adjective} {noun}",
)
_MANY = (
    "{number} {adjective} {noun}",
    "{number} {adjective} {noun} на тёмном фоне",
    "на картинке {number} {adjective} {noun}",
    "на изображении {number} {adjective} {noun}",
)


def agree(colour: str, shape: str, count: int) -> tuple[str, str]:
    """Adjective and noun in the forms the numeral ``count`` governs."""
    nominative, genitive_plural_adjective = _ADJECTIVES[colour]
    noun_singular, noun_genitive, noun_genitive_plural = _NOUNS[shape]
    last, last_two = count % 10, count % 100
    if last == 1 and last_two != 11:
        return nominative, noun_singular
    if 2 <= last <= 4 and not 12 <= last_two <= 14:
        return genitive_plural_adjective, noun_genitive
    return genitive_plural_adjective, noun_genitive_plural


def describe(colour: str, shape: str, count: int, rng: random.Random) -> str:
    """One Russian caption, e.g. «два красных круга на тёмном фоне»."""
    adjective, noun = agree(colour, shape, count)
    template = rng.choice(_ONE if count == 1 else _MANY)
    number = _NUMBERS.get(count, str(count))
    return template.format(adjective=adjective, noun=noun, number=number)


RUSSIAN_DEMO = DemoLexicon(
    describe=describe,
    colour_terms={"red": "красн", "green": "зел", "blue": "син", "yellow": "жёлт"},
    shape_terms={"circle": "круг", "square": "квадрат", "triangle": "треугольник"},
)
