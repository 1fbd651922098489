"""The Japanese pack: the conformance suite every pack runs, then Japanese specifics (NFKC and
spacing, rinna's tokenizer quirks, MeCab words, the demo) on tiny local models, no downloads."""

from __future__ import annotations

import importlib.metadata
import random
from pathlib import Path

import polycap_ja
import pytest
from polycap_ja import JAPANESE

from polycap.errors import BadInput
from polycap.offline import tiny
from polycap.offline.synthetic import score_captions
from polycap.plugins import PluginHost
from polycap.testing import LanguagePackConformance


class TestJapaneseConformance(LanguagePackConformance):
    code = "ja"
    distribution = "polycap-ja"
    tokenizer_class = "T5Tokenizer"
    sample_texts = (
        "赤い帽子をかぶった女の子が公園で遊んでいる。",
        "テーブルの上にコーヒーとケーキが２つ置かれている",
        "ＡＢＣと書かれた看板の前に 犬が います",
        "ｶﾀｶﾅの看板と、青い車が3台。",
        "iPhone 15 で撮った 夕焼けの写真",
    )
    eval_cases = (
        ("赤い丸が二つあります", ["赤い", "丸", "が", "二", "つ", "あり", "ます"]),
        # UniDic short units: ひとつ -> ひと + つ, 三角形 -> 三角 + 形
        ("青い 三角形が ひとつ。", ["青い", "三角", "形", "が", "ひと", "つ", "。"]),
        ("犬が２匹います", ["犬", "が", "2", "匹", "い", "ます"]),
    )


TEXTS = [
    JAPANESE.demo.describe(colour, shape, count, random.Random(seed))
    for seed, (colour, shape, count) in enumerate(
        (c, s, n)
        for c in ("red", "green", "blue", "yellow")
        for s in ("circle", "square", "triangle")
        for n in (1, 2, 3)
        for _ in range(4)
    )
]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("ja-tokenizer")
    return JAPANESE.build_tiny_tokenizer(TEXTS, directory)


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir: Path):
    return JAPANESE.load_tokenizer(str(tokenizer_dir))


def test_entry_point_is_installed_and_registers_ja():
    entry_points = importlib.metadata.entry_points(group="polycap")
    assert any(ep.name == "ja" and ep.value == "polycap_ja" for ep in entry_points)
    host = PluginHost(load_entry_points=False, builtins=False)
    host.add_plugin(polycap_ja, "ja")
    assert host.registries.languages.get("ja") is JAPANESE


def test_entry_point_loads_through_the_plugin_manager():
    host = PluginHost(load_entry_points=True, builtins=False)
    assert host.infos["ja"].error is None
    assert host.infos["ja"].distribution == "polycap-ja"
    assert "register_languages" in host.infos["ja"].hooks


def test_pack_describes_itself():
    assert JAPANESE.code == "ja"
    assert JAPANESE.default_lm == "rinna/japanese-gpt2-medium"
    assert JAPANESE.tokenizer_kind == "sentencepiece"
    assert "fugashi" in JAPANESE.segmenter and "unidic-lite" in JAPANESE.segmenter


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("赤い丸が２つあります", "赤い丸が2つあります"),  # full-width digit -> ASCII
        ("ＡＢＣの写真", "abcの写真"),  # full-width Latin -> ASCII, lower-cased
        ("赤い 丸が　ふたつ", "赤い丸がふたつ"),  # spaces (also U+3000) between Japanese go
        ("  iPhone 15 の 写真 ", "iphone 15 の写真"),  # spaces next to Latin/digits stay
        ("ｶﾀｶﾅ", "カタカナ"),  # half-width katakana -> full-width
    ],
)
def test_normalize(raw: str, normal: str):
    assert JAPANESE.normalize(raw) == normal


def test_eval_tokenize_segments_words_with_mecab():
    words = JAPANESE.eval_tokenize("赤い丸が二つあります")
    assert "赤い" in words and "丸" in words
    assert "".join(words) == "赤い丸が二つあります"
    assert JAPANESE.eval_tokenize("赤い 丸") == JAPANESE.eval_tokenize("赤い丸")


def test_loader_gives_rinna_style_t5_tokenizer(tokenizer):
    from transformers import T5Tokenizer

    assert isinstance(tokenizer, T5Tokenizer)
    assert tokenizer.do_lower_case is True
    assert tokenizer.eos_token == "</s>" and tokenizer.pad_token == "[PAD]"
    # rinna's ids: <unk> 0, <s> 1, </s> 2, [PAD] 3
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id) == (0, 1)
    assert JAPANESE.end_token_id(tokenizer) == 2
    assert JAPANESE.pad_token_id(tokenizer) == 3


def test_caption_round_trip(tokenizer):
    for text in (
        "赤い丸が2つあります",
        "暗い背景に青い三角形がひとつ描かれている",
        "２つの緑の四角",
    ):
        ids = JAPANESE.encode_caption(tokenizer, text)
        assert ids[-1] == JAPANESE.end_token_id(tokenizer)
        assert ids.count(JAPANESE.end_token_id(tokenizer)) == 1
        decoded = JAPANESE.decode_caption(tokenizer, ids)
        assert decoded == JAPANESE.normalize(text)
        assert "\u2581" not in decoded and "</s>" not in decoded


def test_unknown_characters_do_not_end_the_caption(tokenizer):
    """transformers 5 maps unknown pieces to id 2 (rinna's </s>) unless the loader fixes it."""
    ids = JAPANESE.encode_caption(tokenizer, "赤い丸と😀と鳥")
    end = JAPANESE.end_token_id(tokenizer)
    assert ids.count(end) == 1 and ids[-1] == end
    assert tokenizer.unk_token_id in ids


def test_tokenizer_lower_cases_like_rinna(tokenizer):
    encode = tokenizer.encode
    assert encode("ABC赤", add_special_tokens=False) == encode("abc赤", add_special_tokens=False)


def test_decode_stops_at_end_token(tokenizer):
    first = JAPANESE.encode_caption(tokenizer, "赤い丸がひとつ")
    second = JAPANESE.encode_caption(tokenizer, "青い四角がふたつ")
    assert JAPANESE.decode_caption(tokenizer, first + second) == "赤い丸がひとつ"
    specials = [tokenizer.pad_token_id, tokenizer.bos_token_id]
    assert JAPANESE.decode_caption(tokenizer, specials + first) == "赤い丸がひとつ"


def test_saved_tokenizer_loads_back_the_same(tokenizer, tmp_path: Path):
    """A checkpoint saves the tokenizer with save_pretrained; the pack must load it the same."""
    tokenizer.save_pretrained(str(tmp_path))
    again = JAPANESE.load_tokenizer(str(tmp_path))
    for text in ("赤い丸が2つあります", "ABC 😀 の丸"):
        assert again.encode(text) == tokenizer.encode(text)


def test_decoder_loads_through_the_pack(tokenizer, tmp_path: Path):
    import torch

    directory = tiny.build_gpt2(tokenizer, tmp_path / "gpt2")
    model = JAPANESE.load_decoder(str(directory))
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.eos_token_id == JAPANESE.end_token_id(tokenizer)
    ids = torch.tensor([JAPANESE.encode_caption(tokenizer, "赤い丸が2つあります")])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer))
    # the directory is a complete "hub repository": the tokenizer loads from it too
    assert JAPANESE.load_tokenizer(str(directory)).encode("赤い丸") == tokenizer.encode("赤い丸")


def test_missing_model_is_one_clear_error(tmp_path: Path):
    with pytest.raises(BadInput, match="cannot load tokenizer"):
        JAPANESE.load_tokenizer(str(tmp_path / "nowhere"))


def test_demo_captions_name_their_colour_and_shape():
    rng = random.Random(0)
    truths, captions = {}, {}
    for i, (colour, shape) in enumerate(
        (c, s) for c in JAPANESE.demo.colour_terms for s in JAPANESE.demo.shape_terms
    ):
        name = f"{i}.png"
        truths[name] = (colour, shape, 1 + i % 3)
        captions[name] = JAPANESE.demo.describe(colour, shape, 1 + i % 3, rng)
    assert score_captions(JAPANESE, captions, truths)["pair_accuracy"] == 1.0
    wrong = {name: "赤い丸と青い丸" for name in truths}  # names two colours: never right
    assert score_captions(JAPANESE, wrong, truths)["colour_accuracy"] == 0.0
