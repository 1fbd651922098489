"""``polycap export``: a Hugging Face folder and an ONNX export that ``polycap caption`` and
``polycap.load`` take from another folder, with the models they came from gone; the model card;
the Hub (offline here: one-line errors, and a model already in the Hub cache)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from cli_runner import run_cli
from PIL import Image
from tiny_setup import tiny_captioner

from polycap.builtin.english import ENGLISH

CAPTIONS = ["a red circle", "two blue squares", "a green triangle", "three yellow circles"] * 5


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A checkpoint whose LM and encoder weights live outside it (a frozen LM, local CLIP
    weights), two images, and a real ``polycap eval --json`` result of it."""
    root = tmp_path_factory.mktemp("export")
    model = tiny_captioner(ENGLISH, CAPTIONS, root)
    checkpoint = model.save(root / "checkpoint", training={"epochs": 3, "lr": 0.001})
    images = root / "images"
    images.mkdir()
    Image.new("RGB", (40, 40), (200, 30, 30)).save(images / "red.png")
    Image.new("RGB", (50, 30), (20, 30, 200)).save(images / "blue.png")
    references = root / "refs.jsonl"
    references.write_text(
        '{"image": "red.png", "caption": "a red square"}\n'
        '{"image": "blue.png", "caption": "a blue square"}\n'
    )
    return {"root": root, "models": root / "models", "checkpoint": checkpoint,
            "images": images, "references": references}  # fmt: skip


def caption_json(capsys, model: Path | str, images: Path, *extra: str) -> list[list[str]]:
    args = ["caption", str(images / "red.png"), str(images / "blue.png"), "--model", str(model)]
    result = run_cli([*args, "--json", "--max-length", "6", "--device", "cpu", *extra], capsys)
    assert result.code == 0, result.err
    return [item["captions"] for item in json.loads(result.out)["captions"]]


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.code == 2, (result.out, result.err)
    assert "Traceback" not in result.err
    lines = [line for line in result.err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def models_gone(made):
    """The folder with the LM and CLIP weights moved away (as on another machine)."""
    away = made["root"] / "models-away"
    made["models"].rename(away)
    yield
    away.rename(made["models"])


@pytest.fixture(scope="module")
def hf_folder(made, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import contextlib
    import io

    from polycap.cli import main as cli_main

    evaluation = made["root"] / "eval.json"
    args = ["polycap", "eval", str(made["references"]), "--model", str(made["checkpoint"])]
    args += ["--images", str(made["images"]), "--metrics", "bleu", "--json", "--device", "cpu"]
    _run_main(cli_main, args, evaluation)
    out = tmp_path_factory.mktemp("hf") / "shared-en"
    args = ["polycap", "export", str(made["checkpoint"]), "--to", "hf", str(out)]
    with contextlib.redirect_stdout(io.StringIO()):
        _run_main(cli_main, [*args, "--eval", str(evaluation), "--license", "mit"], None)
    return out


def _run_main(main, argv: list[str], stdout_to: Path | None) -> None:
    import contextlib
    import io
    import sys

    saved, sys.argv = sys.argv, argv
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            try:
                main()
            except SystemExit as exit_:
                assert not exit_.code, buffer.getvalue()
    finally:
        sys.argv = saved
    if stdout_to is not None:
        stdout_to.write_text(buffer.getvalue())


def test_hf_folder_captions_from_another_folder_without_the_original_models(
    capsys, made, hf_folder, tmp_path, models_gone
) -> None:
    moved = tmp_path / "elsewhere" / "model"
    shutil.copytree(hf_folder, moved)
    assert not made["models"].exists()
    from_moved = caption_json(capsys, moved, made["images"])
    assert all(len(c) == 1 and c[0] for c in from_moved)
    config = json.loads((moved / "polycap.json").read_text())
    assert config["save_lm"] is True and (moved / config["lm_dir"] / "config.json").is_file()
    assert (moved / config["encoder"]["bundled"]).is_file()
    assert config["training"] == {"epochs": 3, "lr": 0.001}


def test_hf_folder_captions_like_the_checkpoint(capsys, made, hf_folder) -> None:
    expected = caption_json(capsys, made["checkpoint"], made["images"])
    assert caption_json(capsys, hf_folder, made["images"]) == expected


RAW_LITERAL = re.compile(r"\b(None|True|False)\b|\{'|\{\"|\{\}|\[\]")


def prose(text: str) -> str:
    """The card's text without its code blocks (code may say ``trust_remote_code=True``)."""
    return re.sub(r"```.*?```", "", text, flags=re.S)


def test_model_card_states_the_model_training_and_scores(made, hf_folder) -> None:
    from huggingface_hub import ModelCard

    card = ModelCard.load(hf_folder / "README.md")
    data = card.data
    assert data.language == ["en"] and data.license == "mit"
    assert data.pipeline_tag == "image-to-text" and data.library_name == "polycap"
    assert "image-captioning" in data.tags
    evaluation = json.loads((made["root"] / "eval.json").read_text())
    scored = {k: v for k, v in evaluation["scores"].items() if v is not None}
    results = {r.metric_name: r.metric_value for r in data.eval_results}
    assert results == {k: pytest.approx(v, abs=1e-4) for k, v in scored.items()}
    assert all(r.task_type == "image-to-text" for r in data.eval_results)
    body = card.text
    title = body.strip().splitlines()[0]
    assert title.startswith("# English image captioner with the ") and "shared-en" not in title
    assert "open_clip `polycap-tiny-vit`" in body and "prefix of 2 token embeddings" in body
    assert "an MLP mapping network" in body
    assert "`decoder/`" in body or "`lm/`" in body  # the bundled decoder, by its folder
    assert "It ran 3 epochs" in body and "Learning rate 0.001" in body
    name, score = next(iter(scored.items()))
    assert f"| {name} | {score:.2f} |" in body
    assert f"`{evaluation['segmenter']}`" in body
    for heading in ("## Usage", "## Training", "## Evaluation", "## Limitations", "## Licence"):
        assert heading in body
    assert 'AutoModel.from_pretrained("shared-en", trust_remote_code=True)' in body
    assert "polycap caption photos/ --model shared-en" in body
    assert 'polycap.load("shared-en")' in body
    assert "Language: it writes English only" in body and "Size: a decoder of " in body
    assert not RAW_LITERAL.search(prose(body)), RAW_LITERAL.search(prose(body))


def test_model_card_says_every_setting_in_prose() -> None:
    """A full training record (None, True, dicts, NaN) and an evaluation with n/a scores come
    out as sentences; the metadata parses back; another licence is named with its link."""
    from huggingface_hub import ModelCard

    from polycap.interop.model_card import CardLicense, render

    config = {
        "encoder": {"backend": "open_clip", "name": "ViT-B-32", "pretrained": "/abs/w.pt",
                    "embed_dim": 512},
        "mapper": {"kind": "transformer", "options": {"layers": 8, "bias": True, "x": None}},
        "prefix_length": 10, "language": "ja", "lm": "/home/someone/models/gpt2-ja",
        "train_lm": True, "normalize_features": True, "standardize_features": False,
        "language_name": "Japanese", "decoder_parameters": 124_439_808,
        "mapper_parameters": 56_320,
    }  # fmt: skip
    training = {
        "data": "/home/someone/data/train.json", "data_format": None, "epochs": 10,
        "epochs_done": 4, "steps_done": 40, "batch_size": 8, "lr": 3e-5, "weight_decay": 0.0,
        "warmup_steps": 0, "grad_accum": 2, "precision": None, "max_tokens": None,
        "val_fraction": 0.1, "seed": 0, "train_lm": True, "processes": 2,
        "global_batch_size": 16, "stopped_early": 4, "eval_metrics": ["cider-d"],
        "best": {"metric": "CIDEr-D", "score": 12.5, "epoch": 3},
        "history": [{"epoch": 4, "step": 40, "train_loss": 1.5, "val_loss": float("nan"),
                     "val_CIDEr-D": 11.0, "val_SPICE": None}],
    }  # fmt: skip
    evaluation = {"images": 3, "references": 6, "segmenter": "MeCab", "lower_is_better": ["WER"],
                  "scores": {"CIDEr-D": 11.0, "WER": 80.0, "SPICE": None},
                  "not_applicable": {"SPICE": "needs Java"}}  # fmt: skip
    link = "https://example.org/licence.html"
    text = render(config, training, evaluation, "me/ja", CardLicense(None, "my-licence", link))
    card = ModelCard(text)
    assert card.data.license == "other" and card.data.license_name == "my-licence"
    assert card.data.license_link == link and card.data.base_model is None  # a local folder
    assert {r.metric_name for r in card.data.eval_results} == {"CIDEr-D", "WER"}
    body = card.text
    assert not RAW_LITERAL.search(prose(body)), RAW_LITERAL.search(prose(body))
    assert "/home/someone" not in text and "/abs" not in text
    assert "# Japanese image captioner with the gpt2-ja decoder" in body
    assert "layers 8, bias yes, x none" in body and "124.4 M parameters" in body
    assert (
        "It ran 4 of 10 epochs (40 optimizer steps); early stopping ended it after epoch 4." in body
    )
    assert "on 2 processes (global batch 16)" in body and "10 % of the images" in body
    assert "The decoder was fine-tuned together with the mapping network." in body
    assert "training loss 1.500, validation CIDEr-D 11.00." in body  # NaN and None left out
    assert "The best epoch by CIDEr-D was epoch 3 (12.50)." in body
    assert "| WER (lower is better) | 80.00 |" in body and "| SPICE | n/a (needs Java) |" in body
    assert f"<{link}>" in body


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--license", "other"], "--license other: name it with --license-name"),
        (["--license-name", "x"], "--license-name and --license-link go together"),
        (["--license", "mit", "--license-name", "x", "--license-link", "y"], "give one licence"),
        (["--license", "MIT License"], "not an SPDX licence id"),
    ],
)
def test_export_licence_options_are_checked_first(capsys, made, tmp_path, flags, message):
    args = ["export", str(made["checkpoint"]), "--to", "hf", str(tmp_path / "out"), *flags]
    assert_one_line_error(run_cli(args, capsys), message)
    assert not (tmp_path / "out").exists()


def test_python_api_takes_paths_pil_images_and_features(capsys, made, hf_folder) -> None:
    import polycap

    expected = [c[0] for c in caption_json(capsys, hf_folder, made["images"])]
    captioner = polycap.load(hf_folder)
    paths = [made["images"] / "red.png", made["images"] / "blue.png"]
    assert captioner.caption(paths, max_length=6) == expected
    assert captioner.caption(str(paths[0]), max_length=6) == expected[0]
    pil = [Image.open(path) for path in paths]
    assert captioner.caption(pil, max_length=6) == expected
    features = captioner.features(paths)
    assert features.shape == (2, 64)
    assert captioner.caption(features, max_length=6) == expected
    assert captioner.caption(features[1], max_length=6) == expected[1]
    three = captioner.caption(paths, max_length=6, beams=3, num_captions=3)
    assert all(isinstance(c, list) and 1 <= len(c) <= 3 for c in three)


def test_python_api_bad_input_names_the_problem(made, hf_folder) -> None:
    import polycap
    from polycap.errors import BadInput

    captioner = polycap.load(hf_folder)
    with pytest.raises(BadInput, match="unknown generation option 'beam'"):
        captioner.caption(made["images"] / "red.png", beam=3)
    with pytest.raises(BadInput, match=r"missing\.png: not a readable image"):
        captioner.caption([made["images"] / "missing.png"])


def test_export_onnx_then_caption_it_like_the_checkpoint(capsys, made, tmp_path) -> None:
    out = tmp_path / "onnx"
    result = run_cli(["export", str(made["checkpoint"]), "--to", "onnx", str(out)], capsys)
    assert result.code == 0, result.err
    manifest = json.loads((out / "polycap-onnx.json").read_text())
    assert manifest["graphs"]["image_encoder"] == "image_encoder.onnx"
    for extra in ([], ["--beams", "3"]):
        expected = caption_json(capsys, made["checkpoint"], made["images"], *extra)
        assert caption_json(capsys, out, made["images"], *extra) == expected
    import polycap

    api = polycap.load(out).caption(made["images"] / "red.png", max_length=6)
    assert api == caption_json(capsys, out, made["images"])[0][0]


def test_export_refuses_a_folder_that_is_not_an_export(capsys, made, tmp_path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    for kind in ("hf", "onnx"):
        result = run_cli(["export", str(made["checkpoint"]), "--to", kind, str(tmp_path)], capsys)
        assert_one_line_error(result, "refusing to overwrite")
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_export_with_a_bad_eval_file(capsys, made, tmp_path) -> None:
    bad = tmp_path / "eval.json"
    bad.write_text('{"not": "scores"}')
    args = ["export", str(made["checkpoint"]), "--to", "hf", str(tmp_path / "o"), "--eval"]
    result = run_cli([*args, str(bad)], capsys)
    assert_one_line_error(result, "--eval", "eval.json", "polycap eval --json")


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """huggingface_hub offline, with an empty Hub cache of its own."""
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    return tmp_path / "hub-cache"


def test_push_to_hub_offline_is_one_line(capsys, made, tmp_path, offline_hub) -> None:
    args = ["export", str(made["checkpoint"]), "--to", "hf", str(tmp_path / "o")]
    result = run_cli([*args, "--push-to-hub", "someone/polycap-en"], capsys)
    assert_one_line_error(result, "--push-to-hub someone/polycap-en", "offline")
    assert (tmp_path / "o" / "README.md").is_file()  # the folder is written before the upload


def test_caption_a_hub_id_offline_is_one_line(capsys, made, offline_hub) -> None:
    args = ["caption", str(made["images"] / "red.png"), "--model", "someone/not-cached"]
    result = run_cli(args, capsys)
    assert_one_line_error(result, "someone/not-cached", "Hugging Face Hub", "offline")


def test_caption_a_hub_id_from_the_hub_cache(capsys, made, hf_folder, offline_hub) -> None:
    """A model downloaded before (laid out as huggingface_hub caches it) loads offline."""
    revision = "0" * 40
    repo = offline_hub / "models--someone--polycap-en"
    shutil.copytree(hf_folder, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    expected = caption_json(capsys, hf_folder, made["images"])
    assert caption_json(capsys, "someone/polycap-en", made["images"]) == expected


def _op_types(graph: Path) -> set[str]:
    import onnx

    return {node.op_type for node in onnx.load(str(graph), load_external_data=False).graph.node}


def test_export_onnx_int8_for_the_encoder_only(capsys, made, tmp_path) -> None:
    out = tmp_path / "onnx-int8-encoder"
    args = ["export", str(made["checkpoint"]), "--to", "onnx", str(out), "--int8-encoder"]
    result = run_cli(args, capsys)
    assert result.code == 0, result.err
    manifest = json.loads((out / "polycap-onnx.json").read_text())
    assert manifest["quantization"] == "dynamic int8 weights (image encoder only)"
    quantized = {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger"}
    assert _op_types(out / "image_encoder.onnx") & quantized
    assert not _op_types(out / "decoder.onnx") & quantized
    assert not _op_types(out / "mapper.onnx") & quantized
    captions = caption_json(capsys, out, made["images"])
    assert len(captions) == len(list(made["images"].glob("*.png"))) and all(captions)


@pytest.mark.parametrize(
    "extra, fragment",
    [(["--no-encoder"], "--int8-encoder"), (["--int8"], "--int8-encoder")],
)
def test_export_int8_encoder_conflicts(capsys, made, tmp_path, extra, fragment) -> None:
    args = ["export", str(made["checkpoint"]), "--to", "onnx", str(tmp_path / "o")]
    result = run_cli([*args, "--int8-encoder", *extra], capsys)
    assert_one_line_error(result, fragment)
