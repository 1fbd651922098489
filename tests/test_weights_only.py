"""Nothing polycap reads unpickles arbitrary objects (issue 20): ClipCap imports and encoder
weights files are read weights-only; wrong downloads (a git-lfs pointer, an HTML page, a text
file) are named in one line. Each hostile file carries a pickle whose unpickling creates a
marker file: the marker must never appear."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
from cli_runner import run_cli
from helpers_lm import lm_files
from hostile import Marker, evil_torch_file

from polycap.errors import BadInput
from polycap.util.safe_load import load_torch_weights

LFS = (
    "version https://git-lfs.github.com/spec/v1\n"
    "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
    "size 1234567\n"
)
HTML = "<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body></body></html>\n"


def wrong_files(folder: Path, marker: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, what its one-line error must say)."""
    (folder / "lfs.pt").write_text(LFS)
    (folder / "page.pt").write_text(HTML)
    (folder / "notes.pt").write_text("hello world\nthese are not weights\n")
    (folder / "bare.pt").write_bytes(pickle.dumps(Marker(marker)))
    return {
        "lfs": (folder / "lfs.pt", "git-lfs pointer"),
        "html": (folder / "page.pt", "HTML page"),
        "text": (folder / "notes.pt", "text file"),
        "torch pickle": (evil_torch_file(folder / "evil.pt", marker), "other than tensors"),
        "bare pickle": (folder / "bare.pt", "other than tensors"),
    }


@pytest.fixture(scope="module")
def base_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tokenizer_dir, lm_dir = lm_files()
    folder = tmp_path_factory.mktemp("base-lm")
    shutil.copytree(lm_dir, folder, dirs_exist_ok=True)
    shutil.copytree(tokenizer_dir, folder, dirs_exist_ok=True)
    return folder


@pytest.mark.parametrize("case", ["lfs", "html", "text", "torch pickle", "bare pickle"])
def test_load_torch_weights_refuses_wrong_and_hostile_files(tmp_path, case) -> None:
    marker = tmp_path / "unpickled"
    path, says = wrong_files(tmp_path, marker)[case]
    with pytest.raises(BadInput) as caught:
        load_torch_weights(path)
    assert says in str(caught.value) and str(path) in str(caught.value)
    assert "\n" not in str(caught.value)
    assert not marker.exists()


@pytest.mark.parametrize("case", ["lfs", "html", "text", "torch pickle", "bare pickle"])
def test_import_clipcap_of_a_wrong_or_hostile_file_is_one_line(base_lm, tmp_path, case, capsys):
    marker = tmp_path / "unpickled"
    path, says = wrong_files(tmp_path, marker)[case]
    args = ["import", "clipcap", str(path), "-o", str(tmp_path / "out"), "--lm", str(base_lm)]
    result = run_cli([*args, "--encoder", "tiny"], capsys)
    assert result.code == 2, result.err
    lines = [line for line in result.err.strip().splitlines() if "Loading weights" not in line]
    assert len(lines) == 1 and "Traceback" not in result.err, result.err
    assert says in " ".join(result.err.split())
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["lfs", "html", "torch pickle", "bare pickle"])
def test_encoder_weights_file_is_read_weights_only(tiny_clip, tmp_path, case) -> None:
    from polycap.data.encoding import load_encoder

    marker = tmp_path / "unpickled"
    path, says = wrong_files(tmp_path, marker)[case]
    with pytest.raises(BadInput) as caught:
        load_encoder(tiny_clip.name, pretrained=str(path))
    if case in ("lfs", "html"):
        assert says in str(caught.value)
    assert not marker.exists()


def test_a_hostile_bundled_encoder_file_is_not_run_when_captioning(tmp_path, capsys) -> None:
    """The encoder weights bundled in a received checkpoint, replaced by a pickle: captioning
    refuses it and nothing runs."""
    from PIL import Image
    from tiny_setup import tiny_captioner

    from polycap.builtin.english import ENGLISH

    model = tiny_captioner(ENGLISH, ["a red circle", "a blue square"] * 4, tmp_path)
    checkpoint = model.save(tmp_path / "checkpoint")
    bundled = next((checkpoint / "encoder").iterdir())
    marker = tmp_path / "unpickled"
    evil_torch_file(bundled, marker)
    Image.new("RGB", (40, 40), (200, 30, 30)).save(tmp_path / "red.png")
    args = ["caption", str(tmp_path / "red.png"), "--model", str(checkpoint), "--device", "cpu"]
    result = run_cli(args, capsys)
    assert result.code == 2 and "Traceback" not in result.err, result.err
    assert not marker.exists()
