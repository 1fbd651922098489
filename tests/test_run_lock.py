"""One writer per run folder, and no orphans (issue 20): a running run holds its folder's lock
(released when the process dies, SIGKILL included); a second ``train --resume`` into it is one
line naming the holder's pid; a launched worker stops when its launcher is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_runner import run_cli
from test_training_folder import args, one_error_line
from tiny_setup import training_setup

from polycap.errors import BadInput
from polycap.util import run_lock

HOLD = """
import sys, time
from polycap.util.run_lock import acquire
acquire(sys.argv[1])
print("held", flush=True)
time.sleep(600)
"""

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX locks and signals")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def hold(folder: Path) -> subprocess.Popen:
    """Another process holding ``folder``'s lock (it says "held" once it does)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True, env=_env()
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return training_setup(tmp_path_factory.mktemp("lock"), 16, seed=1)


def test_the_lock_names_its_holder_and_dies_with_it(tmp_path) -> None:
    holder = hold(tmp_path)
    try:
        with pytest.raises(BadInput, match=f"process {holder.pid} on "):
            run_lock.acquire(tmp_path)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert run_lock.acquire(tmp_path)  # the kernel released it with the killed process
    assert run_lock.acquire(tmp_path)  # taken again by its holder at once
    run_lock.release(tmp_path)


def test_resume_into_a_folder_a_run_is_writing_is_one_line(setup, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert run_cli(args(setup, out), capsys).code == 0
    before = sorted(p.name for p in out.iterdir())
    assert ".polycap-run.lock" not in before  # given back (removed) when the run ended
    holder = hold(out)
    try:
        result = run_cli(args(setup, out, "--epochs", "2", "--resume"), capsys)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    line = one_error_line(result)
    assert "another run is writing into this folder" in line and f"process {holder.pid}" in line
    after = sorted(p.name for p in out.iterdir() if p.name != ".polycap-run.lock")
    assert after == before  # nothing touched
    resumed = run_cli(args(setup, out, "--epochs", "2", "--resume"), capsys)
    assert resumed.code == 0, resumed.err  # the dead holder's lock is gone


WORKER = """
import time
from polycap.util.distributed import watch_launcher
watch_launcher()
print("watching", flush=True)
time.sleep(600)
"""

LAUNCHER = """
import os, subprocess, sys, time
worker = subprocess.Popen(
    [sys.executable, "-c", sys.argv[1]], env=os.environ, stdout=subprocess.PIPE, text=True
)
assert worker.stdout.readline().strip() == "watching"
print(worker.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by init) counts as gone
    status = Path(f"/proc/{pid}/status")
    return not (status.is_file() and "State:\tZ" in status.read_text())


def test_a_launched_worker_stops_when_its_launcher_is_killed() -> None:
    env = {**_env(), "WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, WORKER], stdout=subprocess.PIPE, text=True, env=env
    )
    worker = int(launcher.stdout.readline())
    try:
        assert _alive(worker)  # up and watching
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        for _ in range(300):  # a liveness wait (up to a minute), not a timing assertion
            if not _alive(worker):
                break
            time.sleep(0.2)
        assert not _alive(worker)
    finally:
        if _alive(worker):
            os.kill(worker, signal.SIGKILL)


def _killed_writers_leftovers(target: Path) -> list[Path]:
    """What a writer of ``target`` killed midway leaves: a temporary folder half written."""
    from polycap.util.atomic import temporary_folder

    work = temporary_folder(target)
    (work / "half.npy").write_bytes(b"\0" * 100)
    return [work]


def test_encode_and_index_remove_a_killed_writers_temporary_folders(
    tiny_clip, english, tmp_path
) -> None:
    from PIL import Image

    from polycap.data.captions import CaptionSet
    from polycap.data.encoding import load_encoder
    from polycap.data.features import encode_to_store
    from polycap.parts import CaptionRecord
    from polycap.retrieval.bank import build_bank

    encoder = load_encoder(tiny_clip.name, pretrained=tiny_clip.weights)
    image = tmp_path / "red.png"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(image)
    store = tmp_path / "store"
    left = _killed_writers_leftovers(store)
    encode_to_store(encoder, [image], store, progress=False)
    assert not any(path.exists() for path in left) and (store / "meta.json").is_file()
    bank = tmp_path / "bank"
    left = _killed_writers_leftovers(bank) + _killed_writers_leftovers(tmp_path / ".bank.features")
    records = CaptionSet([CaptionRecord(image, "a red square", "red")], None)
    build_bank(records, encoder, bank, english, progress=False)
    assert not any(path.exists() for path in left) and (bank / "meta.json").is_file()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".bank")]


def test_a_second_writer_is_refused_and_leaves_the_first_ones_folders(tiny_clip, tmp_path):
    from polycap.data.encoding import load_encoder
    from polycap.data.features import encode_to_store

    encoder = load_encoder(tiny_clip.name, pretrained=tiny_clip.weights)
    store = tmp_path / "store"
    left = _killed_writers_leftovers(store)  # the live writer's folder, here
    holder = hold_target(store)
    try:
        with pytest.raises(BadInput, match=f"another process is writing it .process {holder.pid}"):
            encode_to_store(encoder, [tmp_path / "x.png"], store, progress=False)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert all(path.is_dir() for path in left)


HOLD_TARGET = """
import sys, time
from polycap.util.run_lock import writing
with writing(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def hold_target(target: Path) -> subprocess.Popen:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_TARGET, str(target)],
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    assert holder.stdout.readline().strip() == "held"
    return holder
