"""Resume, proven: ``polycap train`` runs as a subprocess, is SIGKILLed at a step, while a
checkpoint is being written, and during the final save; ``--resume`` then runs only the
remaining batches and ends bit-identical (mapper, LM, history) to a run never interrupted.

The kill moments are made deterministic by the trainer's test hook (``POLYCAP_TRAIN_HOOK``):
at the chosen point the process writes a marker file and waits; this test then kills it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_setup import training_setup

ROOT = Path(__file__).resolve().parents[1]
EPOCHS, BATCH, SAVE_EVERY = 2, 8, 2


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return training_setup(tmp_path_factory.mktemp("kill"), 48, seed=1)


def train_args(setup: dict[str, str], output: Path, *extra: str) -> list[str]:
    return [
        *("train", "--lang", "en", "--data", setup["data"], "--output", str(output)),
        *("--encoder", setup["encoder"], "--pretrained", setup["pretrained"]),
        *("--lm", setup["lm"], "--train-lm", "--prefix-length", "2", "--seed", "3"),
        *("--epochs", str(EPOCHS), "--batch-size", str(BATCH), "--lr", "1e-3"),
        *("--val-fraction", "0.2", "--save-every", str(SAVE_EVERY), "--device", "cpu", "--json"),
        *extra,
    ]


def environment(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **extra}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def polycap(args: list[str]) -> dict:
    """Run the real ``polycap`` entry point in this process to the end; its JSON result.
    (Only the killed runs need a process of their own; torch runs on one thread in both.)"""
    from polycap.cli import main

    out, saved = io.StringIO(), sys.argv
    sys.argv = ["polycap", *args]
    try:
        with contextlib.redirect_stdout(out):
            main()
    except SystemExit as exit_:
        assert not exit_.code, out.getvalue()[-2000:]
    finally:
        sys.argv = saved
    return json.loads(out.getvalue())


def run_until_killed(args: list[str], hook: str, marker: Path) -> None:
    """Start ``polycap ARGS`` with a pause hook, wait until it pauses there, SIGKILL it."""
    process = subprocess.Popen(
        [sys.executable, "-m", "polycap", *args],
        env=environment(POLYCAP_TRAIN_HOOK=hook, POLYCAP_TRAIN_HOOK_FILE=str(marker)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not marker.exists():
        if process.poll() is not None:
            pytest.fail(f"exited ({process.returncode}) before {hook}: {process.stderr.read()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"never reached {hook}")
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    process.stderr.close()
    assert process.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def straight(setup, tmp_path_factory) -> tuple[Path, dict]:
    """The uninterrupted run everything is compared with."""
    output = tmp_path_factory.mktemp("straight") / "run"
    return output, polycap(train_args(setup, output))


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    found = {f"mapper.{k}": v for k, v in load_file(model_dir / "mapper.safetensors").items()}
    lm = load_file(model_dir / "lm" / "model.safetensors")
    return {**found, **{f"lm.{k}": v for k, v in lm.items()}}


def assert_bit_identical(expected: Path, actual: Path) -> None:
    left, right = weights(expected), weights(actual)
    assert left.keys() == right.keys() and any(k.startswith("lm.") for k in left)
    for name, tensor in left.items():
        assert torch.equal(tensor, right[name]), name


def stale(output: Path) -> list[str]:
    return sorted(p.name for p in output.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


@pytest.mark.parametrize(
    ("hook", "latest_step", "stale_prefix"),
    [
        ("pause@step:11", 10, None),  # mid epoch 2; the newest checkpoint is step 10's
        ("pause@checkpoint:4", 6, ".checkpoint-00000008.tmp-"),  # epoch 1's end checkpoint
        ("pause@final:1", 16, ".final.tmp-"),  # everything trained, final half-written
    ],
    ids=["at-a-step", "while-checkpointing", "during-the-final-save"],
)
def test_killed_run_resumes_to_the_uninterrupted_result(
    setup, straight, tmp_path, hook, latest_step, stale_prefix
):
    straight_dir, expected = straight
    total = expected["batches_run"]
    assert total == EPOCHS * 8  # 61 training captions in batches of 8
    output = tmp_path / "run"
    run_until_killed(train_args(setup, output), hook, tmp_path / "paused")
    assert not (output / "final").exists()
    checkpoints = sorted(p.name for p in output.glob("checkpoint-*"))
    assert checkpoints[-1] == f"checkpoint-{latest_step:08d}"
    leftovers = stale(output)
    if stale_prefix:
        assert [name for name in leftovers if name.startswith(stale_prefix)], leftovers

    resumed = polycap(train_args(setup, output, "--resume"))

    assert resumed["batches_run"] == total - latest_step  # one optimizer step per batch
    assert resumed["resumed_from"] == str(output / f"checkpoint-{latest_step:08d}")
    assert resumed["history"] == expected["history"]  # exactly, the interrupted epoch too
    assert_bit_identical(straight_dir / "final", output / "final")
    assert stale(output) == []


def test_killed_while_saving_best_resumes_to_the_same_best(setup, tmp_path_factory, tmp_path):
    """``--best-metric``: SIGKILLed inside the second write of best/ (epoch 2's), the old best/
    stays whole; the resumed run keeps the same best epoch and ends with the same best/."""
    extra = ("--epochs", "3", "--best-metric", "val_loss")
    straight_dir = tmp_path_factory.mktemp("straight-best") / "run"
    expected = polycap(train_args(setup, straight_dir, *extra))
    assert expected["best"]["epoch"] >= 2  # (else best/ is written once and never paused in)
    output = tmp_path / "run"
    run_until_killed(train_args(setup, output, *extra), "pause@best:2", tmp_path / "paused")
    first = json.loads((output / "best" / "polycap.json").read_text())["training"]["best"]
    assert first["epoch"] == 1  # the previous best/ intact, epoch 2's half-written beside it
    assert [name for name in stale(output) if name.startswith(".best.tmp-")]

    resumed = polycap(train_args(setup, output, *extra, "--resume"))

    assert resumed["history"] == expected["history"]
    assert {**resumed["best"], "model": None} == {**expected["best"], "model": None}
    assert_bit_identical(straight_dir / "best", output / "best")
    assert_bit_identical(straight_dir / "final", output / "final")
    assert stale(output) == []
