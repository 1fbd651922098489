"""The Python API on a par with ``polycap caption``: images as numpy arrays, 8-bit tensors (one
``[H, W, 3]`` / ``[3, H, W]`` or a batch), generators, features as arrays; progress bars on
request; the device ``auto`` by default."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_setup import tiny_captioner

import polycap
from polycap.builtin.english import ENGLISH
from polycap.errors import BadInput

CAPTIONS = ["a red circle", "two blue squares", "a green triangle", "three yellow circles"] * 5
COLOURS = [(200, 30, 30), (20, 30, 200), (30, 180, 40)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """(loaded captioner, image paths, the same images as [H, W, 3] uint8 arrays)."""
    root = tmp_path_factory.mktemp("api")
    checkpoint = tiny_captioner(ENGLISH, CAPTIONS, root, train_lm=True).save(root / "checkpoint")
    paths, arrays = [], []
    generator = np.random.default_rng(0)
    for i, colour in enumerate(COLOURS):
        pixels = np.full((32, 40, 3), colour, dtype=np.uint8)
        pixels[8:20, 10:30] = generator.integers(0, 255, (12, 20, 3), dtype=np.uint8)
        path = root / f"{i}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
        arrays.append(pixels)
    return polycap.load(checkpoint, device="cpu"), paths, arrays, checkpoint


def test_arrays_tensors_and_generators_give_what_paths_give(setup) -> None:
    captioner, paths, arrays, _ = setup
    expected = captioner.caption(paths, max_length=8)
    assert len(set(expected)) > 1  # the images differ
    batch = np.stack(arrays)
    assert captioner.caption(arrays, max_length=8) == expected
    assert captioner.caption(batch, max_length=8) == expected  # [B, H, W, 3]
    assert captioner.caption(torch.from_numpy(batch), max_length=8) == expected
    channels_first = torch.from_numpy(batch).permute(0, 3, 1, 2)  # [B, 3, H, W]
    assert captioner.caption(channels_first, max_length=8) == expected
    assert captioner.caption(arrays[1], max_length=8) == expected[1]  # one [H, W, 3]
    assert captioner.caption(channels_first[2], max_length=8) == expected[2]  # one [3, H, W]
    assert captioner.caption((p for p in paths), max_length=8) == expected  # a generator
    assert captioner.caption(tuple(str(p) for p in paths), max_length=8) == expected
    mixed = [paths[0], torch.from_numpy(arrays[1]), Image.open(paths[2])]
    assert captioner.caption(mixed, max_length=8) == expected


def test_features_as_arrays(setup) -> None:
    captioner, paths, _, _ = setup
    features = captioner.features(paths)
    expected = captioner.caption(paths, max_length=8)
    assert captioner.caption(features.numpy(), max_length=8) == expected
    assert captioner.caption(features[0].numpy(), max_length=8) == expected[0]
    assert captioner.caption(features.double(), max_length=8) == expected


def test_progress_bars_on_request(setup, monkeypatch) -> None:
    from polycap.inference import api
    from polycap.model import generation
    from polycap.util import progress

    shown: list[tuple[str, bool]] = []
    original = progress.progress_bar

    def recording(description: str, total: int, enabled: bool = True):
        shown.append((description, enabled))
        return original(description, total, enabled)

    monkeypatch.setattr(progress, "progress_bar", recording)
    monkeypatch.setattr(generation, "progress_bar", recording)
    monkeypatch.setattr(api, "progress_bar", recording)
    captioner, paths, _, _ = setup
    quiet = captioner.caption(paths, batch_size=2, max_length=8)
    assert not any(enabled for _, enabled in shown)
    shown.clear()
    assert captioner.caption(paths, batch_size=2, max_length=8, progress=True) == quiet
    assert {name for name, enabled in shown if enabled} == {"encoding", "captioning"}


def test_the_device_is_auto_by_default(setup) -> None:
    from polycap.inference import api
    from polycap.util.devices import resolve_device

    assert inspect.signature(polycap.load).parameters["device"].default == "auto"
    assert inspect.signature(api.load).parameters["device"].default == "auto"
    *_, checkpoint = setup
    assert polycap.load(checkpoint).device == str(resolve_device("auto"))


@pytest.mark.parametrize(
    "images, message",
    [
        (np.zeros((32, 40, 3), dtype=np.float32), "float array of shape"),
        (np.zeros((32, 40, 3), dtype=np.int64), "8-bit"),
        (np.zeros((2, 32, 40, 5), dtype=np.uint8), "expected"),
        (3, "cannot caption a int"),
        ([3.5, Path("x.png")], "cannot caption a float"),
    ],
)
def test_bad_images_are_one_clear_line(setup, images, message) -> None:
    captioner, *_ = setup
    with pytest.raises(BadInput, match=message) as error:
        captioner.caption(images, max_length=4)
    assert "\n" not in str(error.value)
