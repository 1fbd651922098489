"""The ``hf`` encoder backend on tiny CLIP / SigLIP / Chinese-CLIP models built and saved here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from polycap.data.encoding import encode_images, load_encoder
from polycap.parts import EncoderSpec
from polycap.plugins import get_registries

TEXTS = ["a red circle", "two blue squares", "a green triangle on a dark background"]
COLOURS = [(200, 30, 30), (30, 30, 200), (30, 200, 30)]
TOWER = {"num_hidden_layers": 1, "num_attention_heads": 2, "hidden_size": 32}
TOWER["intermediate_size"] = 64
VISION = {**TOWER, "image_size": 32, "patch_size": 8}


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLYCAP_CACHE_DIR", str(tmp_path / "cache"))


def build(kind: str, folder: Path) -> Path:
    """A tiny random model of ``kind`` with its image processor and tokenizer, saved like a
    hub repository."""
    import transformers as tf

    from polycap.offline.tiny import build_tokenizer

    texts = TEXTS * 20
    tokenizer = tf.AutoTokenizer.from_pretrained(
        str(build_tokenizer("char" if kind == "chinese-clip" else "bpe", texts, folder))
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.save_pretrained(str(folder))
    ends = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    ends = {key: value for key, value in ends.items() if value is not None}
    text = {**TOWER, **ends, "vocab_size": len(tokenizer), "max_position_embeddings": 16}
    text["pad_token_id"] = tokenizer.pad_token_id
    torch.manual_seed(0)
    if kind == "clip":
        config = tf.CLIPConfig(text_config=text, vision_config=VISION, projection_dim=16)
        model, processor = (
            tf.CLIPModel(config),
            tf.CLIPImageProcessor(
                size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
            ),
        )
    elif kind == "siglip":
        config = tf.SiglipConfig(text_config=text, vision_config=VISION)
        model = tf.SiglipModel(config)
        processor = tf.SiglipImageProcessor(size={"height": 32, "width": 32})
    else:
        config = tf.ChineseCLIPConfig(text_config=text, vision_config=VISION, projection_dim=16)
        model, processor = (
            tf.ChineseCLIPModel(config),
            tf.ChineseCLIPImageProcessor(
                size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
            ),
        )
    model.save_pretrained(str(folder))
    processor.save_pretrained(str(folder))
    return folder


def pictures(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, colour in enumerate(COLOURS):
        image = Image.new("RGB", (48, 40), (10, 10, 10))
        image.paste(colour, (8 + 4 * i, 8, 30, 30))
        paths.append(directory / f"{i}.png")
        image.save(paths[-1])
    return paths


@pytest.mark.parametrize("kind", ["clip", "siglip", "chinese-clip"])
def test_features_are_the_models_own_embeddings(kind: str, tmp_path: Path) -> None:
    folder = build(kind, tmp_path / kind)
    encoder = load_encoder(f"hf:{folder}", pretrained=None)
    assert encoder.backend == "hf" and encoder.spec == f"hf:{folder.resolve()}"
    assert encoder.embed_dim == (32 if kind == "siglip" else 16)
    images = [Image.open(p).convert("RGB") for p in pictures(tmp_path / "images")]
    pixels = torch.stack([encoder.preprocess(image) for image in images])
    features = encoder.encode_images(pixels)
    texts = encoder.encode_texts(TEXTS)
    assert features.shape == (3, encoder.embed_dim) and texts.shape == (3, encoder.embed_dim)
    # the same model's full forward (CLIP-style outputs: L2-normalised embeddings)
    padding = "max_length" if kind == "siglip" else True
    tokens = encoder._tokenizer(
        TEXTS, padding=padding, max_length=16, truncation=True, return_tensors="pt"
    )
    with torch.no_grad():
        out = encoder.clip(**tokens, pixel_values=pixels)
    assert torch.allclose(F.normalize(features, dim=-1), out.image_embeds, atol=1e-5)
    assert torch.allclose(F.normalize(texts, dim=-1), out.text_embeds, atol=1e-5)
    assert not torch.allclose(features[0], features[1])  # images differ, features differ


def test_batched_encoding_caches_by_weights_and_reloads_from_its_record(tmp_path: Path) -> None:
    folder = build("clip", tmp_path / "clip")
    encoder = load_encoder(f"hf:{folder}", pretrained=None)
    assert encoder.cache_key is not None and "sha256-" in encoder.cache_key
    paths = pictures(tmp_path / "images")
    first = encode_images(encoder, paths, batch_size=2)
    again = encode_images(encoder, paths, batch_size=2)
    assert first.encoded == 3 and again.from_cache == 3
    assert torch.equal(first.features, again.features)
    spec = EncoderSpec.from_json(json.loads(json.dumps(encoder.encoder_spec.to_json())))
    assert spec.load(get_registries()).cache_key == encoder.cache_key


def test_train_and_caption_with_an_hf_encoder(tmp_path: Path, capsys) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))
    from cli_runner import run_cli

    from polycap.builtin.english import ENGLISH
    from polycap.demo.runner import build_tiny_models
    from polycap.offline.synthetic import make_synthetic_set

    folder = build("clip", tmp_path / "clip")
    split = make_synthetic_set(ENGLISH, tmp_path / "data", 16, seed=1)
    records = json.loads(split.train_file.read_text())
    lm = build_tiny_models(ENGLISH, [r["caption"] for r in records], tmp_path, seed=0)["lm"]
    args = ["train", "--lang", "en", "--data", str(split.train_file), "-o", str(tmp_path / "run")]
    args += ["--encoder", f"hf:{folder}", "--pretrained", "none", "--lm", lm, "--json"]
    args += ["--prefix-length", "2", "--epochs", "1", "--batch-size", "8", "--device", "cpu"]
    result = run_cli(args, capsys)
    assert result.code == 0, result.err
    model = Path(json.loads(result.out)["model"])
    assert json.loads((model / "polycap.json").read_text())["encoder"]["backend"] == "hf"
    image = next((split.train_file.parent / "images").glob("*.png"))
    shown = run_cli(["caption", str(image), "--model", str(model), "--json"], capsys)
    assert shown.code == 0, shown.err
    captioned = json.loads(shown.out)["captions"]
    assert captioned[0]["image"].endswith(image.name) and captioned[0]["captions"]


def test_index_and_text_retrieval_with_the_text_tower(tmp_path: Path, capsys) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))
    from cli_runner import run_cli

    folder = build("siglip", tmp_path / "siglip")
    paths = pictures(tmp_path / "images")
    captions = tmp_path / "captions.jsonl"
    lines = [json.dumps({"image": f"images/{p.name}", "caption": t}) for p, t in zip(paths, TEXTS)]
    captions.write_text("\n".join(lines) + "\n")
    encoder = ["--encoder", f"hf:{folder}", "--device", "cpu"]
    built = run_cli(
        ["index", str(captions), "--lang", "en", "-o", str(tmp_path / "bank"), *encoder], capsys
    )
    assert built.code == 0, built.err
    found = run_cli(
        ["retrieve", str(paths[0]), "--bank", str(tmp_path / "bank"), "--mode", "text", "--json"],
        capsys,
    )
    assert found.code == 0, found.err
    assert json.loads((tmp_path / "bank" / "meta.json").read_text())["encoder"]["backend"] == "hf"
    assert any(text in found.out for text in TEXTS)
