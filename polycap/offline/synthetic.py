"""Synthetic captioning data: coloured shapes on a plain background, captioned in any language.

Each image shows 1-3 copies of one shape (circle, square, triangle) in one colour (red, green,
blue, yellow); captions come from the language pack's :class:`~polycap.language.DemoLexicon`,
so the demo and the tests can train and score a captioner in every installed language with no
downloads. ``heldout_pairs`` keeps chosen (colour, shape) pairs out of training entirely, for a
compositional test: the model has seen "red" and "triangle", never "red triangle".
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polycap.util.atomic import write_json

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 45, 40),
    "green": (40, 175, 65),
    "blue": (45, 85, 230),
    "yellow": (235, 210, 40),
}
SHAPES = ("circle", "square", "triangle")
PAIRS = tuple((colour, shape) for colour in COLOURS for shape in SHAPES)
IMAGE_SIZE = 128
_SUPERSAMPLE = 2  # draw at 2x and downsample: smooth edges, same colours inside the shapes
# Largest shape radius as a fraction of the image side, by count; each shape's radius is drawn
# from [SIZE_JITTER, 1] x that. Shapes stay large so that shape is visible to a frozen encoder.
MAX_RADIUS = {1: 0.36, 2: 0.26, 3: 0.21}
SIZE_JITTER = 0.9

Truth = tuple[str, str, int]


@dataclass
class SyntheticSplit:
    """What :func:`make_synthetic_set` wrote.

    ``train_file`` / ``test_file`` are captions.json files (JSON list of
    ``{"caption", "id", "image_name"}``) whose ``image_name`` is a file in ``image_dir``;
    ``truths`` maps every image name to its (colour, shape, count).
    """

    directory: Path
    image_dir: Path
    train_file: Path
    test_file: Path
    truths: dict[str, Truth]
    train_images: list[str]
    test_images: list[str]
    heldout_pairs: tuple[tuple[str, str], ...] = ()
    captions: dict[str, list[str]] = field(default_factory=dict)


# -- drawing ---------------------------------------------------------------------------------


def draw_image(
    colour: str, shape: str, count: int, rng: random.Random, size: int = IMAGE_SIZE
) -> Any:
    """A PIL RGB image of ``count`` non-overlapping ``colour`` ``shape``s on a dark background."""
    from PIL import Image, ImageDraw

    scale = _SUPERSAMPLE
    grey = rng.randint(25, 70)
    background = (grey, grey, grey + rng.randint(0, 10))
    canvas = Image.new("RGB", (size * scale, size * scale), background)
    draw = ImageDraw.Draw(canvas)
    fill = _jitter(COLOURS[colour], rng)
    for cx, cy, radius in _place(count, rng, size):
        _draw_shape(draw, shape, cx * scale, cy * scale, radius * scale, fill)
    return canvas.resize((size, size), Image.Resampling.LANCZOS)


def _jitter(rgb: tuple[int, int, int], rng: random.Random, amount: int = 15) -> tuple[int, ...]:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in rgb)


def _place(count: int, rng: random.Random, size: int) -> list[tuple[float, float, float]]:
    """Centres and radii of ``count`` shapes inside the image, overlapping little."""
    largest = MAX_RADIUS.get(count, 0.16) * size
    for _attempt in range(200):
        placed: list[tuple[float, float, float]] = []
        for _ in range(count):
            for _try in range(100):
                radius = rng.uniform(SIZE_JITTER, 1.0) * largest
                margin = radius + 2
                cx, cy = rng.uniform(margin, size - margin), rng.uniform(margin, size - margin)
                if all(math.dist((cx, cy), (x, y)) >= 1.05 * (radius + r) for x, y, r in placed):
                    placed.append((cx, cy, radius))
                    break
        if len(placed) == count:
            return placed
    raise RuntimeError(f"could not place {count} shapes in a {size}px image")  # pragma: no cover


def _draw_shape(draw: Any, shape: str, cx: float, cy: float, r: float, fill: tuple) -> None:
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        half = r * 0.85  # a square of the same visual weight as the circle
        draw.rectangle((cx - half, cy - half, cx + half, cy + half), fill=fill)
    elif shape == "triangle":
        points = [
            (cx + r * math.cos(angle), cy + r * math.sin(angle))
            for angle in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)
        ]
        # an equilateral triangle's centroid sits low in its box: shift it up to centre it
        shift = r * 0.25
        draw.polygon([(x, y + shift) for x, y in points], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")


# -- data sets -------------------------------------------------------------------------------


def make_synthetic_set(
    pack: Any,
    directory: str | Path,
    n_images: int,
    seed: int = 0,
    test_fraction: float = 0.2,
    heldout_pairs: Iterable[tuple[str, str]] = (),
    captions_per_image: int = 2,
) -> SyntheticSplit:
    """Draw ``n_images`` PNGs into ``directory/images`` and write captions in ``pack``'s language.

    Test images cycle through all 12 (colour, shape) pairs, training images through the pairs
    not in ``heldout_pairs``, so both splits are balanced and held-out pairs appear only in
    the test split. Same seed, same files.
    """
    if pack.demo is None:
        raise ValueError(f"language pack {pack.code!r} has no demo lexicon")
    heldout, allowed = _split_pairs(heldout_pairs)
    if n_images < 2:
        raise ValueError("n_images must be at least 2 (one training and one test image)")
    n_test = min(n_images - 1, max(1, round(n_images * test_fraction)))
    n_train = n_images - n_test

    rng = random.Random(seed)
    directory = Path(directory)
    image_dir = directory / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    plan = [("train", pair) for pair in _cycle(allowed, n_train, rng)]
    plan += [("test", pair) for pair in _cycle(list(PAIRS), n_test, rng)]

    truths, captions, split_images, records = _draw_plan(
        pack, plan, image_dir, captions_per_image, rng
    )

    train_file = directory / "train_captions.json"
    test_file = directory / "test_captions.json"
    write_json(train_file, records["train"])
    write_json(test_file, records["test"])
    return SyntheticSplit(
        directory=directory,
        image_dir=image_dir,
        train_file=train_file,
        test_file=test_file,
        truths=truths,
        train_images=split_images["train"],
        test_images=split_images["test"],
        heldout_pairs=heldout,
        captions=captions,
    )


def _draw_plan(
    pack: Any,
    plan: list[tuple[str, tuple[str, str]]],
    image_dir: Path,
    captions_per_image: int,
    rng: random.Random,
) -> tuple[
    dict[str, Truth], dict[str, list[str]], dict[str, list[str]], dict[str, list[dict[str, Any]]]
]:
    """Draw each planned (split, (colour, shape)) image into ``image_dir`` and caption it;
    returns (truths, captions, images per split, caption records per split)."""
    truths: dict[str, Truth] = {}
    captions: dict[str, list[str]] = {}
    split_images: dict[str, list[str]] = {"train": [], "test": []}
    records: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
    caption_id = 0
    for index, (split, (colour, shape)) in enumerate(plan):
        count = rng.randint(1, 3)
        name = f"{split}_{index:05d}.png"
        draw_image(colour, shape, count, rng).save(image_dir / name)
        truths[name] = (colour, shape, count)
        split_images[split].append(name)
        texts = _distinct_captions(pack, colour, shape, count, captions_per_image, rng)
        captions[name] = texts
        for text in texts:
            records[split].append({"caption": text, "id": caption_id, "image_name": name})
            caption_id += 1
    return truths, captions, split_images, records


def _split_pairs(
    heldout_pairs: Iterable[tuple[str, str]],
) -> tuple[tuple[tuple[str, str], ...], list[tuple[str, str]]]:
    """(the held-out pairs, checked and de-duplicated; the pairs left for training)."""
    heldout = tuple(dict.fromkeys((str(c), str(s)) for c, s in heldout_pairs))
    for pair in heldout:
        if pair not in PAIRS:
            raise ValueError(f"unknown (colour, shape) pair {pair!r}")
    allowed = [pair for pair in PAIRS if pair not in heldout]
    if not allowed:
        raise ValueError("every (colour, shape) pair is held out: nothing left to train on")
    return heldout, allowed


def _cycle(pairs: list[tuple[str, str]], n: int, rng: random.Random) -> list[tuple[str, str]]:
    """``n`` pairs, each pair equally often (within one), in random order."""
    out = [pairs[i % len(pairs)] for i in range(n)]
    rng.shuffle(out)
    return out


def _distinct_captions(
    pack: Any, colour: str, shape: str, count: int, n: int, rng: random.Random
) -> list[str]:
    """Up to ``n`` different captions (fewer if the lexicon has fewer templates)."""
    texts: list[str] = []
    for _ in range(n * 10):
        text = pack.demo.describe(colour, shape, count, rng)
        if text not in texts:
            texts.append(text)
        if len(texts) == n:
            break
    return texts


# -- scoring ---------------------------------------------------------------------------------


def score_captions(
    pack: Any, captions: Mapping[str, str], truths: Mapping[str, Truth]
) -> dict[str, float]:
    """Colour, shape and pair accuracy of ``captions`` (image name -> caption).

    A colour counts as named when its term from ``pack.demo.colour_terms`` occurs in the
    normalised caption; a caption is right about colour only if it names the true colour and
    no other (so a caption listing every colour scores nothing). Same for shapes. A term that
    starts with a letter of an alphabetic script (Latin, Cyrillic, ...) must start a word
    ("red" does not match in "tired"); terms in scripts without spaces (kanji, hanzi) match
    anywhere. Count is not scored.
    """
    if pack.demo is None:
        raise ValueError(f"language pack {pack.code!r} has no demo lexicon")
    colour_patterns = _patterns(pack, pack.demo.colour_terms)
    shape_patterns = _patterns(pack, pack.demo.shape_terms)
    right = {"colour": 0, "shape": 0, "pair": 0}
    for name, caption in captions.items():
        if name not in truths:
            raise KeyError(f"no ground truth for image {name!r}")
        colour, shape, _count = truths[name]
        text = pack.normalize(caption)
        colour_ok = _named(text, colour_patterns) == {colour}
        shape_ok = _named(text, shape_patterns) == {shape}
        right["colour"] += colour_ok
        right["shape"] += shape_ok
        right["pair"] += colour_ok and shape_ok
    n = len(captions)
    scores: dict[str, float] = {f"{k}_accuracy": (v / n if n else 0.0) for k, v in right.items()}
    scores["n"] = n
    return scores


def _patterns(pack: Any, terms: Mapping[str, str]) -> dict[str, re.Pattern[str]]:
    return {key: _term_pattern(pack.normalize(term)) for key, term in terms.items()}


def _term_pattern(term: str) -> re.Pattern[str]:
    if term and term[0].isalpha() and ord(term[0]) < 0x2E80:  # below the CJK blocks
        return re.compile(r"(?<!\w)" + re.escape(term.lower()))
    return re.compile(re.escape(term.lower()))


def _named(text: str, patterns: Mapping[str, re.Pattern[str]]) -> set[str]:
    lowered = text.lower()
    return {key for key, pattern in patterns.items() if pattern.search(lowered)}
