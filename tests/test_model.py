"""The captioner: loss masking, frozen LM, atomic self-describing save, clear load errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers_lm import (
    collate,
    english_pack,
    lm_files,
    make_registries,
    new_captioner,
    trained_captioner,
)

import polycap
from polycap.errors import BadInput, UnknownName
from polycap.model.captioner import Captioner
from polycap.model.generation import GenerationConfig, caption_features

TEXTS = ["a red square", "three yellow squares on a dark background", "a blue circle"]


@pytest.fixture(scope="module")
def model() -> Captioner:
    return new_captioner()


def batch(model: Captioner, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids, mask = collate(model, TEXTS)
    features = torch.randn(len(TEXTS), 16, generator=torch.Generator().manual_seed(seed))
    return features, ids, mask


# -- parameters ---------------------------------------------------------------------------------
def test_frozen_lm_trains_only_the_mapper(model: Captioner) -> None:
    trainable = {id(p) for p in model.trainable_parameters()}
    assert trainable == {id(p) for p in model.mapper.parameters()}
    assert {id(p) for p in model.parameters() if p.requires_grad} == trainable
    assert not any(p.requires_grad for p in model.lm.parameters())
    model.train()
    assert model.mapper.training and not model.lm.training  # frozen LM: no dropout
    model.eval()


def test_frozen_lm_gets_no_gradients(model: Captioner) -> None:
    features, ids, mask = batch(model)
    model(features, ids, mask).loss.backward()
    assert all(p.grad is not None for p in model.mapper.parameters())
    assert all(p.grad is None for p in model.lm.parameters())
    model.zero_grad(set_to_none=True)


def test_train_lm_makes_the_lm_trainable() -> None:
    model = new_captioner(train_lm=True)
    trainable = {id(p) for p in model.trainable_parameters()}
    assert {id(p) for p in model.lm.parameters()} <= trainable
    model.train()
    assert model.lm.training


# -- forward ------------------------------------------------------------------------------------
def test_loss_covers_caption_tokens_only(model: Captioner) -> None:
    features, ids, mask = batch(model)
    out = model(features, ids, mask)
    assert out.logits.shape == (*ids.shape, len(model.tokenizer))
    # by hand: full LM logits over [prefix; tokens], positions P-1 .. P+T-2 predict tokens
    with torch.no_grad():
        prefix = model.prefix(features)
        embeds = torch.cat([prefix, model.embed_tokens(ids)], dim=1)
        full_mask = torch.cat([torch.ones_like(mask[:, :1]).expand(-1, 4), mask], dim=1)
        logits = model.lm(inputs_embeds=embeds, attention_mask=full_mask).logits
    token_logits = logits[:, model.prefix_length - 1 : -1]
    assert torch.allclose(token_logits, out.logits, atol=1e-5)
    expected = F.cross_entropy(token_logits[mask.bool()], ids[mask.bool()])
    assert torch.allclose(out.loss, expected, atol=1e-6)


def test_padding_does_not_change_the_loss(model: Captioner) -> None:
    features, ids, mask = batch(model)
    assert (mask == 0).any()
    other = ids.masked_fill(mask == 0, 7)
    with torch.no_grad():
        assert torch.allclose(model(features, ids, mask).loss, model(features, other, mask).loss)
        wider = torch.cat([other, torch.full_like(other[:, :3], 9)], dim=1)
        wider_mask = torch.cat([mask, torch.zeros_like(mask[:, :3])], dim=1)
        assert torch.allclose(
            model(features, ids, mask).loss, model(features, wider, wider_mask).loss, atol=1e-6
        )


def test_prefix_normalises_features(model: Captioner) -> None:
    features = torch.randn(2, 16)
    with torch.no_grad():
        assert model.prefix(features).shape == (2, 4, 32)
        assert torch.allclose(model.prefix(features), model.prefix(features * 5.0), atol=1e-6)


# -- save / load --------------------------------------------------------------------------------
def test_save_load_round_trip_frozen_lm(tmp_path: Path) -> None:
    model, features, _ = trained_captioner()
    frozen = new_captioner(seed=3)
    # give the frozen one the trained LM so that its captions are meaningful
    frozen.lm.load_state_dict(model.lm.state_dict())
    frozen.lm.requires_grad_(False)
    directory = frozen.save(tmp_path / "ckpt", training={"epochs": 1})
    assert not (directory / "lm").exists()  # the LM is named, not copied
    loaded = Captioner.load(directory, registries=make_registries(english_pack()))
    for name, tensor in frozen.mapper.state_dict().items():
        assert torch.equal(tensor, loaded.mapper.state_dict()[name])
    assert loaded.config == frozen.config
    assert not any(p.requires_grad for p in loaded.lm.parameters())


def test_save_load_round_trip_gives_identical_captions(tmp_path: Path) -> None:
    model, features, _ = trained_captioner()
    directory = model.save(tmp_path / "ckpt", training={"lr": 0.01, "path": tmp_path})
    loaded = Captioner.load(directory, registries=make_registries(english_pack()))
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    for config in (GenerationConfig(), GenerationConfig(beams=3, num_captions=2)):
        assert caption_features(loaded, features, config) == caption_features(
            model, features, config
        )
    assert not loaded.training
    assert loaded.trainable_parameters()  # train_lm checkpoint: LM and mapper trainable again


def test_checkpoint_is_self_describing(tmp_path: Path) -> None:
    model = new_captioner(
        mapper="transformer", mapper_options={"num_layers": 1, "num_heads": 2}, prefix_length=3
    )
    directory = model.save(tmp_path / "ckpt", training={"epochs": 2})
    record = json.loads((directory / "polycap.json").read_text())
    assert record["polycap_version"] == polycap.__version__
    assert record["encoder"] == {
        "backend": "open_clip",
        "name": "tiny",
        "pretrained": None,
        "embed_dim": 16,
    }
    assert record["mapper"]["kind"] == "transformer"
    assert record["mapper"]["options"]["num_layers"] == 1
    assert record["prefix_length"] == 3
    assert record["language"] == "en"
    assert record["lm"] == str(lm_files()[1].resolve())
    assert record["train_lm"] is False and record["normalize_features"] is True
    assert record["training"] == {"epochs": 2}
    assert (directory / "mapper.safetensors").is_file()
    assert (directory / "tokenizer" / "tokenizer.json").is_file()
    loaded = Captioner.load(directory, registries=make_registries(english_pack()))
    assert loaded.mapper.options() == model.mapper.options()
    features = torch.randn(2, 16)
    with torch.no_grad():
        assert torch.allclose(loaded.prefix(features), model.eval().prefix(features), atol=1e-6)


def test_save_replaces_atomically_and_leaves_no_temp(tmp_path: Path) -> None:
    model = new_captioner()
    target = tmp_path / "ckpt"
    model.save(target, training={"run": 1})
    model.save(target, training={"run": 2})
    assert json.loads((target / "polycap.json").read_text())["training"] == {"run": 2}

    def crash(_: Path) -> None:
        raise RuntimeError("killed while writing")

    with pytest.raises(RuntimeError):
        model.save(target, training={"run": 3}, extra=crash)
    assert json.loads((target / "polycap.json").read_text())["training"] == {"run": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_save_refuses_to_overwrite_other_directories(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"x")
    with pytest.raises(BadInput, match="refusing to overwrite"):
        new_captioner().save(tmp_path / "photos")
    assert (tmp_path / "photos" / "cat.jpg").exists()


# -- load errors --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return new_captioner().save(tmp_path_factory.mktemp("saved") / "ckpt")


def copy_of(saved: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(saved, tmp_path / "copy"))


def test_not_a_checkpoint(tmp_path: Path) -> None:
    registries = make_registries(english_pack())
    with pytest.raises(BadInput, match="not a polycap checkpoint \\(no polycap.json\\)"):
        Captioner.load(tmp_path, registries=registries)
    with pytest.raises(BadInput, match="no such checkpoint"):
        Captioner.load(tmp_path / "missing", registries=registries)


def test_corrupt_config(saved: Path, tmp_path: Path) -> None:
    directory = copy_of(saved, tmp_path)
    (directory / "polycap.json").write_text("{not json")
    with pytest.raises(BadInput, match="polycap.json: not valid JSON"):
        Captioner.load(directory, registries=make_registries(english_pack()))
    (directory / "polycap.json").write_text('{"language": "en"}')
    with pytest.raises(BadInput, match="missing or invalid"):
        Captioner.load(directory, registries=make_registries(english_pack()))


def test_missing_or_corrupt_weights(saved: Path, tmp_path: Path) -> None:
    directory = copy_of(saved, tmp_path)
    weights = directory / "mapper.safetensors"
    weights.write_bytes(b"garbage")
    with pytest.raises(BadInput, match="mapper.safetensors: unreadable weights"):
        Captioner.load(directory, registries=make_registries(english_pack()))
    weights.unlink()
    with pytest.raises(BadInput, match="mapper.safetensors: missing"):
        Captioner.load(directory, registries=make_registries(english_pack()))


def test_language_pack_not_installed(saved: Path, tmp_path: Path) -> None:
    ja = english_pack("ja")
    model = new_captioner(pack=ja, registries=make_registries(ja))
    directory = model.save(tmp_path / "ja-model")
    with pytest.raises(UnknownName) as error:
        Captioner.load(directory, registries=make_registries(english_pack()))
    assert str(error.value) == (
        f"{directory} was trained for language 'ja', but no language pack 'ja' is installed. "
        "Run: polycap plugins install ja"
    )
    with pytest.raises(BadInput, match="trained for language 'ja', not 'ru'"):
        Captioner.load(directory, expected_language="ru", registries=make_registries(ja))
    loaded = Captioner.load(directory, expected_language="ja", registries=make_registries(ja))
    assert loaded.pack is ja


def test_unknown_mapper_kind(saved: Path, tmp_path: Path) -> None:
    directory = copy_of(saved, tmp_path)
    record = json.loads((directory / "polycap.json").read_text())
    record["mapper"]["kind"] = "mlpp"
    (directory / "polycap.json").write_text(json.dumps(record))
    with pytest.raises(UnknownName, match="uses the mapper 'mlpp'.*Did you mean 'mlp'"):
        Captioner.load(directory, registries=make_registries(english_pack()))
