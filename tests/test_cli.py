"""The CLI as a user meets it: real commands, one-line errors with exit code 2, no tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_runner import run_cli
from PIL import Image
from tiny_setup import tiny_captioner

from polycap.builtin.english import ENGLISH
from polycap.data.images import DEFAULT_MAX_PIXELS, set_max_pixels

CAPTIONS = ["a red circle", "two blue squares", "a green triangle", "three yellow circles"] * 5


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained but complete English checkpoint on tiny local models."""
    root = tmp_path_factory.mktemp("cli")
    model = tiny_captioner(ENGLISH, CAPTIONS, root, train_lm=True)
    return model.save(root / "checkpoint")


@pytest.fixture
def images(tmp_path: Path) -> dict[str, Path]:
    good = tmp_path / "good.png"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(good)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    return {"good": good, "corrupt": corrupt}


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.code == 2, (result.out, result.err)
    assert "Traceback" not in result.err
    lines = [line for line in result.err.strip().splitlines() if not line.startswith("Warning")]
    assert len(lines) == 1, result.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_help_lists_the_commands(capsys):
    result = run_cli(["--help"], capsys)
    assert result.code == 0
    for command in ("train", "caption", "encode", "demo", "plugins"):
        assert command in result.out


def test_unknown_language_gets_a_did_you_mean(capsys, tmp_path):
    result = run_cli(["train", "--lang", "eng", "--data", str(tmp_path / "x.json")], capsys)
    assert_one_line_error(result, "No language pack 'eng'.", "Did you mean 'en'?")


def test_missing_caption_file(capsys, tmp_path):
    result = run_cli(["train", "--lang", "en", "--data", str(tmp_path / "nope.json")], capsys)
    assert_one_line_error(result, "nope.json")


def test_broken_caption_file_names_the_file_and_place(capsys, tmp_path):
    broken = tmp_path / "captions.jsonl"
    broken.write_text('{"image": "a.png", "caption": "ok"}\n{"image": "b.png", "caption": \n')
    result = run_cli(["train", "--lang", "en", "--data", str(broken)], capsys)
    assert_one_line_error(result, "captions.jsonl", "line 2")


def test_caption_with_a_folder_that_is_not_a_checkpoint(capsys, tmp_path, images):
    result = run_cli(["caption", str(images["good"]), "--model", str(tmp_path)], capsys)
    assert_one_line_error(result, "not a polycap checkpoint")


def test_caption_skips_a_corrupt_image_and_captions_the_rest(capsys, checkpoint, images):
    result = run_cli(
        [
            "caption",
            str(images["good"]),
            str(images["corrupt"]),
            "--model",
            str(checkpoint),
            "--json",
            "--max-length",
            "5",
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert result.code == 0, result.err
    payload = json.loads(result.out)
    assert [Path(item["image"]).name for item in payload["captions"]] == ["good.png"]
    assert [Path(item["image"]).name for item in payload["skipped"]] == ["corrupt.png"]
    assert "corrupt.png" in result.err


def test_caption_with_only_corrupt_images_exits_2(capsys, checkpoint, images):
    result = run_cli(
        ["caption", str(images["corrupt"]), "--model", str(checkpoint), "--device", "cpu"], capsys
    )
    assert result.code == 2
    assert "corrupt.png" in result.err


def test_beam_and_num_captions_give_distinct_captions(capsys, checkpoint, images):
    result = run_cli(
        [
            "caption",
            str(images["good"]),
            "--model",
            str(checkpoint),
            "--json",
            "--num-captions",
            "3",
            "--max-length",
            "6",
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert result.code == 0, result.err
    captions = json.loads(result.out)["captions"][0]["captions"]
    assert len(captions) == len(set(captions)) >= 2


def test_checkpoint_for_a_language_that_is_not_installed(capsys, checkpoint, images, tmp_path):
    import shutil

    copy = tmp_path / "xx-checkpoint"
    shutil.copytree(checkpoint, copy)
    config = json.loads((copy / "polycap.json").read_text())
    config["language"] = "xx"
    (copy / "polycap.json").write_text(json.dumps(config))
    result = run_cli(["caption", str(images["good"]), "--model", str(copy)], capsys)
    assert_one_line_error(result, "'xx'", "polycap plugins install")


def test_encode_a_missing_image(capsys, tmp_path):
    result = run_cli(["encode", str(tmp_path / "missing.png")], capsys)
    assert_one_line_error(result, "missing.png")


def test_demo_for_an_unknown_language(capsys, tmp_path):
    result = run_cli(["demo", "--lang", "tlh", "--workdir", str(tmp_path)], capsys)
    assert_one_line_error(result, "No language pack 'tlh'")


def test_output_is_one_option_with_its_old_spellings_hidden(capsys, tmp_path):
    for command in ("train", "index", "demo"):
        shown = run_cli([command, "--help"], capsys).out
        assert "--output" in shown and "--out " not in shown and "--workdir" not in shown
    result = run_cli(["demo", "--lang", "tlh", "--output", str(tmp_path)], capsys)
    assert_one_line_error(result, "No language pack 'tlh'")
    result = run_cli(["demo", "-o", str(tmp_path), "--workdir", str(tmp_path)], capsys)
    assert_one_line_error(result, "--output is given twice")
    result = run_cli(["index", str(tmp_path / "c.json"), "--lang", "en"], capsys)
    assert_one_line_error(result, "missing option --output/-o")


def test_encode_names_skipped_images_and_why_in_table_output(capsys, tmp_path, tiny_clip, images):
    big = tmp_path / "big.png"
    Image.new("RGB", (100, 100), (0, 0, 0)).save(big)
    args = ["encode", str(images["good"]), str(big), str(images["corrupt"])]
    args += ["--encoder", tiny_clip.name, "--pretrained", str(tiny_clip.weights)]
    try:
        result = run_cli([*args, "--max-pixels", "2000", "--device", "cpu"], capsys)
    finally:
        set_max_pixels(DEFAULT_MAX_PIXELS)  # the option sets a process-wide limit
    assert result.code == 0, result.err
    assert "Traceback" not in result.err and "DecompressionBomb" not in result.err
    line = next(line for line in result.err.splitlines() if "Skipped" in line)
    assert "Skipped 2 unreadable image(s):" in line
    assert "big.png (100x100 = 10,000 pixels, more than the limit of 2,000" in line
    assert "corrupt.png (" in line
    result = run_cli([*args, "--max-pixels", "0"], capsys)
    assert result.code == 2 and "--max-pixels" in result.err


def test_caption_file_naming_an_image_outside_its_folder(capsys, tmp_path, tiny_clip, images):
    data = tmp_path / "data"
    data.mkdir()
    captions = data / "captions.csv"
    captions.write_text(f"image,caption\n../{images['good'].name},a red square\n")
    result = run_cli(["index", str(captions), "--lang", "en", "-o", str(tmp_path / "b")], capsys)
    assert_one_line_error(
        result, "captions.csv: record '../good.png' names an image outside the image folder"
    )
    args = ["encode", "--data", str(captions), "--encoder", tiny_clip.name]
    args += ["--pretrained", str(tiny_clip.weights), "--json"]
    try:
        result = run_cli([*args, "--allow-outside-images"], capsys)
    finally:
        from polycap.data.captions import allow_images_outside

        allow_images_outside(False)  # the option sets a process-wide default
    assert result.code == 0, result.err
    assert json.loads(result.out)["encoded"] == 1


def test_corrupt_bundled_lm_weights(capsys, checkpoint, images, tmp_path):
    import shutil

    copy = shutil.copytree(checkpoint, tmp_path / "damaged")
    weights = copy / "lm" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    result = run_cli(["caption", str(images["good"]), "--model", str(copy)], capsys)
    assert_one_line_error(result, f"{weights}: corrupt or truncated weights")


def test_prefix_length_edited_in_polycap_json(capsys, checkpoint, images, tmp_path):
    import shutil

    copy = shutil.copytree(checkpoint, tmp_path / "edited")
    config = json.loads((copy / "polycap.json").read_text())
    config["prefix_length"] = 3  # the weights were trained with 2
    (copy / "polycap.json").write_text(json.dumps(config))
    result = run_cli(["caption", str(images["good"]), "--model", str(copy)], capsys)
    assert_one_line_error(
        result,
        "mapper.safetensors: holds weights for prefix_length 2, "
        "but polycap.json says prefix_length 3",
    )


def test_explicit_beams_fewer_than_num_captions_is_an_error(capsys, checkpoint, images):
    args = ["caption", str(images["good"]), "--model", str(checkpoint), "--max-length", "6"]
    result = run_cli([*args, "--beams", "2", "--num-captions", "5"], capsys)
    assert_one_line_error(result, "--num-captions 5 needs --beams 5 or more", "not --beams 2")
    result = run_cli([*args, "--num-captions", "5", "--json", "--device", "cpu"], capsys)
    assert result.code == 0, result.err  # without --beams: as many beams as captions
    captions = json.loads(result.out)["captions"][0]["captions"]
    assert len(captions) == len(set(captions))
    if len(captions) < 5:  # never silently fewer
        assert "got fewer than 5 distinct captions" in result.err


def test_caption_repetition_options_reach_the_decoder(capsys, checkpoint, images):
    """--no-repeat-ngram-size 1: no token twice, so an untrained model's repeated words go;
    the same options through the Python API give the same caption."""
    import polycap

    args = ["caption", str(images["good"]), "--model", str(checkpoint), "--json"]
    args += ["--max-length", "16", "--device", "cpu"]
    plain = run_cli(args, capsys)
    assert plain.code == 0, plain.err
    result = run_cli([*args, "--no-repeat-ngram-size", "1", "--repetition-penalty", "1.2"], capsys)
    assert result.code == 0, result.err
    [caption] = json.loads(result.out)["captions"][0]["captions"]
    [before] = json.loads(plain.out)["captions"][0]["captions"]
    words = caption.split()
    assert len(words) == len(set(words)) and caption != before
    api = polycap.load(checkpoint, device="cpu").caption(
        images["good"], max_length=16, no_repeat_ngram_size=1, repetition_penalty=1.2
    )
    assert api == caption
    bad = run_cli([*args, "--repetition-penalty", "0"], capsys)
    assert bad.code == 2 and "Traceback" not in bad.err
    assert "repetition_penalty must be positive" in bad.err
