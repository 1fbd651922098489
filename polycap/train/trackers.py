"""Experiment trackers through Accelerate (``polycap train --log-with tensorboard,wandb``).

Accelerate owns the trackers (``Accelerator(log_with=…)``, ``init_trackers``, ``log``, each
tracker's ``finish``, all on the main process only); polycap checks the names first, since
Accelerate silently drops a tracker whose package is missing, and logs each epoch's history
record (train/validation loss, validation scores) at its epoch number.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from polycap.errors import BadInput

LOG_DIR = "logs"  # in the run folder: where file-based trackers (TensorBoard, ...) write
PROJECT = "polycap"


def check_trackers(names: Sequence[str]) -> list[str]:
    """``names`` if each is a tracker Accelerate knows and its package is installed; else one
    BadInput line naming the first that is not."""
    if not names:
        return []
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers
    from accelerate.utils import LoggerType

    builtin = [str(kind) for kind in LoggerType.list() if str(kind) != "all"]
    available = {str(kind) for kind in get_available_trackers()}
    custom = {name for name in LOGGER_TYPE_TO_CLASS if name not in builtin}  # registered
    for name in names:
        if name in available or name in custom:
            continue
        if name in builtin:
            raise BadInput(
                f"--log-with {name}: the {name} package is not installed (pip install {name})"
            )
        raise BadInput(
            f"--log-with {name}: not a tracker; choose from {', '.join(sorted(builtin))}"
        )
    return list(names)


def start_trackers(accelerator: Any, config: dict[str, Any]) -> None:
    """``init_trackers`` with the run's plain options as hyperparameters."""
    if not accelerator.log_with:
        return
    plain = {
        key: value
        for key, value in config.items()
        if isinstance(value, (bool, int, float, str)) and key not in ("output", "data")
    }
    accelerator.init_trackers(PROJECT, config=plain)


def log_epoch(accelerator: Any, record: dict[str, Any]) -> None:
    """One epoch's numeric history values, at step = its epoch number."""
    if not accelerator.log_with:
        return
    values = {
        key: float(value)
        for key, value in record.items()
        if key not in ("epoch", "step") and isinstance(value, (int, float)) and value == value
    }
    accelerator.log(values, step=int(record["epoch"]))


def finish_trackers(accelerator: Any) -> None:
    """Close the trackers. Not ``Accelerator.end_training``: it also destroys the process
    group, which the run still needs for its last barrier (and a caller may train again)."""
    for tracker in accelerator.trackers:
        tracker.finish()


def log_dir(output: Path) -> Path:
    return Path(output) / LOG_DIR
