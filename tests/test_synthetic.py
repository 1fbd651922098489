"""Synthetic coloured-shape data and its scorer."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from polycap.builtin.english import ENGLISH
from polycap.offline.synthetic import COLOURS, PAIRS, draw_image, make_synthetic_set, score_captions

HELDOUT = (("red", "triangle"), ("blue", "square"))


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory):
    return make_synthetic_set(
        ENGLISH, tmp_path_factory.mktemp("synthetic"), 60, seed=3, heldout_pairs=HELDOUT
    )


def _count_near(image: Image.Image, rgb: tuple[int, ...], tolerance: int = 45) -> int:
    """Pixels whose every channel is within ``tolerance`` of ``rgb``."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    return int((np.abs(pixels - np.array(rgb)) <= tolerance).all(axis=-1).sum())


def test_files_in_captions_json_format(split):
    assert split.image_dir == split.directory / "images"
    files = {split.train_file: split.train_images, split.test_file: split.test_images}
    for path, names in files.items():
        records = json.loads(path.read_text(encoding="utf-8"))
        assert {tuple(sorted(r)) for r in records} == {("caption", "id", "image_name")}
        assert {r["image_name"] for r in records} == set(names)
        assert all((split.image_dir / r["image_name"]).is_file() for r in records)
    assert len(split.train_images) == 48 and len(split.test_images) == 12
    assert set(split.truths) == set(split.train_images) | set(split.test_images)


def test_heldout_pairs_only_in_test(split):
    train_pairs = {split.truths[name][:2] for name in split.train_images}
    test_pairs = {split.truths[name][:2] for name in split.test_images}
    assert not train_pairs & set(HELDOUT)
    assert train_pairs == set(PAIRS) - set(HELDOUT)
    assert test_pairs == set(PAIRS)  # 12 test images cycle through all 12 pairs
    assert split.heldout_pairs == HELDOUT


def test_images_show_their_colour_only(split):
    for name in split.train_images[:12]:
        colour, _shape, _count = split.truths[name]
        image = Image.open(split.image_dir / name)
        assert image.size == (128, 128) and image.mode == "RGB"
        assert _count_near(image, COLOURS[colour]) > 150
        for other, rgb in COLOURS.items():
            if other != colour:
                assert _count_near(image, rgb, 30) < 20, (name, other)


def test_shapes_differ_in_filled_area():
    """Same size and place (same seed): a circle of radius r fills pi r^2, the square
    (1.7 r)^2, the triangle inscribed in the circle 1.3 r^2 -- the shapes really differ."""

    def filled(shape: str) -> int:
        return _count_near(draw_image("green", shape, 1, random.Random(7)), COLOURS["green"])

    assert filled("circle") > filled("square") > filled("triangle") > 100


def test_captions_describe_the_image(split):
    assert all(len(texts) == 2 and texts[0] != texts[1] for texts in split.captions.values())
    own = {name: texts[0] for name, texts in split.captions.items()}
    scores = score_captions(ENGLISH, own, split.truths)
    assert scores == {"colour_accuracy": 1.0, "shape_accuracy": 1.0, "pair_accuracy": 1.0, "n": 60}


def test_same_seed_same_data(tmp_path: Path, split):
    again = make_synthetic_set(ENGLISH, tmp_path, 60, seed=3, heldout_pairs=HELDOUT)
    assert again.truths == split.truths and again.captions == split.captions
    name = split.test_images[0]
    assert (tmp_path / "images" / name).read_bytes() == (split.image_dir / name).read_bytes()


def test_score_captions_counts_by_hand():
    truths = {
        "a.png": ("red", "circle", 2),
        "b.png": ("blue", "square", 1),
        "c.png": ("green", "triangle", 3),
        "d.png": ("yellow", "circle", 1),
        "e.png": ("red", "square", 1),
    }
    captions = {
        "a.png": "Two RED circles.",  # right (normalised, case-insensitive)
        "b.png": "a green square",  # wrong colour, right shape
        "c.png": "a green and a blue triangle",  # names two colours: colour wrong
        "d.png": "one tired yellow circle and a square",  # "tired" is not "red"; two shapes
        "e.png": "a shredded red square",  # "shredded" is not "red": right
    }
    scores = score_captions(ENGLISH, captions, truths)
    assert scores["n"] == 5
    assert scores["colour_accuracy"] == pytest.approx(3 / 5)  # a, d, e
    assert scores["shape_accuracy"] == pytest.approx(4 / 5)  # a, b, c, e
    assert scores["pair_accuracy"] == pytest.approx(2 / 5)  # a, e
    assert score_captions(ENGLISH, {}, truths)["n"] == 0
    with pytest.raises(KeyError, match="z.png"):
        score_captions(ENGLISH, {"z.png": "a red circle"}, truths)


def test_bad_arguments(tmp_path: Path):
    with pytest.raises(ValueError, match="unknown"):
        make_synthetic_set(ENGLISH, tmp_path, 10, heldout_pairs=[("purple", "circle")])
    with pytest.raises(ValueError, match="held out"):
        make_synthetic_set(ENGLISH, tmp_path, 10, heldout_pairs=PAIRS)
