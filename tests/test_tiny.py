"""Tiny offline models, loaded back through the libraries' own loaders."""

from __future__ import annotations

from pathlib import Path

import pytest

from polycap.builtin.english import ENGLISH
from polycap.offline import tiny

TEXTS = {
    "bpe": ["there are two red circles", "a single blue square", "three yellow triangles"] * 10,
    "sentencepiece": ["赤い丸が2つあります", "青い三角形がひとつ", "黄色い四角が三つ"] * 10,
    "char": ["两个红色的圆形", "一个蓝色的正方形", "三个黄色三角形"] * 10,
}
PROBES = {
    "bpe": "two yellow squares",
    "sentencepiece": "青い丸が2つあります",
    "char": "三个红色的正方形",
}


@pytest.mark.parametrize("kind", tiny.TOKENIZER_KINDS)
def test_tokenizer_round_trip_through_auto_tokenizer(kind: str, tmp_path: Path):
    from transformers import AutoTokenizer

    directory = tiny.build_tokenizer(kind, TEXTS[kind], tmp_path / kind)
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    ids = tokenizer(PROBES[kind], add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    if kind == "char":  # BertTokenizer decodes with spaces between characters
        decoded = decoded.replace(" ", "")
    assert decoded.strip() == PROBES[kind]
    assert len(tokenizer) < 1000


def test_tokenizer_special_tokens(tmp_path: Path):
    from transformers import AutoTokenizer

    bpe = AutoTokenizer.from_pretrained(tiny.build_tokenizer("bpe", TEXTS["bpe"], tmp_path / "b"))
    assert bpe.eos_token == bpe.bos_token == bpe.unk_token == "<|endoftext|>"
    assert bpe.pad_token is None  # like GPT-2
    sp = AutoTokenizer.from_pretrained(
        tiny.build_tokenizer("sentencepiece", TEXTS["sentencepiece"], tmp_path / "s")
    )
    assert type(sp).__name__ == "T5Tokenizer"
    ids = [sp.convert_tokens_to_ids(t) for t in tiny.RINNA_SPECIALS]
    assert ids == list(range(7))  # rinna's layout: <unk> <s> </s> [PAD] [CLS] [SEP] [MASK]
    assert (sp.eos_token, sp.pad_token, sp.cls_token) == ("</s>", "[PAD]", "[CLS]")
    char = AutoTokenizer.from_pretrained(tiny.build_tokenizer("char", TEXTS["char"], tmp_path))
    assert type(char).__name__.startswith("BertTokenizer")
    specials = [char.pad_token_id, char.unk_token_id, char.cls_token_id, char.sep_token_id]
    assert specials == [0, 1, 2, 3]


def test_tokenizers_are_deterministic(tmp_path: Path):
    for kind, main_file in (("bpe", "tokenizer.json"), ("sentencepiece", "spiece.model")):
        first = tiny.build_tokenizer(kind, TEXTS[kind], tmp_path / f"{kind}1") / main_file
        second = tiny.build_tokenizer(kind, TEXTS[kind], tmp_path / f"{kind}2") / main_file
        assert first.read_bytes() == second.read_bytes()


def test_tokenizer_bad_arguments(tmp_path: Path):
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        tiny.build_tokenizer("wordpiece", ["a"], tmp_path)
    with pytest.raises(ValueError, match="non-empty"):
        tiny.build_tokenizer("bpe", ["", "  "], tmp_path)


def test_gpt2_loads_through_the_pack(tmp_path: Path):
    import torch

    tiny.build_tokenizer("bpe", TEXTS["bpe"], tmp_path / "t")
    tokenizer = ENGLISH.load_tokenizer(str(tmp_path / "t"))
    directory = tiny.build_gpt2(tokenizer, tmp_path / "lm", n_layer=1)
    assert (directory / "model.safetensors").is_file()
    model = ENGLISH.load_decoder(str(directory))
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.n_layer == 1 and model.config.n_embd == 64
    assert model.config.eos_token_id == tokenizer.eos_token_id
    again = tiny.build_gpt2(str(tmp_path / "t"), tmp_path / "lm2", n_layer=1)  # path works too
    weights = ENGLISH.load_decoder(str(again)).state_dict()
    assert all(torch.equal(value, weights[key]) for key, value in model.state_dict().items())
    assert ENGLISH.load_tokenizer(str(directory)).get_vocab() == tokenizer.get_vocab()


def test_clip_loads_with_open_clip(tmp_path: Path):
    import open_clip
    import torch
    from PIL import Image

    name, weights = tiny.build_clip(tmp_path)
    assert name == tiny.TINY_CLIP_NAME and weights.is_file()
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=str(weights))
    image = preprocess(Image.new("RGB", (128, 128), (200, 30, 30))).unsqueeze(0)
    size = tiny.TINY_CLIP_CONFIG["vision_cfg"]["image_size"]
    assert image.shape == (1, 3, size, size)
    with torch.no_grad():
        features = model.encode_image(image)
    assert features.shape == (1, tiny.TINY_CLIP_CONFIG["embed_dim"])
    saved = torch.load(weights, weights_only=True)
    assert all(torch.equal(value, saved[key]) for key, value in model.state_dict().items())


def test_clip_can_be_built_twice(tmp_path: Path):
    import torch

    name, first = tiny.build_clip(tmp_path / "a", seed=0)
    name_again, second = tiny.build_clip(tmp_path / "b", seed=0)
    _, other = tiny.build_clip(tmp_path / "a", seed=1)
    assert name == name_again
    a, b, c = (torch.load(path, weights_only=True) for path in (first, second, other))
    assert all(torch.equal(a[key], b[key]) for key in a)  # same seed, same weights
    assert not torch.equal(a["visual.conv1.weight"], c["visual.conv1.weight"])
    assert tiny.register_tiny_clip_config() == tiny.TINY_CLIP_NAME
