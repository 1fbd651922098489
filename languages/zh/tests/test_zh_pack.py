"""polycap-zh: conformance suite, Chinese decoding (no spaces, no specials), segmenters, demo."""

from __future__ import annotations

import random

import pytest

from polycap.testing import LanguagePackConformance, load_pack


class TestChineseConformance(LanguagePackConformance):
    code = "zh"
    distribution = "polycap-zh"
    tokenizer_class = "BertTokenizer"
    sample_texts = (
        "一只猫坐在窗台上晒太阳。",
        "两个孩子在公园里放风筝，天空很蓝！",
        "桌子上有一杯咖啡和一本书",
        "一个男人拿着 iphone 11 手机。",
        "海边有3个人在散步：远处还有2条船（很小）？",
    )
    eval_cases = (
        ("一只猫坐在窗台上晒太阳。", ["一只", "猫", "坐在", "窗台上", "晒太阳", "。"]),
        (
            "两个孩子在公园里放风筝，天空很蓝。",
            ["两个", "孩子", "在", "公园", "里", "放风筝", ",", "天空", "很", "蓝", "。"],
        ),
        (
            "深色背景上有一个黄色的三角形",
            ["深色", "背景", "上", "有", "一个", "黄色", "的", "三角形"],
        ),
        ("一个男人拿着 iPhone 手机", ["一个", "男人", "拿", "着", "iphone", "手机"]),
    )


@pytest.fixture(scope="module")
def pack():
    return load_pack("zh", "polycap-zh")


@pytest.fixture(scope="module")
def tokenizer(pack, tmp_path_factory):
    from polycap.testing import training_texts

    texts = training_texts(pack, TestChineseConformance.sample_texts)
    return pack.load_tokenizer(str(pack.build_tiny_tokenizer(texts, tmp_path_factory.mktemp("t"))))


def test_full_width_punctuation_kept_and_no_spaces(pack) -> None:
    assert pack.normalize("两个 红色的 圆形 ， 在背景上 。") == "两个红色的圆形，在背景上。"
    assert pack.normalize("拿着  iphone   11 手机") == "拿着iphone 11手机"
    assert pack.normalize("（ＡＢＣ）") == "（ＡＢＣ）"  # NFC, not NFKC: full-width forms stay


def test_decoding_has_no_spaces_or_special_tokens(pack, tokenizer) -> None:
    caption = "图中有两个绿色的正方形，在深色背景上。"
    ids = pack.encode_caption(tokenizer, caption)
    assert ids[-1] == tokenizer.sep_token_id
    noisy = [
        tokenizer.cls_token_id,
        *ids[:3],
        tokenizer.unk_token_id,
        tokenizer.pad_token_id,
        *ids[3:],
        tokenizer.mask_token_id,
        *ids,
    ]
    decoded = pack.decode_caption(tokenizer, noisy)
    assert decoded == caption
    assert " " not in decoded
    for special in ("[CLS]", "[SEP]", "[UNK]", "[PAD]", "[MASK]"):
        assert special not in decoded
    assert pack.decode_caption(tokenizer, [tokenizer.sep_token_id, *ids]) == ""


def test_wordpieces_and_latin_words(pack, tmp_path) -> None:
    from transformers import BertTokenizer

    vocab = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        "拿",
        "着",
        "手",
        "机",
        "iphone",
        "11",
        "t",
        "-",
        "shirt",
        "##s",
        "，",
    ]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer.from_pretrained(str(tmp_path), do_lower_case=True)
    ids = pack.encode_caption(tokenizer, "拿着 iPhone 11 手机，t-shirts")
    assert pack.decode_caption(tokenizer, ids) == "拿着iphone 11手机，t-shirts"


def test_segmenters(pack) -> None:
    text = "两个红色的圆形，拿着iPhone 11。"
    assert pack.segmenter == "jieba"
    assert pack.eval_tokenize(text) == pack.eval_tokenize_jieba(text)
    chars = pack.with_segmenter("characters")
    assert chars.segmenter == "characters" and pack.segmenter == "jieba"
    assert chars.eval_tokenize(text) == [
        "两",
        "个",
        "红",
        "色",
        "的",
        "圆",
        "形",
        ",",
        "拿",
        "着",
        "iphone",
        "11",
        "。",
    ]
    assert chars.eval_tokenize("") == []
    from polycap.errors import UnknownName

    with pytest.raises(UnknownName, match="characters"):
        pack.with_segmenter("pkuseg")


def test_demo_captions(pack) -> None:
    rng = random.Random(0)
    captions = {pack.demo.describe("red", "circle", n, rng) for n in (1, 2, 3) for _ in range(30)}
    assert "一个红色的圆形" in captions and "两个红色圆形" in captions
    assert "一张图片，上面有三个红色的圆形。" in captions
    assert all(" " not in caption for caption in captions)


@pytest.mark.slow
def test_demo_learns_chinese(tmp_path) -> None:
    from polycap.demo.runner import DemoOptions, run_demo

    result = run_demo(DemoOptions(language="zh", workdir=tmp_path, progress=False, compare=False))
    assert result.scores["colour_accuracy"] >= 0.95, result.scores
    assert result.scores["shape_accuracy"] >= 0.70, result.scores
    assert all(" " not in caption and "[" not in caption for caption in result.captions.values())
