"""One writer per run folder: an exclusive lock the running process holds until it ends.

``<run folder>/.polycap-run.lock`` is locked with ``fcntl.flock`` (exclusive, not waiting) by
the run's main process for as long as the run goes; the kernel releases it when that process
ends in any way (SIGKILL included), so a killed run never leaves a stale lock. The file names
the holder (pid, host, when), for the one line a second ``train --resume`` into the folder
gets. A process that already holds the lock of a folder takes it again at once (one Python
session training twice). Where ``fcntl`` is missing (Windows), there is no lock.
"""

from __future__ import annotations

import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

from polycap.errors import BadInput

LOCK_FILE = ".polycap-run.lock"

_held: dict[str, IO[str]] = {}  # real folder path -> the open, locked lock file


def acquire(folder: Path) -> bool:
    """Lock ``folder`` for this process (made if missing); BadInput naming the holder when
    another live process holds it. Returns False where locks are not available."""
    try:
        import fcntl
    except ImportError:
        return False
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(folder)
    if key in _held:
        return True
    handle = open(folder / LOCK_FILE, "a+", encoding="utf-8")  # noqa: SIM115 - held open
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = _describe(handle.read())
        handle.close()
        raise BadInput(
            f"--output {folder}: another run is writing into this folder ({holder}); "
            "wait for it to end, or stop it, then resume"
        ) from None
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


def release(folder: Path) -> None:
    """Give up this process's lock of ``folder`` (nothing when it holds none)."""
    handle = _held.pop(os.path.realpath(folder), None)
    if handle is not None:
        handle.close()  # closing the last descriptor releases the flock


def _describe(text: str) -> str:
    try:
        record = json.loads(text)
        return f"process {record['pid']} on {record['host']}, since {record['since']}"
    except (ValueError, KeyError, TypeError):
        return "another process"
