"""Image loading: RGB out, one clear BadInput line for anything unreadable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from polycap.errors import BadInput
from polycap.images import expand_image_paths, load_image


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
