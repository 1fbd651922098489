"""The standard multilingual sets in their release layouts (tiny files written here, no download):
XM3600 captions.jsonl, COCO-35L / CC3M-35L JSONL, Karpathy's dataset_coco.json with its splits,
STAIR Captions, per-language Parquet copies; read through load_captions and the CLI, in the
language --lang picks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_runner import flat, run_cli

from polycap.data.captions import (
    CaptionSelection,
    load_captions,
    set_caption_language,
    set_caption_split,
)
from polycap.errors import BadInput


@pytest.fixture(autouse=True)
def _no_selection():
    yield
    set_caption_language(None)  # the CLI's --lang / --split set a process-wide choice
    set_caption_split(None)


def jpeg(path: Path, colour: tuple[int, int, int] = (200, 30, 30)) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path, format="JPEG")
    return path


def xm3600_line(key: str, **captions: list[str]) -> str:
    """One line of XM3600's captions.jsonl: per language caption / tokenized / lowercase."""
    line: dict = {"image/key": key, "image/locale": "ja"}
    for code, texts in captions.items():
        line[code] = {
            "caption": texts,
            "caption/tokenized": texts,
            "caption/tokenized/lowercase": [t.lower() for t in texts],
        }
    return json.dumps(line, ensure_ascii=False)


@pytest.fixture()
def xm3600(tmp_path: Path) -> Path:
    root = tmp_path / "xm3600"
    for key in ("000a1b2c3d4e5f60", "0011223344556677", "00ffeeddccbbaa99"):
        jpeg(root / "images" / f"{key}.jpg")
    lines = [
        xm3600_line("000a1b2c3d4e5f60", en=["A red car.", "a red car on a road"], ja=["赤い車"]),
        xm3600_line("0011223344556677", en=["Two dogs."], ja=["二匹の犬", "犬が二匹いる"]),
        xm3600_line("00ffeeddccbbaa99", en=["A temple."]),  # no Japanese captions
    ]
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root / "captions.jsonl"


def read(path: Path, language: str | None = None, split: tuple[str, ...] | None = None, **kw):
    return load_captions(path, selection=CaptionSelection(language, split), **kw)


def test_xm3600_reads_the_chosen_language(xm3600: Path) -> None:
    ja = read(xm3600, "ja")
    assert ja.captions() == ["赤い車", "二匹の犬", "犬が二匹いる"]
    assert [p.name for p in ja.images()] == ["000a1b2c3d4e5f60.jpg", "0011223344556677.jpg"]
    assert all(p.parent == xm3600.parent / "images" for p in ja.images())
    en = read(xm3600, "en")
    assert len(en) == 4 and len(en.images()) == 3


def test_xm3600_needs_a_language_it_has(xm3600: Path) -> None:
    with pytest.raises(BadInput, match=r"2 languages; pick one with --lang \(en, ja\)"):
        read(xm3600)
    with pytest.raises(BadInput, match="no captions in language 'ru'; it has: en, ja"):
        read(xm3600, "ru")


def test_xm3600_through_the_cli_in_the_language_of_lang(
    xm3600: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    predictions = tmp_path / "preds.json"
    predictions.write_text(
        json.dumps(
            [
                {"image": "000a1b2c3d4e5f60.jpg", "caption": "赤い車"},
                {"image": "0011223344556677.jpg", "caption": "犬が二匹"},
            ],
            ensure_ascii=False,
        ),
        encoding="utf-8",
    )
    args = ["eval", str(xm3600), "-p", str(predictions), "--metrics", "chrf", "--json"]
    result = run_cli([*args, "--lang", "ja"], capsys)
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert (data["images"], data["references"]) == (2, 3)
    assert data["scores"]["chrF"] > 50
    result = run_cli([*args, "--lang", "ru"], capsys)
    assert result.code == 2
    assert "no captions in language 'ru'" in flat(result.err)


def coco35l_lines() -> list[dict]:
    """COCO-35L: one line per (caption, target language); image_id is <cocoid>_<n>."""
    lines = []
    for cocoid, n, english, ja, de in (
        (391895, 1, "a man riding a bike", "自転車に乗る男性", "ein Mann fährt Fahrrad"),
        (391895, 2, "a cyclist on a road", "道路上の自転車乗り", "ein Radfahrer auf der Straße"),
        (522418, 1, "a woman cutting a cake", "ケーキを切る女性", "eine Frau schneidet Kuchen"),
    ):
        for target, text in (("ja", ja), ("de", de)):
            lines.append(
                {
                    "image_id": f"{cocoid}_{n}",
                    "src_lang": "en",
                    "trg_lang": target,
                    "caption_tokenized": english,
                    "translation_tokenized": text,
                    "backtranslation_tokenized": english,
                }
            )
    return lines


def write_jsonl(path: Path, lines: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(json.dumps(line, ensure_ascii=False) for line in lines)
    path.write_text(text + "\n", encoding="utf-8")
    return path


def test_coco35l_translations_and_english_source(tmp_path: Path) -> None:
    images = tmp_path / "coco"
    jpeg(images / "val2014" / "COCO_val2014_000000391895.jpg")
    jpeg(images / "train2014" / "COCO_train2014_000000522418.jpg")
    path = write_jsonl(tmp_path / "coco_mt_dev.jsonl", coco35l_lines())
    ja = read(path, "ja", images_dir=images)
    assert ja.captions() == ["自転車に乗る男性", "道路上の自転車乗り", "ケーキを切る女性"]
    assert [p.relative_to(images).as_posix() for p in ja.images()] == [
        "val2014/COCO_val2014_000000391895.jpg",
        "train2014/COCO_train2014_000000522418.jpg",
    ]
    en = read(path, "en", images_dir=images)  # the source, once (not once per target language)
    assert en.captions() == ["a man riding a bike", "a cyclist on a road", "a woman cutting a cake"]
    with pytest.raises(BadInput, match="no captions in language 'fr'"):
        read(path, "fr", images_dir=images)


def test_cc3m35l_images_by_record_number(tmp_path: Path) -> None:
    jpeg(tmp_path / "images" / "1.jpg")
    jpeg(tmp_path / "images" / "2.jpg")
    lines = [
        {"rec_num": 1, "src_lang": "en", "trg_lang": "ru", "caption_tokenized": "a cat",
         "translation_tokenized": "кошка", "backtranslation_tokenized": "a cat"},
        {"rec_num": 2, "src_lang": "en", "trg_lang": "ru", "caption_tokenized": "a house",
         "translation_tokenized": "дом", "backtranslation_tokenized": "house"},
    ]  # fmt: skip
    path = write_jsonl(tmp_path / "cc3m_mt_dev.jsonl", lines)
    ru = read(path, "ru")
    assert ru.captions() == ["кошка", "дом"]
    assert [p.name for p in ru.images()] == ["1.jpg", "2.jpg"]


def karpathy_file(tmp_path: Path) -> Path:
    """dataset_coco.json: images with filepath, filename, split, sentences (raw, tokens)."""
    images = []
    files = [("val2014", 391895, "test"), ("train2014", 522418, "train")]
    files += [("val2014", 184613, "restval"), ("val2014", 318219, "val")]
    for imgid, (folder, cocoid, split) in enumerate(files):
        name = f"COCO_{folder}_{cocoid:012d}.jpg"
        jpeg(tmp_path / folder / name)
        sentences = [
            {"tokens": ["caption", str(n)], "raw": f"Caption {n} of {cocoid}.", "imgid": imgid,
             "sentid": imgid * 5 + n}
            for n in range(5)
        ]  # fmt: skip
        images.append(
            {"filepath": folder, "sentids": [s["sentid"] for s in sentences], "filename": name,
             "imgid": imgid, "split": split, "sentences": sentences, "cocoid": cocoid}
        )  # fmt: skip
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": images, "dataset": "coco"}), encoding="utf-8")
    return path


def test_karpathy_split_selection(tmp_path: Path) -> None:
    path = karpathy_file(tmp_path)
    test = read(path, split=("test",))
    assert len(test) == 5 and [p.name for p in test.images()] == ["COCO_val2014_000000391895.jpg"]
    assert test.captions()[0] == "Caption 0 of 391895."
    train = read(path, split=("train", "restval"))
    assert {r.image_id for r in train} == {"522418", "184613"} and len(train) == 10
    with pytest.raises(BadInput, match="holds the splits restval, test, train, val; pick with"):
        read(path)
    with pytest.raises(BadInput, match="no split 'dev'"):
        read(path, split=("dev",))


def test_split_on_a_file_without_splits_is_refused(xm3600: Path) -> None:
    with pytest.raises(BadInput, match="format 'xm3600' has no splits"):
        read(xm3600, "ja", split=("test",))


def test_karpathy_split_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = karpathy_file(tmp_path)
    preds = tmp_path / "preds.json"
    preds.write_text(json.dumps([{"image_id": "391895", "caption": "Caption 0 of 391895."}]))
    args = ["eval", str(path), "-p", str(preds), "--lang", "en", "--metrics", "chrf", "--json"]
    result = run_cli([*args, "--split", "test"], capsys)
    assert result.code == 0, result.err
    assert json.loads(result.out)["references"] == 5
    result = run_cli(args, capsys)
    assert result.code == 2 and "pick with --split" in flat(result.err)


def stair_file(tmp_path: Path) -> Path:
    """STAIR Captions: COCO layout with tokenized_caption (images are COCO train2014 files)."""
    jpeg(tmp_path / "train2014" / "COCO_train2014_000000000009.jpg")
    data = {
        "licenses": [{"url": "http://creativecommons.org/licenses/by/4.0/", "id": 4}],
        "annotations": [
            {"id": 1, "image_id": 9, "caption": "皿に料理が盛られている",
             "tokenized_caption": "皿 に 料理 が 盛ら れ て いる"},
            {"id": 2, "image_id": 9, "caption": "食べ物が並んでいる",
             "tokenized_caption": "食べ物 が 並ん で いる"},
        ],
        "images": [{"license": 4, "file_name": "COCO_train2014_000000000009.jpg", "id": 9}],
    }  # fmt: skip
    path = tmp_path / "stair_captions_v1.2_train.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def test_stair_captions_read_as_coco_and_by_name(tmp_path: Path) -> None:
    path = stair_file(tmp_path)
    images = tmp_path / "train2014"
    auto = read(path, "ja", images_dir=images)
    named = read(path, "ja", images_dir=images, format="stair-captions")
    assert auto.captions() == named.captions() == ["皿に料理が盛られている", "食べ物が並んでいる"]
    with pytest.raises(BadInput, match="STAIR Captions are Japanese; --lang is 'en'"):
        read(path, "en", images_dir=images, format="stair-captions")


def test_karpathy_file_is_not_taken_for_coco(tmp_path: Path) -> None:
    from polycap.data.captions import choose_format

    assert choose_format(karpathy_file(tmp_path)).name == "karpathy"
    assert choose_format(stair_file(tmp_path)).name == "coco"


def test_per_language_parquet_copies(tmp_path: Path) -> None:
    """floschne/xm3600's layout: data/<lang>-00000-of-00001.parquet with image bytes and a
    caption list; shunk031/STAIR-Captions': annotations as a list of {caption} structs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = jpeg(tmp_path / "one.jpg").read_bytes()
    ja = tmp_path / "data" / "ja-00000-of-00001.parquet"
    ja.parent.mkdir()
    pq.write_table(
        pa.table(
            {
                "image_id": ["000a1b2c3d4e5f60"],
                "image_locale": ["ja"],
                "captions": [["赤い車", "道路の赤い車"]],
                "captions_tokenized": [["赤い 車", "道路 の 赤い 車"]],
                "image": [{"bytes": data, "path": None}],
            }
        ),
        ja,
    )
    assert read(ja, "ja").captions() == ["赤い車", "道路の赤い車"]
    with pytest.raises(BadInput, match="per-language copy for 'ja', but --lang is 'ru'"):
        read(ja, "ru")
    stair = tmp_path / "stair.parquet"
    notes = [[{"annotation_id": 1, "image_id": 9, "caption": "料理の皿"}]]
    pq.write_table(pa.table({"image_id": [9], "image": [{"bytes": data, "path": None}],
                             "annotations": notes}), stair)  # fmt: skip
    assert read(stair, "ja").captions() == ["料理の皿"]


def test_a_language_column_keeps_the_rows_of_lang(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = jpeg(tmp_path / "one.jpg").read_bytes()
    path = tmp_path / "coco35l.parquet"
    pq.write_table(
        pa.table(
            {
                "image": [{"bytes": data, "path": None}] * 2,
                "captions": [["ein Mann"], ["男性"]],
                "language": ["de", "ja"],
            }
        ),
        path,
    )
    assert read(path, "ja").captions() == ["男性"]
    with pytest.raises(BadInput, match="several languages \\(column 'language'\\)"):
        read(path)
