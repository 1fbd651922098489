"""Image loading: RGB out, one clear BadInput line for anything unreadable."""

from __future__ import annotations

import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from polycap.data.images import (
    DEFAULT_MAX_PIXELS,
    expand_image_paths,
    load_image,
    max_pixels,
    set_max_pixels,
)
from polycap.errors import BadInput


def _save(
    path: Path, mode: str = "RGB", size: tuple[int, int] = (24, 16), **kwargs: object
) -> Path:
    image = Image.new(mode, size, 1 if mode in ("L", "P") else (200, 30, 40, 128)[: len(mode)])
    image.save(path, **kwargs)
    return path


@pytest.mark.parametrize(
    "name, mode, kwargs",
    [
        ("rgb.png", "RGB", {}),
        ("rgba.png", "RGBA", {}),
        ("grey.png", "L", {}),
        ("palette.png", "P", {"transparency": 0}),
        ("photo.jpg", "RGB", {"quality": 90}),
        ("still.webp", "RGB", {}),
    ],
)
def test_load_image_gives_rgb(tmp_path: Path, name: str, mode: str, kwargs: dict) -> None:
    image = load_image(_save(tmp_path / name, mode, **kwargs))
    assert image.mode == "RGB"
    assert image.size == (24, 16)


def _assert_one_line(error: pytest.ExceptionInfo[BadInput], path: Path) -> str:
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: not a readable image (")
    return message


def test_missing_image(tmp_path: Path) -> None:
    path = tmp_path / "nope.png"
    with pytest.raises(BadInput) as error:
        load_image(path)
    assert "no such file" in _assert_one_line(error, path)


def test_corrupt_image(tmp_path: Path) -> None:
    path = tmp_path / "noise.png"
    path.write_bytes(os.urandom(2000))
    with pytest.raises(BadInput) as error:
        load_image(path)
    _assert_one_line(error, path)


def test_truncated_png_fails_on_full_decode(tmp_path: Path) -> None:
    full = _save(tmp_path / "full.png", size=(64, 64))
    noisy = Image.effect_noise((64, 64), 80).convert("RGB")  # incompressible, so truncation bites
    noisy.save(full)
    path = tmp_path / "truncated.png"
    path.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    Image.open(path)  # the header alone is fine ...
    with pytest.raises(BadInput) as error:  # ... but decoding everything is not
        load_image(path)
    _assert_one_line(error, path)


def test_directory_is_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(BadInput) as error:
        load_image(tmp_path)
    assert "is a directory" in _assert_one_line(error, tmp_path)


def test_expand_image_paths(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("b.png", "a.JPG", "c.webp"):
        _save(folder / name, **({"format": "JPEG"} if name.endswith("JPG") else {}))
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub").mkdir()
    single = _save(tmp_path / "single.png")
    result = expand_image_paths([single, folder, folder / "b.png", str(single)])
    assert result == [single, folder / "a.JPG", folder / "b.png", folder / "c.webp"]


def test_expand_image_paths_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="no such file or folder"):
        expand_image_paths([tmp_path / "missing"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BadInput, match="no image files"):
        expand_image_paths([empty])


# -- pixels as a person sees them ------------------------------------------------------------


def _png(
    array: np.ndarray, colour_type: int, bits: int = 16, size: tuple[int, int] | None = None
) -> bytes:
    """A PNG written by hand (16-bit layouts; ``size`` overrides the header's size)."""
    height, width = array.shape[:2]
    dtype = ">u2" if bits == 16 else "u1"
    raw = b"".join(b"\x00" + array[y].astype(dtype).tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    width, height = size or (width, height)
    header = struct.pack(">IIBBBBB", width, height, bits, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(load_image(path)).astype(int)


def test_16_bit_greyscale_is_scaled_not_white(tmp_path: Path) -> None:
    grey = np.array([[0, 10000, 40000, 65535]], dtype=np.uint16)
    path = tmp_path / "grey16.png"
    path.write_bytes(_png(grey, colour_type=0))
    assert Image.open(path).mode.startswith("I")
    pixels = _pixels(path)
    assert pixels[0, :, 0].tolist() == [0, 39, 156, 255]  # value / 257, rounded
    assert (pixels[..., 0] == pixels[..., 2]).all()


def test_16_bit_rgb_keeps_its_colours(tmp_path: Path) -> None:
    rgb = np.zeros((1, 2, 3), dtype=np.uint16)
    rgb[0, 0] = (65535, 32896, 0)
    rgb[0, 1] = (0, 0, 65535)
    path = tmp_path / "rgb16.png"
    path.write_bytes(_png(rgb, colour_type=2))
    assert _pixels(path).tolist() == [[[255, 128, 0], [0, 0, 255]]]


def test_float_image_in_unit_range_is_scaled(tmp_path: Path) -> None:
    path = tmp_path / "float.tif"
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), mode="F").save(path)
    assert _pixels(path)[0, :, 1].tolist() == [0, 128, 255]


def test_32_bit_integer_image_is_scaled_from_16_bit_range(tmp_path: Path) -> None:
    path = tmp_path / "int32.tif"
    Image.fromarray(np.array([[0, 257 * 100, 65535]], dtype=np.int32), mode="I").save(path)
    assert _pixels(path)[0, :, 0].tolist() == [0, 100, 255]


def test_transparent_pixels_are_shown_on_white(tmp_path: Path) -> None:
    rgba = np.array([[[0, 0, 0, 0], [255, 0, 0, 255], [255, 0, 0, 128]]], dtype=np.uint8)
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    pixels = _pixels(path)
    assert pixels[0, 0].tolist() == [255, 255, 255]  # fully transparent black: white
    assert pixels[0, 1].tolist() == [255, 0, 0]
    assert np.abs(pixels[0, 2] - [255, 127, 127]).max() <= 1  # half-transparent red: pink


def test_greyscale_with_alpha_is_shown_on_white(tmp_path: Path) -> None:
    path = tmp_path / "la.png"
    Image.fromarray(np.array([[[100, 0], [100, 255]]], dtype=np.uint8), mode="LA").save(path)
    assert _pixels(path).tolist() == [[[255, 255, 255], [100, 100, 100]]]


def test_palette_colours_and_transparent_index(tmp_path: Path) -> None:
    image = Image.new("P", (3, 1))
    image.putpalette([0, 0, 0, 10, 200, 30, 250, 240, 5] + [0] * (256 * 3 - 9))
    image.putdata([0, 1, 2])
    plain, transparent = tmp_path / "palette.png", tmp_path / "palette-t.png"
    image.save(plain)
    image.save(transparent, transparency=0)
    assert _pixels(plain).tolist() == [[[0, 0, 0], [10, 200, 30], [250, 240, 5]]]
    assert _pixels(transparent).tolist() == [[[255, 255, 255], [10, 200, 30], [250, 240, 5]]]


def test_cmyk_becomes_rgb(tmp_path: Path) -> None:
    image = Image.new("CMYK", (2, 1))
    image.putdata([(0, 255, 255, 0), (0, 0, 0, 128)])  # red, mid grey
    tiff, jpeg = tmp_path / "cmyk.tif", tmp_path / "cmyk.jpg"
    image.save(tiff)
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(jpeg, quality=95)
    assert _pixels(tiff).tolist() == [[[255, 0, 0], [127, 127, 127]]]
    assert np.abs(_pixels(jpeg) - [255, 0, 0]).max() <= 8


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_exif_orientation_is_applied(tmp_path: Path, suffix: str) -> None:
    stored = np.zeros((2, 4, 3), dtype=np.uint8)  # 4 wide, 2 high: left half red, right blue
    stored[:, :2] = (255, 0, 0)
    stored[:, 2:] = (0, 0, 255)
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    path = tmp_path / f"rotated{suffix}"
    image.save(path, exif=exif, **({"quality": 100} if suffix == ".jpg" else {}))
    shown = load_image(path)
    assert shown.size == (2, 4)  # upright: 2 wide, 4 high
    pixels = np.asarray(shown).astype(int)
    assert np.abs(pixels[0, 0] - [255, 0, 0]).max() <= 40  # the left edge is now on top
    assert np.abs(pixels[-1, -1] - [0, 0, 255]).max() <= 40


# -- decompression bombs ---------------------------------------------------------------------


def test_too_many_pixels_is_one_line_without_pil_warnings(tmp_path: Path) -> None:
    path = tmp_path / "huge.png"  # 10000 x 10000 in its header; the pixels are never decoded
    path.write_bytes(_png(np.zeros((1, 1), np.uint8), colour_type=0, bits=8, size=(10000, 10000)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's DecompressionBombWarning would raise here
        with pytest.raises(BadInput) as error:
            load_image(path)
    message = _assert_one_line(error, path)
    assert "10000x10000 = 100,000,000 pixels" in message
    assert f"limit of {DEFAULT_MAX_PIXELS:,}" in message and "--max-pixels" in message


def test_max_pixels_is_a_setting(tmp_path: Path) -> None:
    path = _save(tmp_path / "small.png", size=(40, 30))
    try:
        set_max_pixels(1000)
        with pytest.raises(BadInput, match="40x30 = 1,200 pixels, more than the limit of 1,000"):
            load_image(path)
        set_max_pixels(1200)
        assert load_image(path).size == (40, 30)
    finally:
        set_max_pixels(DEFAULT_MAX_PIXELS)
    assert max_pixels() == DEFAULT_MAX_PIXELS
    with pytest.raises(BadInput, match="--max-pixels must be at least 1"):
        set_max_pixels(0)
