"""A run folder belongs to one run; writes are checked before work starts and a write that
fails midway is one line with the last good checkpoint intact; devices are checked in one
place. Through the real ``polycap`` entry point, on tiny local models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_runner import run_cli
from tiny_setup import training_setup


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return training_setup(tmp_path_factory.mktemp("folder"), 24, seed=1)


def args(setup: dict[str, str], output: Path, *extra: str) -> list[str]:
    options = {
        "--prefix-length": "2",
        "--epochs": "1",
        "--batch-size": "8",
        "--lr": "1e-3",
        "--save-every": "1",
        "--lm": setup["lm"],
    }
    for flag, value in zip(extra[::2], extra[1::2]):
        if flag in options:
            options[flag] = value
    flags = [e for e in extra if e.startswith("--") and e not in options]
    return [
        *("train", "--lang", "en", "--data", setup["data"], "--output", str(output)),
        *("--encoder", setup["encoder"], "--pretrained", setup["pretrained"]),
        *("--device", "cpu", "--seed", "3", "--json"),
        *[item for pair in options.items() for item in pair],
        *flags,
    ]


def one_error_line(result) -> str:
    # transformers' own weight-loading bar shows here because this test process imported it
    # before the CLI could quiet it (a real `polycap` process sets that up first)
    lines = [
        line for line in result.err.splitlines() if line.strip() and "Loading weights" not in line
    ]
    assert result.code == 2 and len(lines) == 1, result.err
    assert "Traceback" not in result.err
    return lines[0]


def test_a_new_run_into_another_runs_folder_is_refused(setup, tmp_path, capsys):
    output = tmp_path / "run"
    assert run_cli(args(setup, output), capsys).code == 0
    before = sorted(p.name for p in output.iterdir())
    line = one_error_line(run_cli(args(setup, output, "--epochs", "2"), capsys))
    assert str(output) in line and "--resume" in line and "--overwrite" in line
    assert "language en" in line
    assert sorted(p.name for p in output.iterdir()) == before  # nothing replaced

    replaced = run_cli(args(setup, output, "--prefix-length", "3", "--overwrite"), capsys)
    assert replaced.code == 0, replaced.err
    record = json.loads((output / "run.json").read_text())
    assert record["identity"]["prefix_length"] == 3 and record["resumes"] == []
    final = json.loads((output / "final" / "polycap.json").read_text())
    assert final["prefix_length"] == 3


def test_resume_with_other_model_shaping_options_names_each_difference(setup, tmp_path, capsys):
    output = tmp_path / "run"
    assert run_cli(args(setup, output), capsys).code == 0
    other_lm = str(Path(setup["lm"]).parent / "elsewhere")
    line = one_error_line(
        run_cli(args(setup, output, "--prefix-length", "4", "--lm", other_lm, "--resume"), capsys)
    )
    assert "--prefix-length 4 (the run has 2)" in line
    assert f"--lm {other_lm}" in line and "the run has" in line
    assert "--resume" in line and str(output) in line


def test_resume_records_the_options_that_may_change(setup, tmp_path, capsys):
    output = tmp_path / "run"
    first = run_cli(args(setup, output), capsys)
    assert first.code == 0
    resumed = run_cli(args(setup, output, "--epochs", "2", "--lr", "5e-4", "--resume"), capsys)
    assert resumed.code == 0, resumed.err
    assert json.loads(resumed.out)["batches_run"] == json.loads(first.out)["batches_run"]
    record = json.loads((output / "run.json").read_text())
    assert record["resumes"][-1]["changed"] == {"epochs": [1, 2], "lr": [1e-3, 5e-4]}
    training = json.loads((output / "final" / "polycap.json").read_text())["training"]
    assert training["epochs"] == 2 and training["lr"] == 5e-4


def test_output_that_is_a_file_is_refused_before_any_work(setup, tmp_path, capsys, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("POLYCAP_CACHE_DIR", str(cache))
    output = tmp_path / "a-file"
    output.write_text("not a folder")
    line = one_error_line(run_cli(args(setup, output), capsys))
    assert f"--output {output}: is a file" in line
    assert not list(cache.rglob("*.npy"))  # no image was encoded


def test_unwritable_feature_cache_is_refused_before_any_work(setup, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache folder's parent should be")
    monkeypatch.setenv("POLYCAP_CACHE_DIR", str(blocker / "cache"))
    line = one_error_line(run_cli(args(setup, tmp_path / "run"), capsys))
    assert f"feature cache {blocker / 'cache'}: {blocker} is a file" in line
    assert not (tmp_path / "run" / "run.json").exists()


@pytest.mark.parametrize(
    ("hook", "message"),
    [("enospc@checkpoint:2", "No space left on device"), ("erofs@final:1", "Read-only")],
)
def test_a_write_failing_midway_is_one_line_and_the_last_checkpoint_survives(
    setup, tmp_path, capsys, monkeypatch, hook, message
):
    from polycap.model.captioner import Captioner
    from polycap.train.trainer import TRAINER_STATE

    output = tmp_path / "run"
    monkeypatch.setenv("POLYCAP_TRAIN_HOOK", hook)
    line = one_error_line(run_cli(args(setup, output), capsys))
    last = sorted(output.glob("checkpoint-*"))[-1]
    assert message in line and f"the last good checkpoint is {last}" in line
    assert (last / TRAINER_STATE).is_file()
    Captioner.load(last)  # intact
    assert not [p for p in output.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    monkeypatch.delenv("POLYCAP_TRAIN_HOOK")
    resumed = run_cli(args(setup, output, "--resume"), capsys)
    assert resumed.code == 0 and (output / "final" / "polycap.json").is_file(), resumed.err


@pytest.mark.parametrize("device", ["tpu", "cuda", "cuda:7", "gpu0"])
@pytest.mark.parametrize("command", ["train", "encode", "caption"])
def test_unavailable_devices_are_one_line_listing_the_available(
    setup, tmp_path, capsys, command, device
):
    import torch

    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has that GPU")
    image = tmp_path / "image.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(image)
    argv = {
        "train": args(setup, tmp_path / "run"),
        "encode": ["encode", str(image), "--encoder", setup["encoder"]],
        "caption": ["caption", str(image), "--model", str(tmp_path / "no-model")],
    }[command]
    line = one_error_line(run_cli([*argv, "--device", device], capsys))
    assert f"--device {device}" in line and "available here: cpu" in line


def test_leftovers_of_a_killed_save_are_cleaned_and_a_cut_swap_is_undone(tmp_path):
    from polycap.util.run_folder import RunFolder

    run = tmp_path / "run"
    (run / ".checkpoint-00000006.tmp-x1y2").mkdir(parents=True)  # a save killed mid-write
    (run / "checkpoint-00000002").mkdir()
    (run / ".checkpoint-00000002.old-abcd").mkdir()  # swapped in: the old copy is garbage
    (run / ".checkpoint-00000004.old-ef01").mkdir()  # killed between the two renames
    (run / ".checkpoint-00000004.old-ef01" / "trainer_state.pt").write_bytes(b"state")
    cleaned = RunFolder(run).clean_stale()
    assert len(cleaned) == 3
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-00000002", "checkpoint-00000004"]
    assert (run / "checkpoint-00000004" / "trainer_state.pt").read_bytes() == b"state"


def test_the_training_table_names_skipped_images(setup, tmp_path, capsys):
    data = json.loads(Path(setup["data"]).read_text())
    broken = Path(setup["data"]).parent / "images" / data[0]["image_name"]
    assert broken.is_file()
    saved = broken.read_bytes()
    try:
        broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
        table = [a for a in args(setup, tmp_path / "run") if a != "--json"]
        result = run_cli([*table, "--cache-dir", str(tmp_path / "cache")], capsys)
    finally:
        broken.write_bytes(saved)
    assert result.code == 0, result.err
    shown = result.out + result.err
    assert "1 images skipped" in shown
    assert f"Skipped 1 unreadable image(s): {broken}" in " ".join(shown.split())
