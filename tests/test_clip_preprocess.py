"""The import-free CLIP preprocessing of ONNX exports equals open_clip's, pixel for pixel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from polycap.interop.clip_preprocess import fast_transform

SETTINGS = {
    "mean": (0.48145466, 0.4578275, 0.40821073),
    "std": (0.26862954, 0.26130258, 0.27577711),
    "fill_color": 0,
}


def open_clip_transform(settings):
    from open_clip.transform import PreprocessCfg, image_transform_v2

    return image_transform_v2(PreprocessCfg(**settings), is_train=False)


def image(width: int, height: int, mode: str, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 4), dtype=np.uint8)
    return Image.fromarray(pixels, "RGBA").convert(mode)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("size", [64, 224])
def test_equal_to_open_clip(size: int, interpolation: str) -> None:
    settings = {
        **SETTINGS,
        "size": (size, size),
        "mode": "RGB",
        "interpolation": interpolation,
        "resize_mode": "shortest",
    }
    ours, theirs = fast_transform(settings), open_clip_transform(settings)
    assert ours is not None
    shapes = [(640, 480), (480, 640), (size, size), (size + 1, 3 * size), (33, 17), (500, 500)]
    for seed, (width, height) in enumerate(shapes):
        for mode in ("RGB", "RGBA", "L"):
            picture = image(width, height, mode, seed)
            expected = theirs(picture)
            got = ours(picture)
            assert got.dtype == expected.dtype and got.shape == expected.shape
            assert torch.equal(got, expected), (width, height, mode)


@pytest.mark.parametrize(
    "change",
    [
        {"resize_mode": "longest"},
        {"resize_mode": "squash"},
        {"size": (224, 256)},
        {"interpolation": "nearest"},
    ],
)
def test_other_settings_are_left_to_open_clip(change: dict) -> None:
    settings = {
        **SETTINGS,
        "size": (224, 224),
        "mode": "RGB",
        "interpolation": "bicubic",
        "resize_mode": "shortest",
        **change,
    }
    assert fast_transform(settings) is None
