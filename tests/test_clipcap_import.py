"""``polycap import clipcap``: official ClipCap state dicts give the official captions exactly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from cli_runner import run_cli
from clipcap_reference import ClipCaptionModel, fit, generate2, generate_beam
from helpers_lm import CLIP_DIM, lm_files, torch_threads

from polycap.errors import BadInput
from polycap.interop.clipcap import import_clipcap
from polycap.model.captioner import Captioner
from polycap.model.generation import GenerationConfig, caption_features, generate_ids

ENTRY_LENGTH = 16  # generate2 / generate_beam's entry_length (67 officially; tiny LM: 64 positions)
CAPTIONS = [
    "a red circle.",
    "two blue squares on a dark background.",
    "there is a green triangle here.",
    "a picture of three yellow circles.",
]
KINDS = {"mlp": 4, "transformer": 3, "linear": 12}  # kind -> prefix length (linear: > 10)


@pytest.fixture(scope="module")
def base_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny GPT-2 with its tokenizer in one folder, as ``--lm`` takes it."""
    tokenizer_dir, lm_dir = lm_files()
    folder = tmp_path_factory.mktemp("base-lm")
    shutil.copytree(lm_dir, folder, dirs_exist_ok=True)
    shutil.copytree(tokenizer_dir, folder, dirs_exist_ok=True)
    return folder


def official_model(base_lm: Path, kind: str) -> ClipCaptionModel:
    """A ClipCaptionModel fitted (mapper and GPT-2: a frozen random tiny GPT-2 barely listens
    to its prefix) so that it writes the captions, each ending with its "."."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    torch.manual_seed(1)
    gpt = GPT2LMHeadModel.from_pretrained(str(base_lm))
    model = ClipCaptionModel(gpt, KINDS[kind], CLIP_DIM, kind)
    tokenizer = AutoTokenizer.from_pretrained(str(base_lm))
    ids = [tokenizer.encode(text) for text in CAPTIONS]
    with torch_threads(1):
        fit(model, features()[: len(CAPTIONS)], ids, steps=40)
    return model


def strip(ids: list[int], stop: int) -> list[int]:
    """Official tokens without the final stop token (polycap returns ids without it)."""
    return ids[:-1] if ids and ids[-1] == stop else ids


def features() -> torch.Tensor:
    """Raw CLIP-like features (norm ~12, not normalised): the training images, then two new."""
    return torch.randn(len(CAPTIONS) + 2, CLIP_DIM, generator=torch.Generator().manual_seed(3)) * 3


@pytest.fixture(scope="module", params=list(KINDS))
def imported(request, base_lm: Path, tmp_path_factory: pytest.TempPathFactory):
    """(kind, official model, imported polycap model, stop id) for each mapper kind."""
    kind = request.param
    model = official_model(base_lm, kind)
    folder = tmp_path_factory.mktemp(f"clipcap-{kind}")
    torch.save(model.state_dict(), folder / "weights.pt")
    out = import_clipcap(
        folder / "weights.pt", folder / "model", lm=str(base_lm), encoder="tiny", pretrained=None
    )
    ours = Captioner.load(out)
    from transformers import AutoTokenizer

    stop = AutoTokenizer.from_pretrained(str(base_lm)).encode(".")[0]  # as the official code
    return kind, model, ours, stop


def test_keys_are_the_official_ones(imported) -> None:
    kind, official, ours, _ = imported
    keys = set(official.state_dict())
    assert any(k.startswith("gpt.transformer.h.0.") for k in keys)
    expected = {
        "mlp": "clip_project.model.2.weight",
        "linear": "clip_project.weight",
        "transformer": "clip_project.transformer.layers.1.attn.to_keys_values.weight",
    }
    assert expected[kind] in keys
    assert ours.config["mapper"]["kind"] == kind
    assert ours.config["prefix_length"] == KINDS[kind]


def test_checkpoint_records_raw_features_and_the_stop_token(imported) -> None:
    _, _, ours, stop = imported
    assert ours.config["normalize_features"] is False
    assert ours.feature_mean is None and "standardize_features" not in ours.config
    assert ours.config["stop_token"] == "."
    assert ours.tokenizer.convert_ids_to_tokens(stop) == "."


def test_greedy_equals_official_generate2(imported) -> None:
    _, official, ours, stop = imported
    feats = features()
    config = GenerationConfig(max_length=ENTRY_LENGTH)
    with torch_threads(1):
        got = generate_ids(ours, feats, config)
        texts = caption_features(ours, feats, config)
        for row in range(len(feats)):
            expected = generate2(official, stop, official.embed(feats[row : row + 1]), ENTRY_LENGTH)
            assert got[row][0] == strip(expected, stop)
            # polycap drops special tokens (<|endoftext|>) from the text; the official keeps them
            text = ours.tokenizer.decode(expected, skip_special_tokens=True)
            assert texts[row][0] == ours.pack.normalize(text)
    # the model learnt its captions: they end with the stop token, shorter than the cap
    assert [t[0] for t in texts[: len(CAPTIONS)]] == CAPTIONS


def test_beam_equals_official_generate_beam(imported) -> None:
    _, official, ours, stop = imported
    feats = features()
    config = GenerationConfig(max_length=ENTRY_LENGTH, beams=5, num_captions=5)
    with torch_threads(1):
        got = generate_ids(ours, feats, config)
        for row in range(len(feats)):
            expected = generate_beam(
                official, stop, official.embed(feats[row : row + 1]), ENTRY_LENGTH
            )
            assert got[row] == [strip(ids, stop) for ids in expected]


def test_cli_import_and_caption_json(base_lm: Path, tmp_path: Path, capsys) -> None:
    model = official_model(base_lm, "linear")
    torch.save(model.state_dict(), tmp_path / "w.pt")
    args = ["import", "clipcap", str(tmp_path / "w.pt"), "-o", str(tmp_path / "m")]
    result = run_cli([*args, "--lm", str(base_lm), "--encoder", "tiny", "--json"], capsys)
    assert result.code == 0, result.err
    assert json.loads(result.out)["model"] == str(tmp_path / "m")
    record = json.loads((tmp_path / "m" / "polycap.json").read_text())
    assert record["imported_from"]["format"] == "clipcap"
    assert (tmp_path / "m" / "lm").is_dir()  # the LM is bundled


def test_bad_files_are_one_line_errors(base_lm: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "other.pt")
    bad = {"clip_project.weight": torch.zeros(33, 16), "clip_project.bias": torch.zeros(33)}
    torch.save(bad, tmp_path / "shape.pt")
    good = {"clip_project.weight": torch.zeros(64, 16), "clip_project.bias": torch.zeros(64)}
    torch.save(good, tmp_path / "linear.pt")
    cases = {
        "junk.pt": "a text file, not weights",
        "other.pt": "unknown key 'encoder.weight'",
        "shape.pt": "not a multiple of the LM width 32",
        "missing.pt": "no such file",
    }
    for name, message in cases.items():
        args = ["import", "clipcap", str(tmp_path / name), "-o", str(tmp_path / "out")]
        result = run_cli([*args, "--lm", str(base_lm), "--encoder", "tiny"], capsys)
        assert result.code == 2, (name, result.err)
        assert message in result.err and "Traceback" not in result.err
        # (transformers' own "Loading weights" bar shows in-process: its env switch is read
        # at import, before the CLI sets it)
        lines = [line for line in result.err.strip().splitlines() if "Loading weights" not in line]
        assert len(lines) == 1, result.err
    with pytest.raises(BadInput, match="pass --encoder"):
        import_clipcap(tmp_path / "linear.pt", tmp_path / "out", lm=str(base_lm))


def test_imported_model_captions_images_as_the_official_pipeline(base_lm, tmp_path, capsys):
    """End to end: image files -> CLIP (raw features) -> official generate2, versus
    `polycap caption` on the imported checkpoint."""
    import open_clip
    from PIL import Image
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from polycap.offline.tiny import build_clip

    name, weights = build_clip(tmp_path / "clip", seed=0)
    clip, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=str(weights))
    clip.eval()
    paths = []
    for i, colour in enumerate([(220, 20, 20), (20, 20, 220), (20, 200, 20), (230, 230, 30)]):
        image = Image.new("RGB", (40, 40), (0, 0, 0))
        image.paste(colour, (5 * i, 5, 30, 35))
        paths.append(tmp_path / f"{i}.png")
        image.save(paths[-1])
    with torch.no_grad():
        pixels = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths])
        feats = clip.encode_image(pixels).float()
    torch.manual_seed(1)
    official = ClipCaptionModel(
        GPT2LMHeadModel.from_pretrained(str(base_lm)), 4, feats.shape[1], "mlp"
    )
    tokenizer = AutoTokenizer.from_pretrained(str(base_lm))
    with torch_threads(1):
        fit(official, feats, [tokenizer.encode(text) for text in CAPTIONS], steps=40)
    torch.save(official.state_dict(), tmp_path / "w.pt")
    out = import_clipcap(
        tmp_path / "w.pt", tmp_path / "m", lm=str(base_lm), encoder=name, pretrained=str(weights)
    )
    args = ["caption", *map(str, paths), "--model", str(out), "--json", "--max-length", "16"]
    result = run_cli([*args, "--device", "cpu"], capsys)
    assert result.code == 0, result.err
    got = [item["captions"][0] for item in json.loads(result.out)["captions"]]
    stop = tokenizer.encode(".")[0]
    with torch_threads(1):
        expected = [
            tokenizer.decode(generate2(official, stop, official.embed(f[None]), 16)) for f in feats
        ]
    assert got == [" ".join(text.split()) for text in expected]
