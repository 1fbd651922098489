"""JPEGs decoded by torchvision give exactly Pillow's pixels, and so the same features."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TinyClip
from PIL import Image

from polycap import plugins
from polycap.builtin import encoders
from polycap.data import images
from polycap.data.encoding import encode_images, load_encoder
from polycap.data.images import TooManyPixels, decode_image, jpeg_decoder, set_jpeg_decoder
from polycap.errors import BadInput


@pytest.fixture(autouse=True)
def default_decoder() -> Iterator[None]:
    assert jpeg_decoder() == "torchvision"  # the default
    yield
    set_jpeg_decoder("torchvision")


def _jpeg(mode: str = "RGB", size: tuple[int, int] = (53, 37), **kwargs: object) -> bytes:
    """A noisy image with a gradient (so every DCT block has detail), saved as JPEG."""
    rng = np.random.default_rng(len(kwargs) + len(mode))
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    pixels[:, :20] = np.linspace(0, 255, 20, dtype=np.uint8)[None, :, None]
    image = Image.fromarray(pixels).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **kwargs)
    return buffer.getvalue()


def _rotated_exif() -> bytes:
    exif = Image.Exif()
    exif[images.ORIENTATION_TAG] = 6  # "rotate 90 CW to view"
    return exif.tobytes()


RGB_JPEGS = {
    "baseline": {"quality": 85},
    "progressive": {"progressive": True},
    "exif-rotated": {"exif": _rotated_exif()},
    "4:4:4": {"quality": 95, "subsampling": 0},
    "4:2:2": {"subsampling": 1},
}


def _pil_pixels(data: bytes) -> np.ndarray:
    set_jpeg_decoder("pil")
    try:
        return np.asarray(decode_image(data))
    finally:
        set_jpeg_decoder("torchvision")


@pytest.mark.parametrize("name", sorted(RGB_JPEGS))
def test_torchvision_pixels_equal_pillows(name: str) -> None:
    data = _jpeg(**RGB_JPEGS[name])
    by_torchvision = images._decode_jpeg(data, "cpu")
    assert by_torchvision is not None  # the torchvision path really decoded it
    pil = _pil_pixels(data)
    assert np.array_equal(np.asarray(by_torchvision), pil)  # measured: 0 units apart
    assert np.array_equal(np.asarray(decode_image(data)), pil)
    if name == "exif-rotated":
        assert pil.shape == (53, 37, 3)  # upright: 37 wide x 53 high


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_greyscale_and_cmyk_jpegs_use_pillows_conversion(mode: str) -> None:
    data = _jpeg(mode)
    image = decode_image(data)
    assert image.mode == "RGB"
    assert np.array_equal(np.asarray(image), _pil_pixels(data))


def test_corrupt_jpeg_keeps_pillows_reason() -> None:
    truncated = _jpeg()[:300]
    assert images._decode_jpeg(truncated, "cpu") is None
    with pytest.raises(BadInput, match="(?i)not a readable image.*truncated"):
        decode_image(truncated, "bad.jpg")


def test_pixel_limit_checked_before_torchvision_decodes() -> None:
    with pytest.raises(TooManyPixels, match="more than the limit of 100"):
        decode_image(_jpeg(), "big.jpg", limit=100)


def test_unknown_decoder_is_bad_input() -> None:
    with pytest.raises(BadInput, match="JPEG decoder must be one of"):
        set_jpeg_decoder("libjpeg")


def test_encoding_features_identical(
    tiny_clip: TinyClip, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = plugins.PluginHost(load_entry_points=False, builtins=False)
    host.add_plugin(encoders, "polycap.builtin.encoders")
    monkeypatch.setattr(plugins, "get_registries", lambda: host.registries)
    encoder = load_encoder(tiny_clip.name, pretrained=tiny_clip.weights)
    paths = []
    for name, kwargs in sorted(RGB_JPEGS.items()):
        paths.append(tmp_path / f"{name}.jpg")
        paths[-1].write_bytes(_jpeg(**kwargs))
    (tmp_path / "grey.jpg").write_bytes(_jpeg("L"))
    (tmp_path / "corrupt.jpg").write_bytes(_jpeg()[:300])
    paths += [tmp_path / "grey.jpg", tmp_path / "corrupt.jpg"]
    new = encode_images(encoder, paths, batch_size=3, progress=False, use_cache=False)
    set_jpeg_decoder("pil")
    old = encode_images(encoder, paths, batch_size=3, progress=False, use_cache=False)
    assert torch.equal(new.features, old.features)
    assert len(new) == len(paths) - 1
    reasons = [(Path(p).name, "truncated" in r.lower()) for p, r in new.skipped]
    assert reasons == [("corrupt.jpg", True)]
    assert new.skipped == old.skipped
