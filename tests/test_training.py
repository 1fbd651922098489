"""Training on tiny local models: it learns, checkpoints, resumes exactly, refuses bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from polycap.builtin.english import ENGLISH
from polycap.demo.runner import build_tiny_models
from polycap.errors import BadInput, UnknownName
from polycap.offline.synthetic import make_synthetic_set
from polycap.train.trainer import TRAINER_STATE, TrainConfig, train


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | str]:
    """A small English synthetic set and tiny models built for it (shared by this module)."""
    root = tmp_path_factory.mktemp("training")
    split = make_synthetic_set(ENGLISH, root / "data", 48, seed=1)
    captions = [r["caption"] for r in json.loads(split.train_file.read_text())]
    models = build_tiny_models(ENGLISH, captions, root / "models", seed=0)
    return {"train_file": split.train_file, **models}


def config_for(setup: dict, output: Path, **overrides) -> TrainConfig:
    options = dict(
        language="en",
        data=setup["train_file"],
        output=output,
        encoder=setup["encoder"],
        pretrained=setup["pretrained"],
        lm=setup["lm"],
        train_lm=True,
        epochs=2,
        batch_size=16,
        lr=1e-3,
        prefix_length=2,
        val_fraction=0.2,
        seed=3,
        device="cpu",
        progress=False,
    )
    options.update(overrides)
    return TrainConfig(**options)


def test_training_lowers_the_loss_and_writes_checkpoints(tiny_setup, tmp_path):
    result = train(config_for(tiny_setup, tmp_path / "run", epochs=3))
    losses = [record["train_loss"] for record in result.history]
    assert len(result.history) == 3 and losses[-1] < losses[0]
    assert all(record["val_loss"] == record["val_loss"] for record in result.history)  # not NaN
    assert (result.model_dir / "polycap.json").is_file()
    recorded = json.loads((result.model_dir / "polycap.json").read_text())
    assert recorded["training"]["epochs"] == 3 and recorded["language"] == "en"
    assert recorded["standardize_features"] is True
    from polycap.model.captioner import Captioner

    reloaded = Captioner.load(result.model_dir)
    assert reloaded.feature_mean is not None and reloaded.feature_mean.shape == (64,)
    assert bool((reloaded.feature_std > 0).all())
    checkpoints = sorted((tmp_path / "run").glob("checkpoint-*"))
    assert len(checkpoints) == 2  # keep_checkpoints prunes the oldest
    assert all((path / TRAINER_STATE).is_file() for path in checkpoints)


# Resuming after a kill: tests/test_training_kill.py (a subprocess, SIGKILLed).


def test_frozen_lm_trains_only_the_mapper(tiny_setup, tmp_path):
    result = train(
        config_for(tiny_setup, tmp_path / "frozen", epochs=1, train_lm=False, save_lm=True)
    )
    recorded = json.loads((result.model_dir / "polycap.json").read_text())
    assert recorded["train_lm"] is False
    from transformers import AutoModelForCausalLM

    original = AutoModelForCausalLM.from_pretrained(tiny_setup["lm"])
    saved = AutoModelForCausalLM.from_pretrained(result.model_dir / "lm")
    for (name, before), after in zip(original.state_dict().items(), saved.state_dict().values()):
        torch.testing.assert_close(after, before, msg=name)


def test_unknown_language_is_refused_with_a_hint(tiny_setup, tmp_path):
    with pytest.raises(UnknownName, match="Did you mean 'en'"):
        train(config_for(tiny_setup, tmp_path / "run", language="eng"))


def test_unknown_precision_is_bad_input(tiny_setup, tmp_path):
    with pytest.raises(BadInput, match="precision"):
        train(config_for(tiny_setup, tmp_path / "run", precision="fp8"))


def test_caption_file_whose_images_are_all_corrupt_is_bad_input(tiny_setup, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for index in range(3):
        (images / f"{index}.png").write_bytes(b"not a png at all")
    captions = [{"caption": "a red circle", "id": i, "image_name": f"{i}.png"} for i in range(3)]
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    with pytest.raises(BadInput, match="none of its images"):
        train(config_for(tiny_setup, tmp_path / "run", data=tmp_path / "captions.json"))


def test_validation_cider_d_is_the_score_caption_and_eval_give(tiny_setup, tmp_path):
    """The last epoch's validation CIDEr-D (``--eval-metrics``) is the score that captioning the
    validation images with the final model and scoring them independently gives."""
    from polycap.data.captions import load_captions, split_by_image
    from polycap.eval.runner import EvalContext, evaluate
    from polycap.inference.pipeline import CaptionPipeline
    from polycap.model.captioner import Captioner
    from polycap.model.generation import GenerationConfig

    config = config_for(tiny_setup, tmp_path / "run", lr=3e-3, eval_metrics=["cider-d"])
    result = train(config)
    last = result.history[-1]["val_CIDEr-D"]
    assert last > 0

    _, val = split_by_image(load_captions(config.data), config.val_fraction, seed=config.seed)
    images = sorted(val.images())
    model = Captioner.load(result.model_dir)
    captioned = CaptionPipeline(model).caption_files(
        images, GenerationConfig(max_length=40), progress=False
    )
    by_image = dict(zip(captioned.paths, captioned.captions))
    context = EvalContext(
        pack=model.pack,
        keys=[str(path) for path in images],
        predictions=[by_image[path][0] for path in images],
        references=[[r.caption for r in val.records if r.image == path] for path in images],
    )
    assert last == pytest.approx(evaluate(context, ["cider-d"]).scores["CIDEr-D"])
