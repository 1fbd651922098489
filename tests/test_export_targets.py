"""What exports and imports may replace, and copies of what the user owns (issue 20).

Checkpoints and HF exports carry the encoder weights as their own copy (never a hard link):
editing one never changes the user's file or another copy. ``export --to hf|onnx OUT`` and
``import clipcap -o OUT`` replace only an empty folder or an earlier output of the same
command; another polycap model needs ``--force``; a run's folder or a folder polycap did not
write is never replaced. ``train --overwrite`` never deletes a non-model ``final/``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cli_runner import run_cli
from tiny_setup import tiny_captioner

from polycap.builtin.english import ENGLISH
from polycap.errors import BadInput

CAPTIONS = ["a red circle", "two blue squares", "a green triangle"] * 4


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("targets")
    model = tiny_captioner(ENGLISH, CAPTIONS, root)
    checkpoint = model.save(root / "run" / "final", training={"epochs": 1})
    pretrained = Path(model.config["encoder"]["pretrained"])
    return {"root": root, "checkpoint": checkpoint, "pretrained": pretrained}


def one_line(result, *fragments: str) -> str:
    assert result.code == 2, (result.out, result.err)
    lines = [line for line in result.err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.err, result.err
    text = " ".join(result.err.split())
    for fragment in fragments:
        assert fragment in text, text
    return text


def _bundled(folder: Path) -> Path:
    record = json.loads((folder / "polycap.json").read_text())
    return folder / record["encoder"]["bundled"]


def _edit_keeps_the_other(edited: Path, other: Path) -> None:
    """Appending to ``edited`` leaves ``other`` as it was (then ``edited`` is put back)."""
    before_edited, before_other = edited.read_bytes(), other.read_bytes()
    with open(edited, "ab") as handle:  # writes in place, as an editor or a re-save might
        handle.write(b"edited")
    try:
        assert other.read_bytes() == before_other
    finally:
        edited.write_bytes(before_edited)


def test_checkpoint_encoder_weights_are_a_copy_not_a_link(made) -> None:
    bundled = _bundled(made["checkpoint"])
    assert bundled.stat().st_nlink == 1 and made["pretrained"].stat().st_nlink == 1
    _edit_keeps_the_other(bundled, made["pretrained"])
    _edit_keeps_the_other(made["pretrained"], bundled)


def test_hf_export_encoder_weights_are_a_copy_not_a_link(made, tmp_path, capsys) -> None:
    out = tmp_path / "shared"
    result = run_cli(["export", str(made["checkpoint"]), "--to", "hf", str(out)], capsys)
    assert result.code == 0, result.err
    exported, source = _bundled(out), _bundled(made["checkpoint"])
    assert exported.stat().st_nlink == 1
    _edit_keeps_the_other(exported, source)
    _edit_keeps_the_other(source, exported)
    _edit_keeps_the_other(exported, made["pretrained"])


@pytest.mark.parametrize("to", ["hf", "onnx"])
def test_export_refuses_to_replace_a_trained_model(made, tmp_path, to, capsys) -> None:
    other = tmp_path / "other-run" / "final"
    shutil.copytree(made["checkpoint"], other)
    before = sorted(p.name for p in other.iterdir())
    result = run_cli(["export", str(made["checkpoint"]), "--to", to, str(other)], capsys)
    one_line(result, "holds a trained polycap model", "--force")
    assert sorted(p.name for p in other.iterdir()) == before


def test_export_replaces_its_own_earlier_export_and_with_force_a_model(made, tmp_path, capsys):
    out = tmp_path / "shared"
    for _ in range(2):  # the second replaces the first: its own earlier export
        result = run_cli(["export", str(made["checkpoint"]), "--to", "hf", str(out)], capsys)
        assert result.code == 0, result.err
    other = tmp_path / "final"
    shutil.copytree(made["checkpoint"], other)
    args = ["export", str(made["checkpoint"]), "--to", "hf", str(other), "--force"]
    assert run_cli(args, capsys).code == 0
    assert json.loads((other / "polycap.json").read_text())["exported_as"] == "hf"


@pytest.mark.parametrize("to", ["hf", "onnx"])
def test_force_never_replaces_a_folder_polycap_did_not_write(made, tmp_path, to, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    args = ["export", str(made["checkpoint"]), "--to", to, str(tmp_path / "mine"), "--force"]
    one_line(run_cli(args, capsys), "not written by polycap")
    args = ["export", str(made["checkpoint"]), "--to", to, str(made["checkpoint"].parent)]
    one_line(run_cli([*args, "--force"], capsys), "holds a training run")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"


def test_import_clipcap_refuses_to_replace_a_trained_model(made, tmp_path, capsys) -> None:
    import torch

    weights = tmp_path / "weights.pt"
    torch.save({"clip_project.weight": torch.zeros(64, 32)}, weights)
    other = tmp_path / "final"
    shutil.copytree(made["checkpoint"], other)
    before = (other / "polycap.json").read_text()
    args = ["import", "clipcap", str(weights), "-o", str(other)]
    one_line(run_cli(args, capsys), "holds a trained polycap model", "--force")
    assert (other / "polycap.json").read_text() == before


def test_overwrite_never_deletes_a_user_final_folder(tmp_path) -> None:
    from polycap.util.run_folder import RunFolder

    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "thesis.tex").write_text("mine")
    (tmp_path / "checkpoint-00000004").mkdir()
    folder = RunFolder(tmp_path)
    for write in (False, True):
        with pytest.raises(BadInput, match="final/ is not a polycap model"):
            folder.claim({}, resume=False, overwrite=True, write=write)
    assert (tmp_path / "final" / "thesis.tex").read_text() == "mine"
    assert (tmp_path / "checkpoint-00000004").is_dir()


def test_the_python_api_refuses_nan_features(made) -> None:
    """issue 20: ``polycap.load(m).caption(nan features)`` is BadInput, not an empty caption."""
    import torch

    import polycap

    model = polycap.load(str(made["checkpoint"]), device="cpu")
    features = torch.full((2, 64), float("nan"))
    with pytest.raises(BadInput, match="NaN or infinite"):
        model.caption(features)
    features = torch.randn(2, 64)
    features[1, 3] = float("inf")
    with pytest.raises(BadInput, match="NaN or infinite"):
        model.caption(features)
