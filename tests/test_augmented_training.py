"""Retrieval-augmented training and captioning end to end on tiny models: the checkpoint records
bank + template, training prompts never contain an image's own references, ``polycap caption``
uses the recorded bank or ``--bank``."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from cli_runner import run_cli

from polycap.plugins import get_registries


@pytest.fixture(scope="module")
def english():
    return get_registries().languages.get("en")


@pytest.fixture(scope="module")
def trained(english, tiny_clip, tmp_path_factory: pytest.TempPathFactory):
    """A synthetic split, a bank of its training captions, a model trained with it (CLI)."""
    from polycap.data.captions import load_captions
    from polycap.data.encoding import load_encoder
    from polycap.offline import tiny
    from polycap.offline.synthetic import make_synthetic_set
    from polycap.retrieval.bank import build_bank

    root = tmp_path_factory.mktemp("augmented")
    split = make_synthetic_set(english, root / "data", 30, seed=4)
    train = load_captions(split.train_file)
    encoder = load_encoder(tiny_clip.name, pretrained=tiny_clip.weights)
    build_bank(train, encoder, root / "bank", english, dtype="float32", progress=False)
    tokenizer_dir = english.build_tiny_tokenizer(train.captions(), root / "lm")
    tiny.build_gpt2(english.load_tokenizer(str(tokenizer_dir)), root / "lm", seed=0)
    return {"split": split, "root": root, "encoder": encoder, "train": train}


def train_args(setup, tiny_clip, output: Path, *extra: str) -> list[str]:
    root = setup["root"]
    return [
        "train",
        "--lang",
        "en",
        "--data",
        str(setup["split"].train_file),
        "--output",
        str(output),
        "--encoder",
        tiny_clip.name,
        "--pretrained",
        str(tiny_clip.weights),
        "--lm",
        str(root / "lm"),
        "--prefix-length",
        "2",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--train-lm",
        "--json",
        *extra,
    ]


@pytest.fixture(scope="module")
def model_dir(trained, tiny_clip, tmp_path_factory) -> Path:
    import sys

    from polycap.cli import main

    output = tmp_path_factory.mktemp("run") / "out"
    args = train_args(
        trained,
        tiny_clip,
        output,
        "--retrieval-bank",
        str(trained["root"] / "bank"),
        "--retrieval-k",
        "2",
    )
    saved, sys.argv = sys.argv, ["polycap", *args]
    try:
        main()
    except SystemExit as exit_:
        assert not exit_.code
    finally:
        sys.argv = saved
    return output / "final"


def test_the_checkpoint_records_bank_and_template(model_dir, trained, english) -> None:
    from polycap.model.augmented import bank_identity
    from polycap.retrieval.bank import Bank

    record = json.loads((model_dir / "polycap.json").read_text())["retrieval"]
    bank = trained["root"] / "bank"
    assert record["bank"] == str(bank.resolve()) and Path(record["bank"]).is_absolute()
    assert record["identity"] == bank_identity(Bank.open(bank))
    assert record["k"] == 2
    assert record["template"] == english.retrieval_prompt
    assert record["separator"] == english.caption_separator


def test_training_prompts_never_hold_an_images_own_references(model_dir, trained, english):
    """The bank holds every training image: unfiltered, an image's nearest neighbour is itself,
    so its own captions would lead its prompt."""
    from polycap.data.features import Features
    from polycap.model.augmented import neighbour_captions, training_neighbours
    from polycap.retrieval.bank import Bank

    bank = Bank.open(trained["root"] / "bank")
    store = Features.open(model_dir.parent / "features")
    by_image = {os.path.realpath(p): t for p, t in trained["train"].by_image().items()}
    found = training_neighbours(bank, store, by_image, english, k=2)
    paths = [os.path.realpath(p) for p in store.paths()]
    assert len(found) == len(paths) > 10
    assert all(len(texts) == 2 for texts in found)
    for path, texts in zip(paths, found, strict=True):
        own = {english.normalize(t) for t in by_image[path]}
        assert not own & set(texts), path
    unfiltered = neighbour_captions(bank, store[: len(paths)], k=2)
    leaks = sum(
        bool({english.normalize(t) for t in by_image[p]} & set(texts))
        for p, texts in zip(paths, unfiltered, strict=True)
    )
    assert leaks == len(paths)  # what the exclusion removes


def test_caption_uses_the_recorded_bank_or_another(model_dir, trained, capsys, tmp_path) -> None:
    images = [str(trained["split"].image_dir / n) for n in trained["split"].test_images[:3]]
    result = run_cli(["caption", *images, "--model", str(model_dir), "--json"], capsys)
    assert result.code == 0, result.err
    rows = json.loads(result.out)["captions"]
    assert len(rows) == 3 and all(len(r["retrieved"]) == 2 for r in rows)
    other = tmp_path / "other-bank"
    shutil.copytree(trained["root"] / "bank", other)
    chosen = ["caption", *images, "--model", str(model_dir), "--bank", str(other), "--json"]
    again = run_cli(chosen, capsys)
    assert again.code == 0, again.err
    assert [r["retrieved"] for r in json.loads(again.out)["captions"]] == [
        r["retrieved"] for r in rows
    ]


def test_a_rebuilt_recorded_bank_is_refused_without_bank(model_dir, trained, capsys) -> None:
    import shutil as sh

    moved = trained["root"] / "bank-moved"
    sh.copytree(trained["root"] / "bank", moved)
    meta = trained["root"] / "bank" / "meta.json"
    original = meta.read_text()
    try:
        data = json.loads(original)
        data["created"] = "rebuilt"
        meta.write_text(json.dumps(data))
        image = str(trained["split"].image_dir / trained["split"].test_images[0])
        result = run_cli(["caption", image, "--model", str(model_dir)], capsys)
        assert result.code == 2
        assert "not the bank the model was trained with" in " ".join(result.err.split())
    finally:
        meta.write_text(original)
        sh.rmtree(moved)


def test_a_twin_images_copies_of_the_references_are_excluded_too(trained, english, tmp_path):
    """The bank holds an exact copy of the image under another name (the same photo in another
    folder), with the same captions: no bank entry is the image itself, yet the twin's
    captions are its references and must not be retrieved."""
    from polycap.data.captions import load_captions
    from polycap.data.features import encode_to_store
    from polycap.model.augmented import training_neighbours
    from polycap.retrieval.bank import Bank, build_bank
    from polycap.util.atomic import write_json

    split = trained["split"]
    names = split.train_images[:6]
    shutil.copy(split.image_dir / names[0], split.image_dir / "twin.png")
    records = [
        {"caption": text, "image_name": name}
        for name in [*names[1:], "twin.png"]
        for text in split.captions[names[0] if name == "twin.png" else name]
    ]
    data = tmp_path / "captions.json"
    write_json(data, records)
    captions = load_captions(data, images_dir=split.image_dir)
    build_bank(captions, trained["encoder"], tmp_path / "bank", english, progress=False)
    bank = Bank.open(tmp_path / "bank")
    store = encode_to_store(
        trained["encoder"], [split.image_dir / names[0]], tmp_path / "store", progress=False
    ).store
    own = {os.path.realpath(split.image_dir / names[0]): split.captions[names[0]]}
    found = training_neighbours(bank, store, own, english, k=3)
    references = {english.normalize(t) for t in split.captions[names[0]]}
    assert found[0] and not references & set(found[0])
    assert references & set(bank.captions(range(bank.n_captions)))  # they are in the bank


@pytest.fixture(scope="module")
def plain_dir(trained, tiny_clip, tmp_path_factory) -> Path:
    import sys

    from polycap.cli import main

    output = tmp_path_factory.mktemp("plain") / "out"
    saved, sys.argv = sys.argv, ["polycap", *train_args(trained, tiny_clip, output)]
    try:
        main()
    except SystemExit as exit_:
        assert not exit_.code
    finally:
        sys.argv = saved
    return output / "final"


def test_compare_shows_three_methods(model_dir, plain_dir, trained, capsys, tmp_path) -> None:
    split, bank = trained["split"], str(trained["root"] / "bank")
    common = [
        "compare",
        str(split.test_file),
        "-m",
        str(plain_dir),
        "-b",
        bank,
        "--augmented-model",
        str(model_dir),
        "--metrics",
        "bleu,cider-d",
        "--max-length",
        "8",
        "-k",
        "2",
    ]
    report = tmp_path / "report.html"
    result = run_cli([*common, "--json", "--report", str(report)], capsys)
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert list(data["methods"]) == ["retrieval", "generation", "retrieval-augmented"]
    augmented = data["methods"]["retrieval-augmented"]
    assert augmented["captions_per_second"] > 0 and augmented["novelty"] is not None
    assert "CIDEr-D" in augmented["scores"]
    assert all(len(row["retrieval-augmented retrieved"]) == 2 for row in data["per_image"])
    html = report.read_text(encoding="utf-8")
    first = data["per_image"][0]["retrieval-augmented retrieved"][0]
    assert "retrieved captions in its prompt" in html and first in html
    table = run_cli(common, capsys)
    assert table.code == 0 and "retrieval-augmented" in table.out
    swapped = run_cli([*common[:3], str(model_dir), *common[4:]], capsys)
    assert swapped.code == 2 and "--augmented-model" in swapped.err


def test_the_compositional_split_compares_three_methods(model_dir, plain_dir, trained, english):
    from polycap.compare.comparison import CompareSettings
    from polycap.compare.compositional import compare_on_split
    from polycap.model.captioner import Captioner

    result = compare_on_split(
        english,
        trained["split"],
        Captioner.load(plain_dir),
        trained["root"] / "split-compare",
        settings=CompareSettings(metrics=["bleu"]),
        augmented=Captioner.load(model_dir),
    )
    assert list(result.pair_scores) == ["retrieval", "generation", "retrieval-augmented"]
    assert "retrieved captions in its prompt" in result.report.read_text(encoding="utf-8")


def test_hf_export_bundles_the_bank_and_captions_without_the_original(
    model_dir, trained, capsys, tmp_path
) -> None:
    """issue 20: the export carries its bank (a copy, named relative), so it captions on
    another machine exactly as the checkpoint does here."""
    images = [str(trained["split"].image_dir / n) for n in trained["split"].test_images[:3]]
    expected = run_cli(["caption", *images, "--model", str(model_dir), "--json"], capsys)
    assert expected.code == 0, expected.err
    out = tmp_path / "shared"
    result = run_cli(["export", str(model_dir), "--to", "hf", str(out)], capsys)
    assert result.code == 0, result.err
    record = json.loads((out / "polycap.json").read_text())["retrieval"]
    assert record["bank"] == "bank" and (out / "bank" / "meta.json").is_file()
    assert (out / "bank" / "image.npy").stat().st_nlink == 1
    bank = trained["root"] / "bank"
    away = trained["root"] / "bank-away"
    bank.rename(away)
    try:
        moved = tmp_path / "elsewhere" / "model"
        shutil.copytree(out, moved)
        again = run_cli(["caption", *images, "--model", str(moved), "--json"], capsys)
    finally:
        away.rename(bank)
    assert again.code == 0, again.err
    assert json.loads(again.out)["captions"] == json.loads(expected.out)["captions"]


def test_onnx_export_of_an_augmented_model_is_refused_in_one_line(model_dir, capsys, tmp_path):
    out = tmp_path / "onnx"
    result = run_cli(["export", str(model_dir), "--to", "onnx", str(out)], capsys)
    assert result.code == 2 and "Traceback" not in result.err
    lines = [line for line in result.err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "retrieval-augmented" in result.err and "--to hf" in result.err
    assert not out.exists()
