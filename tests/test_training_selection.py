"""``polycap train --best-metric / --early-stop / --log-with``: best/ holds the best epoch's
weights, early stopping stops at the right epoch (also across a resume), trackers log the
history, and bad names are one line before any training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_runner import run_cli
from safetensors.torch import load_file
from tiny_setup import training_setup

from polycap.train.trainer import TrainConfig, train


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return training_setup(tmp_path_factory.mktemp("selection"), 40, seed=4)


def config_for(setup: dict[str, str], output: Path, **overrides) -> TrainConfig:
    options = dict(
        language="en",
        data=Path(setup["data"]),
        output=output,
        encoder=setup["encoder"],
        pretrained=setup["pretrained"],
        lm=setup["lm"],
        train_lm=True,
        epochs=3,
        batch_size=16,
        lr=3e-3,
        prefix_length=2,
        val_fraction=0.3,
        seed=3,
        device="cpu",
        progress=False,
        keep_checkpoints=10,
    )
    options.update(overrides)
    return TrainConfig(**options)


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    mapper = {f"mapper.{k}": v for k, v in load_file(model_dir / "mapper.safetensors").items()}
    lm = load_file(model_dir / "lm" / "model.safetensors")
    return {**mapper, **{f"lm.{k}": v for k, v in lm.items()}}


def same_weights(left: Path, right: Path) -> bool:
    a, b = weights(left), weights(right)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("metric", "column", "pick"), [("val_loss", "val_loss", min), ("wer", "val_WER", min)]
)
def test_best_holds_the_weights_of_the_best_epoch(setup, tmp_path, metric, column, pick):
    metrics = ["wer"] if metric == "wer" else []
    output = tmp_path / "run"
    result = train(config_for(setup, output, best_metric=metric, eval_metrics=metrics))
    scores = [record[column] for record in result.history]
    best_epoch = scores.index(pick(scores)) + 1  # the first epoch with the best score
    assert result.best["epoch"] == best_epoch and result.best["score"] == pick(scores)
    assert result.best["metric"] == column
    step = result.history[best_epoch - 1]["step"]
    assert same_weights(output / "best", output / f"checkpoint-{step:08d}")
    other = [e for e in range(1, 4) if e != best_epoch][0]  # and not another epoch's
    other_step = result.history[other - 1]["step"]
    assert not same_weights(output / "best", output / f"checkpoint-{other_step:08d}")
    record = json.loads((output / "best" / "polycap.json").read_text())["training"]
    assert record["best"] == {k: v for k, v in result.best.items() if k != "model"}
    assert record["epochs_done"] == best_epoch
    final = json.loads((output / "final" / "polycap.json").read_text())["training"]
    assert final["best"]["epoch"] == best_epoch and final["stopped_early"] is None


def test_higher_is_better_for_cider_d(setup, tmp_path):
    result = train(
        config_for(setup, tmp_path / "run", best_metric="cider-d", eval_metrics=["cider-d"])
    )
    scores = [record["val_CIDEr-D"] for record in result.history]
    assert result.best["score"] == max(scores) and result.best["metric"] == "val_CIDEr-D"
    assert result.best["epoch"] == scores.index(max(scores)) + 1


def test_early_stop_on_a_plateau_and_across_a_resume(setup, tmp_path):
    """lr 0: the model never changes, val_loss is the same every epoch; epoch 1 stays the best
    and with --early-stop 2 the run stops after epoch 3 (two epochs without improvement)."""
    straight = train(config_for(setup, tmp_path / "straight", lr=0.0, epochs=6, early_stop=2))
    assert [r["epoch"] for r in straight.history] == [1, 2, 3]
    assert len({r["val_loss"] for r in straight.history}) == 1  # the plateau
    assert straight.stopped_early == 3 and straight.best["epoch"] == 1
    final = json.loads((straight.model_dir / "polycap.json").read_text())["training"]
    assert final["stopped_early"] == 3 and final["best"]["epoch"] == 1

    output = tmp_path / "resumed"  # 2 epochs, then resumed with --epochs 6: stops at 3 too
    first = train(config_for(setup, output, lr=0.0, epochs=2, early_stop=2))
    assert first.stopped_early is None and len(first.history) == 2
    resumed = train(config_for(setup, output, lr=0.0, epochs=6, early_stop=2), resume=True)
    assert resumed.stopped_early == 3 and resumed.batches_run == straight.batches_run // 3
    assert resumed.history == straight.history and resumed.best == {
        **straight.best,
        "model": str(output / "best"),
    }
    again = train(config_for(setup, output, lr=0.0, epochs=6, early_stop=2), resume=True)
    assert again.batches_run == 0 and again.stopped_early == 3  # a stopped run stays stopped


def cli_args(setup: dict[str, str], output: Path, *extra: str) -> list[str]:
    return [
        *("train", "--lang", "en", "--data", setup["data"], "--output", str(output)),
        *("--encoder", setup["encoder"], "--pretrained", setup["pretrained"], "--lm", setup["lm"]),
        *("--prefix-length", "2", "--epochs", "2", "--batch-size", "16", "--lr", "3e-3"),
        *("--train-lm", "--val-fraction", "0.3", "--device", "cpu", *extra),
    ]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--best-metric", "cider-d"), "--best-metric cider-d: not among the validation scores"),
        (
            ("--eval-metrics", "bleu", "--best-metric", "wer"),
            "--best-metric wer: not among the validation scores (--eval-metrics: bleu)",
        ),
        (("--log-with", "tensorbored"), "--log-with tensorbored: not a tracker; choose from"),
        (("--early-stop", "2", "--val-fraction", "0"), "--early-stop: needs a validation split"),
        (("--log-with", "wandb"), "--log-with wandb: the wandb package is not installed"),
    ],
    ids=["not-evaluated", "another-metric", "unknown-tracker", "no-validation", "not-installed"],
)
def test_bad_names_are_one_line_before_training(setup, tmp_path, capsys, extra, message):
    if extra[-1] == "wandb":
        pytest.importorskip("accelerate")
        from accelerate.utils import is_wandb_available

        if is_wandb_available():
            pytest.skip("wandb is installed here")
    result = run_cli(cli_args(setup, tmp_path / "run", *extra), capsys)
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.err
    assert not (tmp_path / "run").exists()  # refused before any work


def test_tensorboard_logs_equal_the_history(setup, tmp_path, capsys):
    """Each epoch's history record (learning rate included) at its optimizer step (issue 24:
    tracker steps count optimizer steps, not epochs)."""
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (extra: trackers)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    output = tmp_path / "run"
    args = cli_args(setup, output, "--eval-metrics", "bleu", "--best-metric", "bleu", "--json")
    result = run_cli([*args, "--log-with", "tensorboard"], capsys)
    assert result.code == 0, result.err
    answer = json.loads(result.out)
    history = answer["history"]
    assert answer["best"]["metric"] == "val_BLEU-4"
    (events,) = (output / "logs" / "polycap").glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    expected = {k for k in history[0] if k not in ("epoch", "step") and history[0][k] is not None}
    assert expected <= tags and {"train_loss", "val_loss", "val_BLEU-4"} <= expected
    assert "lr" in expected  # the learning rate is logged with each epoch
    for tag in [*expected, "epoch"]:  # at optimizer steps, as Accelerate's trainers count
        logged = [(event.step, event.value) for event in accumulator.Scalars(tag)]
        wanted = [(r["step"], float(torch.tensor(r[tag], dtype=torch.float32))) for r in history]
        assert logged == wanted, tag
