"""Image encoding with a real (tiny, locally built) open_clip model: loading, batching, cache."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TinyClip, save_tiny_clip_weights
from PIL import Image

from polycap import plugins
from polycap.builtin import encoders
from polycap.data.encoding import (
    EncodedImages,
    default_cache_dir,
    encode_images,
    load_encoder,
    parse_spec,
)
from polycap.data.images import load_image
from polycap.errors import BadInput, UnknownName
from polycap.parts import ImageEncoder


@pytest.fixture(autouse=True)
def only_builtin_encoders(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registries holding just the built-in encoder backend (no installed plugins involved)."""
    host = plugins.PluginHost(load_entry_points=False, builtins=False)
    host.add_plugin(encoders, "polycap.builtin.encoders")
    monkeypatch.setattr(plugins, "get_registries", lambda: host.registries)


@pytest.fixture
def encoder(tiny_clip: TinyClip) -> ImageEncoder:
    return load_encoder(tiny_clip.name, pretrained=tiny_clip.weights)


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    """Six distinct small images (different sizes and formats)."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    paths = []
    for index in range(6):
        size = (40 + 4 * index, 36)
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        path = folder / f"img{index}.{'jpg' if index % 2 else 'png'}"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def broken(tmp_path: Path, images: list[Path]) -> dict[str, Path]:
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(np.random.default_rng(1).bytes(3000))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(images[0].read_bytes()[:1500])
    return {"corrupt": corrupt, "truncated": truncated, "missing": tmp_path / "missing.png"}


def count_batches(encoder: ImageEncoder, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the batch size of every call the real model gets."""
    sizes: list[int] = []
    original = encoder.encode_images

    def counting(pixels: torch.Tensor) -> torch.Tensor:
        sizes.append(len(pixels))
        return original(pixels)

    monkeypatch.setattr(encoder, "encode_images", counting)
    return sizes


# -- loading --------------------------------------------------------------------------------


def test_load_encoder_from_local_weights(tiny_clip: TinyClip, encoder: ImageEncoder) -> None:
    assert encoder.name == tiny_clip.name
    assert encoder.embed_dim == 32
    assert encoder.device == "cpu"
    assert encoder.cache_key is not None and encoder.cache_key.startswith(
        f"open_clip:{tiny_clip.name}:sha256-"
    )
    assert encoder.backend == "open_clip" and encoder.spec == tiny_clip.name
    assert encoder.info()["name"] == tiny_clip.name
    again = load_encoder(f"open_clip:{tiny_clip.name}", pretrained=str(tiny_clip.weights))
    assert again.cache_key == encoder.cache_key
    pixels = encoder.preprocess(Image.new("RGB", (50, 40), "red"))
    assert pixels.shape == (3, 32, 32)
    features = encoder.encode_images(pixels[None])
    assert features.shape == (1, 32) and features.dtype == torch.float32
    torch.testing.assert_close(features, again.encode_images(pixels[None]))


def test_encoder_spec_is_the_one_record_saved_and_reopened(encoder: ImageEncoder) -> None:
    from polycap.parts import EncoderSpec

    spec = encoder.encoder_spec
    assert EncoderSpec.from_json(spec.to_json()) == spec
    assert "cache_key" not in spec.to_json(cache_key=False)
    reopened = spec.load(plugins.get_registries())
    assert type(reopened) is type(encoder) and reopened.encoder_spec == spec
    with pytest.raises(BadInput, match="without a 'name'"):
        EncoderSpec.from_json({"backend": "open_clip"})


def test_weights_file_content_decides_cache_key(tiny_clip: TinyClip, tmp_path: Path) -> None:
    copy = shutil.copy(tiny_clip.weights, tmp_path / "copy.pt")
    other = save_tiny_clip_weights(tmp_path / "other.pt", seed=1)
    key = load_encoder(tiny_clip.name, pretrained=tiny_clip.weights).cache_key
    assert load_encoder(tiny_clip.name, pretrained=copy).cache_key == key
    assert load_encoder(tiny_clip.name, pretrained=other).cache_key != key


def test_random_weights_are_never_cached(
    tiny_clip: TinyClip, images: list[Path], tmp_path: Path
) -> None:
    random_encoder = load_encoder(tiny_clip.name, pretrained=None)
    assert random_encoder.cache_key is None
    cache = tmp_path / "cache"
    result = encode_images(random_encoder, images[:2], cache_dir=cache, progress=False)
    assert len(result) == 2
    assert not cache.exists()


def test_unknown_model_name_suggests() -> None:
    with pytest.raises(BadInput) as error:
        load_encoder("ViT-B-23", pretrained=None)
    message = str(error.value)
    assert message.startswith("No open_clip model 'ViT-B-23'. Did you mean 'ViT-B-32'")
    assert "\n" not in message and len(message) < 300


def test_builtin_encoder_is_registered() -> None:
    registries = plugins.PluginHost(load_entry_points=False).registries
    assert "open_clip" in registries.encoders


def test_parse_spec() -> None:
    assert parse_spec("ViT-B-32") == ("open_clip", "ViT-B-32")
    assert parse_spec("open_clip:ViT-L-14") == ("open_clip", "ViT-L-14")
    assert parse_spec("hf-hub:laion/CLIP-ViT-B-32") == ("open_clip", "hf-hub:laion/CLIP-ViT-B-32")
    assert parse_spec("local-dir:/models/clip") == ("open_clip", "local-dir:/models/clip")


def test_unknown_backend() -> None:
    with pytest.raises(UnknownName, match="No encoder 'open-clip'. Did you mean 'open_clip'"):
        load_encoder("open-clip:ViT-B-32")


def test_bad_pretrained(tiny_clip: TinyClip, tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="has no pretrained weights 'openia'. Did you mean 'openai'"):
        load_encoder("ViT-B-32", pretrained="openia")
    with pytest.raises(BadInput, match="no such weights file"):
        load_encoder(tiny_clip.name, pretrained=tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(BadInput, match="junk.pt: a text file, not weights"):
        load_encoder(tiny_clip.name, pretrained=junk)
    junk.write_bytes(b"\x00\x01 not a checkpoint")
    with pytest.raises(BadInput, match=f"cannot load open_clip model '{tiny_clip.name}'"):
        load_encoder(tiny_clip.name, pretrained=junk)


def test_encode_texts(encoder: ImageEncoder) -> None:
    features = encoder.encode_texts(["a red circle", "two blue squares", "赤い丸"], batch_size=2)
    assert features.shape == (3, 32) and features.dtype == torch.float32
    assert not torch.allclose(features[0], features[1])


# -- encoding many images -----------------------------------------------------------------


def test_second_run_encodes_nothing(
    encoder: ImageEncoder, images: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches = count_batches(encoder, monkeypatch)
    cache = tmp_path / "cache"
    first = encode_images(encoder, images, batch_size=4, cache_dir=cache, progress=False)
    assert batches == [4, 2]
    assert (first.encoded, first.from_cache) == (6, 0)
    assert first.paths == images and first.features.shape == (6, 32)

    batches.clear()
    second = encode_images(encoder, images, batch_size=4, cache_dir=cache, progress=False)
    assert batches == []
    assert (second.encoded, second.from_cache) == (0, 6)
    assert second.paths == images
    torch.testing.assert_close(second.features, first.features)
    assert not [p for p in cache.rglob("*") if p.name.endswith(".tmp")]


def test_cache_is_keyed_by_content_not_name(
    encoder: ImageEncoder, images: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    first = encode_images(encoder, images[:2], cache_dir=cache, progress=False)
    renamed = Path(shutil.copy(images[0], tmp_path / "renamed.png"))
    changed = tmp_path / "changed.png"
    Image.open(images[1]).rotate(90).save(changed)
    batches = count_batches(encoder, monkeypatch)
    result = encode_images(encoder, [renamed, changed], cache_dir=cache, progress=False)
    assert batches == [1]  # only the changed image
    torch.testing.assert_close(result.features[0], first.features[0])


def test_other_weights_do_not_share_cache(
    tiny_clip: TinyClip, images: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    encode_images(
        load_encoder(tiny_clip.name, pretrained=tiny_clip.weights),
        images,
        cache_dir=cache,
        progress=False,
    )
    other = load_encoder(tiny_clip.name, pretrained=save_tiny_clip_weights(tmp_path / "o.pt", 1))
    batches = count_batches(other, monkeypatch)
    encode_images(other, images, cache_dir=cache, progress=False)
    assert sum(batches) == len(images)


def test_damaged_cache_entry_is_recomputed(
    encoder: ImageEncoder, images: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    first = encode_images(encoder, images[:3], cache_dir=cache, progress=False)
    entry = sorted(cache.rglob("*.npy"))[0]
    entry.write_bytes(b"garbage")
    batches = count_batches(encoder, monkeypatch)
    again = encode_images(encoder, images[:3], cache_dir=cache, progress=False)
    assert batches == [1]
    torch.testing.assert_close(again.features, first.features)


def test_batches_equal_one_at_a_time(encoder: ImageEncoder, images: list[Path]) -> None:
    batched = encode_images(encoder, images, batch_size=4, use_cache=False, progress=False)
    single = encode_images(
        encoder, images, batch_size=1, use_cache=False, progress=False, workers=0
    )
    torch.testing.assert_close(batched.features, single.features, atol=1e-5, rtol=1e-4)
    direct = torch.cat(
        [encoder.encode_images(encoder.preprocess(load_image(p))[None]) for p in images]
    )
    torch.testing.assert_close(batched.features, direct, atol=1e-5, rtol=1e-4)


def test_bad_images_skipped_and_counted(
    encoder: ImageEncoder,
    images: list[Path],
    broken: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    batches = count_batches(encoder, monkeypatch)
    paths = [
        images[0],
        broken["corrupt"],
        images[1],
        broken["truncated"],
        images[0],
        broken["missing"],
        images[2],
    ]
    result = encode_images(encoder, paths, batch_size=64, use_cache=False, progress=False)
    assert isinstance(result, EncodedImages)
    assert result.paths == images[:3]  # input order, duplicates collapsed, bad ones left out
    assert batches == [3]
    assert [path for path, _ in result.skipped] == [
        broken["corrupt"],
        broken["truncated"],
        broken["missing"],
    ]
    assert dict(result.skipped)[broken["missing"]] == "no such file"
    assert all(reason for _, reason in result.skipped)
    assert result.features.shape == (3, 32)
    assert result.features.abs().sum(dim=1).min() > 0  # no zero rows
    alone = encode_images(encoder, images[:3], use_cache=False, progress=False)
    torch.testing.assert_close(result.features, alone.features, atol=1e-5, rtol=1e-4)


def test_progress_bar_and_default_cache_dir(
    encoder: ImageEncoder, images: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POLYCAP_CACHE_DIR", str(tmp_path / "env-cache"))
    assert default_cache_dir() == tmp_path / "env-cache"
    result = encode_images(encoder, images[:2], batch_size=1, progress=True, workers=2)
    assert len(result) == 2
    assert len(list((tmp_path / "env-cache").rglob("*.npy"))) == 2
    monkeypatch.delenv("POLYCAP_CACHE_DIR")
    assert default_cache_dir() == Path(os.path.expanduser("~/.cache/polycap/features"))


def test_empty_input(encoder: ImageEncoder) -> None:
    result = encode_images(encoder, [], progress=False)
    assert result.paths == [] and result.features.shape == (0, 32)
