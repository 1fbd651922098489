"""Decoded-image memory is bounded by bytes, not only pixels; what the image checks say
(issue 20): a 16-bit 6300x6300 PNG costs about what an 8-bit one does (no float64 copies),
deep pixels count by their bytes against --max-pixels, --max-pixels holds for images whose
features are cached, a truncated JPEG's reason keeps its parentheses, symbolic link loops and
links out of the image folder are named."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from polycap.data.images import TooManyPixels, decode_image, expand_image_paths, load_image
from polycap.errors import BadInput

MEASURE = """
import sys
from pathlib import Path
from polycap.data.images import decode_image


def peak_kib():  # this process's own high-water mark (ru_maxrss counts the parent's at fork)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])


data = Path(sys.argv[1]).read_bytes()
before = peak_kib()
image = decode_image(data, sys.argv[1])
print(image.mode, (peak_kib() - before) // 1024)
"""


def peak_mib(path: Path) -> int:
    """Growth of the peak resident memory (MiB) of a fresh process decoding ``path``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path)], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    mode, grown = done.stdout.split()
    assert mode == "RGB"
    return int(grown)


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc")
def test_a_16_bit_6300_square_png_decodes_without_float_copies(tmp_path) -> None:
    """6300 x 6300 = 39.7 M pixels: float64 copies of it cost about 1 GB (measured 1007 MiB
    before); decoded (80 MiB), its 8-bit strips (40 MiB) and the RGB result (160 MiB) about
    280 MiB, what an 8-bit RGB image of that size costs."""
    values = np.zeros((6300, 6300), dtype=np.uint16)
    values[::7, ::5] = 60000
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    del values
    assert path.stat().st_size < 200_000  # a small file
    assert peak_mib(path) < 450


def test_deep_pixels_count_by_their_bytes(tmp_path) -> None:
    data = io.BytesIO()
    Image.fromarray(np.full((100, 100), 0.5, dtype=np.float32), mode="F").save(data, "TIFF")
    with pytest.raises(TooManyPixels, match="MiB to decode"):
        decode_image(data.getvalue(), "f.tif", limit=10_000)  # 4-byte pixels: over the bytes
    assert decode_image(data.getvalue(), "f.tif", limit=11_250).mode == "RGB"
    assert np.asarray(decode_image(data.getvalue(), "f.tif"))[0, 0, 0] == 128


def test_16_bit_strips_give_the_same_pixels_as_one_pass(tmp_path, monkeypatch) -> None:
    from polycap.data import images

    values = np.arange(300 * 7, dtype=np.uint16).reshape(300, 7) * 31
    data = io.BytesIO()
    Image.fromarray(values).save(data, "PNG")
    whole = np.asarray(decode_image(data.getvalue()))
    monkeypatch.setattr(images, "STRIP_PIXELS", 20)  # 2 rows a strip
    assert np.array_equal(np.asarray(decode_image(data.getvalue())), whole)
    expected = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
    assert np.array_equal(whole[..., 0], expected)


def _encode(tiny_clip, paths):
    from polycap.data.encoding import encode_images, load_encoder

    encoder = load_encoder(tiny_clip.name, pretrained=tiny_clip.weights)
    return encode_images(encoder, paths, progress=False)


def test_max_pixels_holds_for_cached_features(tiny_clip, tmp_path) -> None:
    from polycap.data import images

    path = tmp_path / "big.png"
    Image.new("RGB", (200, 100), (10, 200, 30)).save(path)
    first = _encode(tiny_clip, [path])
    assert not first.skipped  # encoded, and now in the feature cache
    before = images.max_pixels()
    images.set_max_pixels(10_000)
    try:
        again = _encode(tiny_clip, [path])
    finally:
        images.set_max_pixels(before)
    assert [(Path(p), "limit" in r) for p, r in again.skipped] == [(path, True)]


def test_a_truncated_jpeg_reason_keeps_its_parentheses(tiny_clip, tmp_path) -> None:
    data = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(data, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
    (reason,) = [r for _, r in _encode(tiny_clip, [path]).skipped]
    assert reason.count("(") == reason.count(")") and reason.endswith("not processed)"), reason


def test_a_symbolic_link_loop_is_named(tmp_path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.jpg").symlink_to(folder / "b.jpg")
    (folder / "b.jpg").symlink_to(folder / "a.jpg")
    with pytest.raises(BadInput, match="a.jpg is a symbolic link loop"):
        expand_image_paths([folder])
    with pytest.raises(BadInput, match="symbolic link loop"):
        expand_image_paths([folder / "a.jpg"])
    with pytest.raises(BadInput, match="symbolic link loop"):
        load_image(folder / "a.jpg")


def test_a_link_in_the_image_folder_to_outside_is_refused(tmp_path) -> None:
    from polycap.data.captions import load_captions

    secret = tmp_path / "secret"
    secret.mkdir()
    Image.new("RGB", (8, 8)).save(secret / "private.png")
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "innocent.png").symlink_to(secret / "private.png")
    Image.new("RGB", (8, 8)).save(folder / "real.png")
    records = [{"image": "real.png", "caption": "a"}, {"image": "innocent.png", "caption": "b"}]
    (folder / "captions.json").write_text(json.dumps(records))
    with pytest.raises(BadInput, match="outside the image folder.*private.png"):
        load_captions(folder / "captions.json")
    assert len(load_captions(folder / "captions.json", allow_outside=True)) == 2
