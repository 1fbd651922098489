"""polycap-ru: conformance suite, Russian specifics (ё, agreement, end token), the demo."""

from __future__ import annotations

import random

import pytest

from polycap.testing import LanguagePackConformance, load_pack


class TestRussianConformance(LanguagePackConformance):
    code = "ru"
    distribution = "polycap-ru"
    tokenizer_class = "GPT2Tokenizer"
    sample_texts = (
        "Кошка сидит на подоконнике и смотрит в окно.",
        "Два мальчика играют в футбол на зелёном поле!",
        "Ёжик несёт яблоко — «смотри, какой ёжик»",
        "Красный автобус стоит у остановки, рядом 3 человека.",
        "Ещё  одна   жёлтая машина\tна мосту",
    )
    eval_cases = (
        ("Ёжик несёт ЯБЛОКО.", ["ежик", "несет", "яблоко", "."]),
        ("Жёлто-зелёный «трамвай»!", ["желто-зеленый", "«", "трамвай", "»", "!"]),
        ("  два   красных круга ", ["два", "красных", "круга"]),
        ("Желтый круг, 3 квадрата", ["желтый", "круг", ",", "3", "квадрата"]),
    )


@pytest.fixture(scope="module")
def pack():
    return load_pack("ru", "polycap-ru")


def test_yo_kept_in_captions_folded_in_evaluation(pack) -> None:
    decomposed = "е\u0308лка"  # е + combining diaeresis
    assert pack.normalize(decomposed) == "ёлка"
    assert pack.normalize("Жёлтый  круг ") == "Жёлтый круг"
    assert pack.eval_tokenize("жёлтый круг") == pack.eval_tokenize("желтый круг")


def test_end_token_is_rugpt_eos(pack, tmp_path) -> None:
    from polycap_ru.pack import build_rugpt_style_tokenizer

    tokenizer = pack.load_tokenizer(str(build_rugpt_style_tokenizer(["два круга"] * 3, tmp_path)))
    assert type(tokenizer).__name__ == "GPT2Tokenizer"
    assert [tokenizer.convert_ids_to_tokens(i) for i in range(5)] == [
        "<pad>",
        "<s>",
        "</s>",
        "<unk>",
        "<mask>",
    ]
    assert pack.end_token_id(tokenizer) == 2
    assert pack.pad_token_id(tokenizer) == 0
    assert pack.encode_caption(tokenizer, "два круга")[-1] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "merges.txt",
        "special_tokens_map.json",
        "tokenizer_config.json",
        "vocab.json",
    ]


@pytest.mark.parametrize(
    ("count", "expected"),
    [
        (1, "красный круг"),
        (2, "красных круга"),
        (3, "красных круга"),
        (4, "красных круга"),
        (5, "красных кругов"),
        (11, "красных кругов"),
        (12, "красных кругов"),
        (21, "красный круг"),
        (22, "красных круга"),
    ],
)
def test_numeral_agreement(count: int, expected: str) -> None:
    from polycap_ru.demo import agree

    assert " ".join(agree("red", "circle", count)) == expected


def test_demo_captions_are_grammatical(pack) -> None:
    rng = random.Random(0)
    captions = {
        pack.demo.describe("yellow", "triangle", n, rng) for n in (1, 2, 3) for _ in range(20)
    }
    assert "один жёлтый треугольник" in captions
    assert "два жёлтых треугольника" in captions
    assert "три жёлтых треугольника на тёмном фоне" in captions
    assert not any("желт" in caption for caption in captions)


@pytest.mark.slow
def test_demo_learns_russian(tmp_path) -> None:
    from polycap.demo.runner import DemoOptions, run_demo

    result = run_demo(DemoOptions(language="ru", workdir=tmp_path, progress=False))
    assert result.scores["colour_accuracy"] >= 0.95, result.scores
    assert result.scores["shape_accuracy"] >= 0.70, result.scores
    assert all(caption.strip() for caption in result.captions.values())
    # the demo ends with three methods on the split, and says which wins on each group
    methods = [m.name for m in result.comparison.comparison.methods]
    assert methods == ["retrieval", "generation", "retrieval-augmented"]
    verdict = result.comparison.verdict()
    assert [line.split(":")[0] for line in verdict] == [
        "On pairs seen in training",
        "On unseen pairs",
    ]
    assert all("retrieval-augmented" in line for line in verdict)
