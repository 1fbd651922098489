"""One writer per run folder: an exclusive lock the running process holds until it ends.

``<run folder>/.polycap-run.lock`` is locked with ``fcntl.flock`` (exclusive, not waiting) by
the run's main process for as long as the run goes; the kernel releases it when that process
ends in any way (SIGKILL included), so a killed run never leaves a stale lock. The file names
the holder (pid, host, when), for the one line a second ``train --resume`` into the folder
gets; the file is removed when the run gives the lock back (a killed run's stays, unlocked,
and is taken over). A process that already holds the lock of a folder takes it again at once
(one Python session training twice). Where ``fcntl`` is missing (Windows), there is no lock.

:func:`writing` does the same for one output beside its siblings (``.bank.lock`` for
``bank/``), held while ``polycap index`` / ``encode`` write it: the leftovers of a killed
writer (:func:`polycap.util.atomic.remove_leftovers`) are removed only under it.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

from polycap.errors import BadInput

LOCK_FILE = ".polycap-run.lock"

_held: dict[str, IO[str]] = {}  # real lock file path -> the open, locked lock file


def acquire(folder: Path) -> bool:
    """Lock ``folder`` for this process (made if missing); BadInput naming the holder when
    another live process holds it. Returns False where locks are not available."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return _take(folder / LOCK_FILE, f"--output {folder}: another run is writing into this folder")


def release(folder: Path) -> None:
    """Give up this process's lock of ``folder`` (nothing when it holds none)."""
    _give_back(Path(folder) / LOCK_FILE)


@contextmanager
def writing(target: Path) -> Iterator[None]:
    """Hold ``.<name>.lock`` beside ``target`` while this process writes ``target`` (a bank,
    a feature store): a second writer is one line naming this one; leftovers of a killed
    writer may be removed while it is held."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = target.parent / f".{target.name}.lock"
    taken = _take(lock, f"{target}: another process is writing it")
    try:
        yield
    finally:
        if taken:
            _give_back(lock)


def _take(lock: Path, busy: str) -> bool:
    try:
        import fcntl
    except ImportError:
        return False
    key = os.path.realpath(lock)
    if key in _held:
        return True
    while True:
        handle = open(lock, "a+", encoding="utf-8")  # noqa: SIM115 - held open
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = _describe(handle.read())
            handle.close()
            raise BadInput(
                f"{busy} ({holder}); wait for it to end, or stop it, then retry"
            ) from None
        if _same_file(handle, lock):
            break
        handle.close()  # its holder removed it as we opened it: take the new one
    handle.seek(0)
    handle.truncate()
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    handle.write(json.dumps(record) + "\n")
    handle.flush()
    _held[key] = handle
    return True


def _same_file(handle: IO[str], path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return False


def _give_back(lock: Path) -> None:
    """Remove the lock file, then release it (in that order: a process that opened it
    meanwhile sees it was removed and takes a new one), so nothing stays behind."""
    handle = _held.pop(os.path.realpath(lock), None)
    if handle is not None:
        with suppress(OSError):
            os.unlink(lock)
        handle.close()  # closing the last descriptor releases the flock


def _describe(text: str) -> str:
    try:
        record = json.loads(text)
        return f"process {record['pid']} on {record['host']}, since {record['since']}"
    except (ValueError, KeyError, TypeError):
        return "another process"
