"""``polycap train --eval-metrics``: validation captions scored every epoch, in the history;
``--stop-token``: captions end with a token of the checkpoint's choosing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_runner import run_cli
from tiny_setup import training_setup


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return training_setup(tmp_path_factory.mktemp("val-metrics"), 30, seed=2)


def args(setup: dict[str, str], output: Path, metrics: str) -> list[str]:
    return [
        *("train", "--lang", "en", "--data", setup["data"], "--output", str(output)),
        *("--encoder", setup["encoder"], "--pretrained", setup["pretrained"], "--lm", setup["lm"]),
        *("--prefix-length", "2", "--epochs", "2", "--batch-size", "8", "--lr", "3e-3"),
        *("--train-lm", "--val-fraction", "0.3", "--device", "cpu", "--eval-metrics", metrics),
    ]


def test_history_has_validation_cider_per_epoch(setup, tmp_path, capsys) -> None:
    result = run_cli([*args(setup, tmp_path / "run", "cider-d,bleu"), "--json"], capsys)
    assert result.code == 0, result.err
    history = json.loads(result.out)["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    for record in history:
        assert isinstance(record["val_CIDEr-D"], float) and record["val_CIDEr-D"] >= 0.0
        assert 0.0 <= record["val_BLEU-4"] <= 1.0
    model = Path(json.loads(result.out)["model"])
    saved = json.loads((model / "polycap.json").read_text())["training"]["history"]
    assert saved == history  # recorded in the checkpoint too


def test_table_shows_the_scores_and_a_misspelt_metric_fails_first(setup, tmp_path, capsys):
    shown = run_cli(args(setup, tmp_path / "run", "cider-d"), capsys)
    assert shown.code == 0, shown.err
    assert "val CIDEr-D" in shown.out
    result = run_cli(args(setup, tmp_path / "other", "cider"), capsys)
    assert result.code == 2 and "Did you mean 'cider-d'?" in result.err
    assert not (tmp_path / "other").exists()  # refused before any work


def test_stop_token_is_trained_recorded_and_ends_references(setup, tmp_path, capsys) -> None:
    from polycap.model.captioner import Captioner

    run = [*args(setup, tmp_path / "run", "bleu"), "--stop-token", ".", "--epochs", "1", "--json"]
    run += ["--raw-features", "--no-l2-normalize"]  # ClipCap's way: features as they come
    result = run_cli(run, capsys)
    assert result.code == 0, result.err
    model = Captioner.load(json.loads(result.out)["model"])
    assert model.config["stop_token"] == "."
    assert model.config["normalize_features"] is False and model.feature_mean is None
    stop = model.tokenizer.convert_tokens_to_ids(".")
    assert model.end_token_id == stop
    ids = model.encode_caption("two red circles")
    assert ids[-1] == stop and model.pack.end_token_id(model.tokenizer) not in ids
    assert model.encode_caption("two red circles.") == ids  # one stop token, not two
    assert model.decode_caption(ids[:-1]) == "two red circles."
