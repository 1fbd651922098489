"""Two processes (torchrun, gloo on the CPU) train like one process with the same global batch,
and a two-process run SIGKILLed mid-epoch resumes to where an uninterrupted one ends."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_setup import training_setup

from polycap.train.trainer import TrainConfig, train

pytestmark = pytest.mark.slow  # each launch starts 2 processes (about 30-60 s on 2 busy cores)

ROOT = Path(__file__).resolve().parents[1]
PER_PROCESS_BATCH = 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return training_setup(tmp_path_factory.mktemp("ddp"), 48, seed=1)


def options(setup: dict[str, str], output: Path) -> dict:
    """One run's options (frozen LM: the 1-process comparison has no dropout to differ)."""
    return dict(
        language="en",
        data=Path(setup["data"]),
        output=output,
        encoder=setup["encoder"],
        pretrained=setup["pretrained"],
        lm=setup["lm"],
        prefix_length=2,
        epochs=1,
        lr=1e-3,
        val_fraction=0.2,
        seed=3,
        save_every=2,
        device="cpu",
        progress=False,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(setup: dict[str, str], output: Path, *extra: str) -> list[str]:
    config = options(setup, output)
    return [
        *(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"),
        *("--master_addr", "127.0.0.1", "--master_port", str(free_port())),
        *("-m", "polycap", "train", "--lang", "en", "--data", setup["data"]),
        *("--output", str(output), "--encoder", setup["encoder"]),
        *("--pretrained", setup["pretrained"], "--lm", setup["lm"], "--prefix-length", "2"),
        *("--epochs", str(config["epochs"]), "--batch-size", str(PER_PROCESS_BATCH)),
        *("--lr", "1e-3", "--val-fraction", "0.2", "--seed", "3", "--save-every", "2"),
        *("--device", "cpu", "--json", *extra),
    ]


def environment(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "POLYCAP_DIST_TIMEOUT": "60", **extra}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def launch(args: list[str]) -> dict:
    done = subprocess.run(args, env=environment(), capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count('"history"') == 1  # only the main process reports
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def two_processes(setup, tmp_path_factory) -> tuple[Path, dict]:
    output = tmp_path_factory.mktemp("two") / "run"
    return output, launch(torchrun(setup, output))


def mapper(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(model_dir / "mapper.safetensors")


def test_two_processes_take_the_steps_of_one_process_with_the_same_global_batch(
    setup, two_processes, tmp_path
):
    output, result = two_processes
    assert result["processes"] == 2 and result["global_batch_size"] == 2 * PER_PROCESS_BATCH
    one = train(TrainConfig(**options(setup, tmp_path / "one"), batch_size=2 * PER_PROCESS_BATCH))
    assert one.processes == 1 and one.global_batch_size == 2 * PER_PROCESS_BATCH
    assert result["batches_run"] == one.batches_run == 8  # 61 captions: batches are sharded
    expected, actual = mapper(one.model_dir), mapper(output / "final")
    for name, tensor in expected.items():
        torch.testing.assert_close(actual[name], tensor, rtol=0, atol=1e-6, msg=name)
    assert result["history"][0]["train_loss"] == pytest.approx(one.history[0]["train_loss"])
    assert result["history"][0]["val_loss"] == pytest.approx(one.history[0]["val_loss"])
    record = json.loads((output / "final" / "polycap.json").read_text())["training"]
    assert record["processes"] == 2 and record["global_batch_size"] == 8


def test_a_killed_two_process_run_resumes_to_the_uninterrupted_result(
    setup, two_processes, tmp_path
):
    straight, expected = two_processes
    output, marker = tmp_path / "run", tmp_path / "paused"
    process = subprocess.Popen(
        torchrun(setup, output),
        env=environment(POLYCAP_TRAIN_HOOK="pause@step:5", POLYCAP_TRAIN_HOOK_FILE=str(marker)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # the launcher and both workers: one process group to kill
    )
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert process.poll() is None, f"exited ({process.returncode}) before pausing"
        assert time.monotonic() < deadline, "never paused"
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    assert sorted(p.name for p in output.glob("checkpoint-*"))[-1] == "checkpoint-00000004"

    resumed = launch(torchrun(setup, output, "--resume"))

    assert resumed["batches_run"] == expected["batches_run"] - 4
    assert len(resumed["history"]) == len(expected["history"])
    for got_epoch, want_epoch in zip(resumed["history"], expected["history"]):
        assert got_epoch == pytest.approx(want_epoch)
    want, got = mapper(straight / "final"), mapper(output / "final")
    for name, tensor in want.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=1e-7, msg=name)


def test_resuming_with_another_number_of_processes_is_one_line(setup, two_processes, tmp_path):
    output, _ = two_processes
    from polycap.errors import BadInput

    with pytest.raises(BadInput, match="processes 1 \\(the run has 2\\)"):
        train(TrainConfig(**options(setup, output)), resume=True)
