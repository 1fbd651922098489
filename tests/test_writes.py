"""Writes as a user breaks them: checked before the work starts, one line when they fail."""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

from cli_runner import run_cli
from PIL import Image


def _one_line(result, *fragments: str) -> str:
    assert result.code == 2, (result.out, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.err, result.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_outputs_are_checked_before_any_work(capsys, tmp_path: Path) -> None:
    taken = tmp_path / "taken.txt"
    taken.write_text("a file where a folder should go")
    missing = str(tmp_path / "not-read-yet.json")  # a check after the work would name this
    result = run_cli(["index", missing, "--lang", "en", "-o", str(taken)], capsys)
    _one_line(result, f"--output {taken}: is a file, not a folder")
    result = run_cli(["index", missing, "--lang", "en", "-o", str(taken / "bank")], capsys)
    _one_line(result, f"{taken} is a file, not a folder")
    args = ["compare", missing, "-m", missing, "-b", missing]
    result = run_cli([*args, "--report", str(tmp_path)], capsys)
    _one_line(result, f"--report {tmp_path}: is a folder, not a file")
    result = run_cli([*args, "--report", str(taken / "report.html")], capsys)
    _one_line(result, "--report", f"{taken} is a file, not a folder")
    for command in (["encode", missing], ["eval", missing, "-p", missing, "-l", "en"]):
        result = run_cli([*command, "--cache-dir", str(taken)], capsys)
        _one_line(result, f"--cache-dir {taken}: is a file, not a folder")


def test_a_cache_write_that_fails_midway_warns_and_keeps_the_features(
    tmp_path: Path, tiny_clip, capsys
) -> None:
    from polycap.data.encoding import FeatureCache, encode_images, load_encoder

    encoder = load_encoder(tiny_clip.name, pretrained=tiny_clip.weights)
    image = tmp_path / "a.png"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(image)
    cache = FeatureCache(tmp_path / "cache", encoder.cache_key, encoder.embed_dim)
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    cache.directory.mkdir(parents=True)
    (cache.directory / digest[:2]).write_text("a file where the shard folder goes")
    done = encode_images(encoder, [image], cache_dir=tmp_path / "cache", progress=False)
    assert done.paths == [image] and done.encoded == 1
    warning = capsys.readouterr().err
    assert "cannot write to the feature cache" in warning and str(cache.directory) in warning


def _limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (150, 150))  # as a disk that fills up


def test_a_write_that_fails_midway_is_one_line_and_publishes_nothing(tmp_path: Path) -> None:
    from polycap.offline import tiny

    name, weights = tiny.build_clip(tmp_path / "clip", seed=0)
    for index in range(3):
        Image.new("RGB", (32, 32), (index * 60, 0, 0)).save(tmp_path / f"{index}.png")
    captions = tmp_path / "captions.csv"
    captions.write_text("image,caption\n" + "".join(f"{i}.png,thing {i}\n" for i in range(3)))
    bank = tmp_path / "bank"
    command = [sys.executable, "-m", "polycap", "index", str(captions), "--lang", "en"]
    command += ["-o", str(bank), "--encoder", name, "--pretrained", str(weights)]
    command += ["--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        command, capture_output=True, text=True, env=env, preexec_fn=_limit_file_size
    )
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.strip().splitlines() if not line.startswith("Warning")]
    assert lines == ["Error: a write failed (File too large); nothing half-written is kept"]
    assert not bank.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".bank")] == []
