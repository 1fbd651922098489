"""Checkpoints as a user moves and damages them: load from any folder, one line when broken."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers_lm import english_pack, lm_files, make_registries
from PIL import Image

from polycap.errors import BadInput


def _captioner_on(encoder, registries, prefix_length: int = 2):
    from polycap.model.captioner import Captioner

    pack = english_pack()
    tokenizer_dir, lm_dir = lm_files()
    return Captioner.build(
        pack=pack,
        tokenizer=pack.load_tokenizer(str(tokenizer_dir)),
        lm=pack.load_decoder(str(lm_dir)),
        encoder_info=encoder.encoder_spec,
        prefix_length=prefix_length,
        train_lm=True,
        registries=registries,
    )


def test_a_checkpoint_loads_from_any_folder_and_carries_its_encoder(
    tmp_path: Path, tiny_clip, monkeypatch: pytest.MonkeyPatch
) -> None:
    from polycap.data.encoding import load_encoder
    from polycap.inference.pipeline import CaptionPipeline
    from polycap.model.captioner import Captioner
    from polycap.model.generation import GenerationConfig

    work = tmp_path / "work"
    work.mkdir()
    shutil.copyfile(tiny_clip.weights, work / "clip.pt")
    monkeypatch.chdir(work)  # as the demo does: weights and run named relative to the cwd
    encoder = load_encoder(tiny_clip.name, pretrained="clip.pt")
    assert encoder.pretrained == str(work / "clip.pt")  # recorded absolute
    registries = make_registries(english_pack())
    _captioner_on(encoder, registries).save(Path("run") / "final")
    record = json.loads((work / "run" / "final" / "polycap.json").read_text())
    assert record["encoder"]["pretrained"] == str(work / "clip.pt")
    assert record["encoder"]["bundled"] == "encoder/clip.pt"
    assert (work / "run" / "final" / "encoder" / "clip.pt").read_bytes() == (
        tiny_clip.weights.read_bytes()
    )

    moved = tmp_path / "shared-elsewhere"
    work.rename(moved)  # the original weights file is gone: only the bundled copy is left
    elsewhere = tmp_path / "other-cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    image = elsewhere / "photo.png"
    Image.new("RGB", (40, 40), (10, 200, 30)).save(image)
    model = Captioner.load(moved / "run" / "final", registries=registries)
    done = CaptionPipeline(model).caption_files(
        [image], GenerationConfig(max_length=4), progress=False
    )
    assert done.paths == [image] and len(done.captions[0]) == 1
    # a checkpoint saved from the loaded model bundles the weights again
    model.save(elsewhere / "copy")
    assert (elsewhere / "copy" / "encoder" / "clip.pt").is_file()


def test_missing_local_lm_folder_says_so(tmp_path: Path) -> None:
    pack = english_pack()
    for name in ("./no/such/lm", str(tmp_path / "missing-lm"), "~/no-such-polycap-lm"):
        with pytest.raises(BadInput) as error:
            pack.load_decoder(name)
        assert str(error.value) == f"{name}: no such folder (cannot load decoder from it)"
        with pytest.raises(BadInput, match="no such folder"):
            pack.load_tokenizer(name)


def test_corrupt_lm_weights_are_one_line(tmp_path: Path) -> None:
    pack = english_pack()
    _, lm_dir = lm_files()
    broken = shutil.copytree(lm_dir, tmp_path / "lm")
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(BadInput) as error:
        pack.load_decoder(str(broken))
    assert str(error.value).startswith(f"{weights}: corrupt or truncated weights (")
    assert "\n" not in str(error.value)
