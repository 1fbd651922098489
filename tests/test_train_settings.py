"""Every training setting written once (issue 19): ``polycap train --config run.toml`` with
flags over the file, ``--dry-run`` printing the resolved settings and writing nothing, the
settings saved in the run folder and used by ``--resume``, values checked before any work;
the learning-rate schedule from ``transformers.get_scheduler``; step logging, the learning rate,
``--keep-checkpoints``, ``--weight-decay``, mapper options (issue 24); and a trainer state
that holds a pickled object refused, never executed (issue 20)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from cli_runner import run_cli
from tiny_setup import training_setup

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return training_setup(tmp_path_factory.mktemp("settings"), 24, seed=2)


def write_config(folder: Path, setup: dict[str, str], **extra: str) -> Path:
    """A run.toml in ``folder`` whose data path is relative to it."""
    data = Path(setup["data"])
    (folder / "data").mkdir(parents=True, exist_ok=True)
    shutil.copy(data, folder / "data" / data.name)
    lines = [
        'language = "en"',
        f'data = "data/{data.name}"',
        f'images_dir = "{data.parent / "images"}"',
        f'encoder = "{setup["encoder"]}"',
        f'pretrained = "{setup["pretrained"]}"',
        f'lm = "{setup["lm"]}"',
        "epochs = 1",
        "batch_size = 8",
        "lr = 1e-3",
        "prefix_length = 2",
        "seed = 3",
        'device = "cpu"',
        *(f"{key} = {value}" for key, value in extra.items()),
        "",
        "[mapper]",
        'kind = "transformer"',
        "num_layers = 1",
        "num_heads = 2",
    ]
    path = folder / "run.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def one_error_line(result) -> str:
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert result.code == 2 and len(lines) == 1, result.err
    assert "Traceback" not in result.err
    return lines[0]


# -- settings file, flags, dry run (no training) ----------------------------------------------


def test_dry_run_prints_the_file_with_flags_over_it_and_writes_nothing(setup, tmp_path, capsys):
    config = write_config(tmp_path, setup)
    output = tmp_path / "run"
    args = ["train", "--config", str(config), "-o", str(output), "--dry-run"]
    result = run_cli([*args, "--lr", "0.01", "--mapper-option", "mlp_ratio=1.5"], capsys)
    assert result.code == 0, result.err
    shown = tomllib.loads(result.out)
    assert shown["lr"] == 0.01  # the flag wins
    assert shown["epochs"] == 1 and shown["batch_size"] == 8  # the file's, not the defaults
    assert shown["data"] == str(tmp_path / "data" / Path(setup["data"]).name)  # file-relative
    assert shown["output"] == str(output)
    options = {"num_layers": 1, "num_heads": 2, "mlp_ratio": 1.5}
    assert shown["mapper"] == {"kind": "transformer", **options}
    assert shown["lr_schedule"] == "linear" and shown["keep_checkpoints"] == 2
    assert not output.exists()  # nothing written

    as_json = run_cli([*args, "--json"], capsys)
    assert json.loads(as_json.out)["settings"]["lr"] == 1e-3


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("learning_rate = 0.1\n", "unknown setting 'learning_rate' (did you mean 'lr'?)"),
        ("epochs = 'ten'\n", "epochs = 'ten': expected int"),
        ("lr = \n", "not valid TOML"),
        ("[mapper]\nkind = 3\n", "mapper.kind = 3: expected str"),
    ],
    ids=["unknown-key", "wrong-type", "bad-toml", "bad-mapper"],
)
def test_a_bad_settings_file_is_one_line(setup, tmp_path, capsys, content, message):
    config = tmp_path / "run.toml"
    config.write_text('language = "en"\ndata = "x.json"\n' + content)
    line = one_error_line(run_cli(["train", "--config", str(config), "--dry-run"], capsys))
    assert str(config) in line and message in line


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--lr", "-1"), "--lr -1.0: must be a number of at least 0"),
        (("--lr", "nan"), "--lr nan: must be a number of at least 0"),
        (("--weight-decay", "inf"), "--weight-decay inf: must be a number of at least 0"),
        (("--lr-schedule", "cosin"), "--lr-schedule cosin: unknown; choose one of linear, cosine"),
        (("--mapper-option", "depth=3"), "--mapper-option depth: the mlp mapper has no such"),
        (("--mapper-option", "depth"), "--mapper-option depth: expected NAME=VALUE"),
        (("--eval-metrics", "spice", "--best-metric", "spice"), "--best-metric spice: cannot"),
    ],
    ids=["lr-negative", "lr-nan", "decay-inf", "schedule", "mapper-option", "no-value", "spice"],
)
def test_bad_settings_are_refused_before_any_work(setup, tmp_path, capsys, extra, message):
    """Checked before the data is read: one line, exit 2, and no run folder (no run.json
    that would make the corrected rerun fail with "holds another run")."""
    if "spice" in extra:
        from polycap.plugins import get_registries
        from polycap.train.selection import unavailable_reason

        registries = get_registries()
        spice = registries.metrics.get("spice")
        if unavailable_reason(spice, registries.languages.get("en")) is None:
            pytest.skip("SPICE can be computed here")
    output = tmp_path / "run"
    args = ["train", "--lang", "en", "--data", setup["data"], "-o", str(output), "--json"]
    args += ["--encoder", setup["encoder"], "--pretrained", setup["pretrained"]]
    args += ["--lm", setup["lm"], "--prefix-length", "2", "--device", "cpu", "--epochs", "1"]
    line = one_error_line(run_cli([*args, *extra], capsys))
    assert message in line
    assert not output.exists()


def test_a_required_setting_missing_everywhere_is_one_line(tmp_path, capsys):
    line = one_error_line(run_cli(["train", "--data", "x.json", "--dry-run"], capsys))
    assert "missing option --lang" in line


def test_the_python_api_takes_the_same_settings(setup, tmp_path):
    from polycap.errors import BadInput
    from polycap.train.settings import TrainSettings
    from polycap.train.trainer import TrainConfig, train

    assert TrainConfig is TrainSettings
    with pytest.raises(BadInput, match="--lr nan"):
        train(TrainSettings("en", Path(setup["data"]), tmp_path / "run", lr=float("nan")))
    assert not (tmp_path / "run").exists()
    settings = TrainSettings("en", Path("x.json"), mapper_options={"num_layers": 2})
    assert tomllib.loads(settings.to_toml())["mapper"] == {"kind": "mlp", "num_layers": 2}


# -- the learning-rate schedule ------------------------------------------------------------------


def hand_written(step: int, warmup: int, total: int) -> float:
    """polycap's schedule before transformers.get_scheduler took over (the factor of the lr)."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


def learning_rates(schedule: str, warmup: int, total: int) -> list[float]:
    from polycap.train.optim import current_lr, make_scheduler

    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=2e-3)
    scheduler = make_scheduler(optimizer, schedule, warmup, total)
    rates = []
    for _ in range(total):
        rates.append(current_lr(optimizer))
        optimizer.step()
        scheduler.step()
    return rates


def test_the_linear_schedule_gives_the_hand_written_learning_rates():
    """Without warm-up (the default) every step's rate is the hand-written schedule's; with
    warm-up, every rate after it is, and during it transformers' schedule (ClipCap's own,
    ``get_linear_schedule_with_warmup``) starts at 0 and runs one step behind."""
    total = 40
    expected = [2e-3 * hand_written(step, 0, total) for step in range(total)]
    assert learning_rates("linear", 0, total) == pytest.approx(expected, rel=1e-12, abs=0)
    warmup = 8
    rates = learning_rates("linear", warmup, total)
    old = [2e-3 * hand_written(step, warmup, total) for step in range(total)]
    assert rates[warmup:] == pytest.approx(old[warmup:], rel=1e-12, abs=0)
    assert rates[0] == 0.0 and rates[1:warmup] == pytest.approx(old[: warmup - 1], rel=1e-12)


@pytest.mark.parametrize("schedule", ["cosine", "constant", "constant_with_warmup", "polynomial"])
def test_other_schedules_come_from_transformers(schedule):
    rates = learning_rates(schedule, 4, 20)
    assert rates[0] <= rates[4] == pytest.approx(2e-3)  # warmed up to the peak
    if schedule in ("constant", "constant_with_warmup"):
        assert rates[-1] == pytest.approx(2e-3)
    else:
        assert rates[-1] < 2e-3 / 2


def test_weight_decay_reaches_the_optimizer():
    from polycap.train.optim import make_optimizer
    from polycap.train.settings import TrainSettings

    weights = [torch.nn.Parameter(torch.zeros(2))]
    optimizer = make_optimizer(weights, TrainSettings(weight_decay=0.1))
    assert optimizer.param_groups[0]["weight_decay"] == 0.1


# -- a real run: saved settings, resume, logging, checkpoints -----------------------------------


@pytest.fixture(scope="module")
def trained(setup, tmp_path_factory) -> dict:
    """One small run from a settings file plus flags (transformer mapper with its options,
    step logging, one checkpoint kept, weight decay), and what --dry-run said of it."""
    import contextlib
    import io

    from polycap.cli import main

    root = tmp_path_factory.mktemp("trained")
    config = write_config(root, setup, val_fraction="0.25")
    output = root / "run"
    args = ["train", "--config", str(config), "-o", str(output), "--save-every", "1"]
    args += ["--keep-checkpoints", "1", "--log-every", "1", "--weight-decay", "0.01"]

    def polycap(extra: list[str]) -> tuple[str, str]:
        out, err, saved = io.StringIO(), io.StringIO(), sys.argv
        sys.argv = ["polycap", *args, *extra]
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                main()
        except SystemExit as exit_:
            assert not exit_.code, err.getvalue()[-2000:]
        finally:
            sys.argv = saved
        return out.getvalue(), err.getvalue()

    dry, _ = polycap(["--dry-run"])
    out, err = polycap(["--json"])
    return {"output": output, "dry_run": dry, "result": json.loads(out), "stderr": err}


def test_the_saved_settings_are_what_the_dry_run_printed(trained):
    saved = (trained["output"] / "settings.toml").read_text()
    assert saved == trained["dry_run"]
    settings = tomllib.loads(saved)
    assert settings["weight_decay"] == 0.01 and settings["log_every"] == 1
    recorded = json.loads((trained["output"] / "final" / "polycap.json").read_text())
    assert recorded["mapper"]["kind"] == "transformer"
    assert recorded["mapper"]["options"]["num_layers"] == 1  # the mapper got its options
    assert recorded["mapper"]["options"]["num_heads"] == 2


def test_step_lines_and_the_learning_rate_are_logged(trained):
    """--log-every 1 with stderr not a terminal: one line per optimizer step; each epoch's
    record carries the learning rate."""
    history = trained["result"]["history"]
    steps = history[-1]["step"]
    lines = [line for line in trained["stderr"].splitlines() if line.startswith("step ")]
    assert len(lines) == steps and lines[0].startswith("step 1 (epoch 1): loss ")
    assert ", lr " in lines[0]
    assert all(record["lr"] >= 0 for record in history) and "lr" in history[0]


def test_only_the_newest_checkpoint_is_kept(trained):
    checkpoints = sorted(p.name for p in trained["output"].glob("checkpoint-*"))
    steps = trained["result"]["history"][-1]["step"]
    assert checkpoints == [f"checkpoint-{steps:08d}"]  # --keep-checkpoints 1 pruned the rest


def test_resume_uses_the_saved_settings(trained, tmp_path, capsys):
    """``--resume -o RUN`` alone continues the run as saved (no --data, --lang, ...); a flag
    given changes that setting, and the saved settings follow."""
    from polycap.train.settings import TrainSettings

    run = tmp_path / "run"
    shutil.copytree(trained["output"], run)
    result = run_cli(["train", "--resume", "-o", str(run), "--epochs", "2", "--json"], capsys)
    assert result.code == 0, result.err
    answer = json.loads(result.out)
    assert answer["resumed_from"] and len(answer["history"]) == 2
    assert answer["history"][0] == trained["result"]["history"][0]
    saved = TrainSettings.from_run(run)
    assert saved.epochs == 2 and saved.mapper == "transformer" and saved.weight_decay == 0.01


def test_a_pickled_object_in_the_trainer_state_is_refused_not_run(trained, tmp_path, capsys):
    """A run folder from someone else cannot run code on --resume: the trainer state is read
    weights-only. (With ``weights_only=False`` in train/checkpoints.py the object's code runs
    and writes the marker, and this test fails.)"""
    run = tmp_path / "run"
    shutil.copytree(trained["output"], run)
    marker = tmp_path / "executed"
    (state_file,) = run.glob("checkpoint-*/trainer_state.pt")
    state = torch.load(state_file, weights_only=True)
    state["payload"] = Payload(str(marker))
    torch.save(state, state_file)
    line = one_error_line(run_cli(["train", "--resume", "-o", str(run), "--json"], capsys))
    assert str(state_file) in line and "refused" in line
    assert not marker.exists()


class Payload:
    """Unpickling this calls ``open(path, "w")`` (creates the marker file)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # noqa: ANN204
        return (open, (self.path, "w"))
