"""Experiment trackers through Accelerate (``polycap train --log-with tensorboard,wandb``).

Accelerate owns the trackers (``Accelerator(log_with=…)``, ``init_trackers``, ``log``, each
tracker's ``finish``, all on the main process only); polycap checks the names first, since
Accelerate silently drops a tracker whose package is missing, and logs each epoch's history
record (train/validation loss, validation scores, learning rate, the epoch number) at its
optimizer step, as Accelerate's and Hugging Face's trainers count. With ``--log-every N``,
:class:`StepLog` adds a line and tracker values (``step_loss``, ``step_lr``) every N optimizer
steps, whether or not stderr is a terminal.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
    """One epoch's numeric history values (and its number, as ``epoch``), at step = the
    optimizer steps done when it ended."""
    if not accelerator.log_with:
        return
    values = {
        key: float(value)
        for key, value in record.items()
        if key != "step" and isinstance(value, (int, float)) and value == value
    }
    accelerator.log(values, step=int(record["step"]))


class StepLog:
    """``--log-every N``: every N optimizer steps, the mean train loss of the captions since
    the last line and the learning rate, as one line (``write``) and as tracker values at
    that step. Every process calls :meth:`add` and :meth:`step` (the loss is summed over
    them); only the main process writes."""

    def __init__(
        self, every: int, accelerator: Any, write: Callable[[str], None] | None, reduce: Any
    ) -> None:
        self.every = every
        self.accelerator = accelerator
        self.write = write
        self.reduce = reduce  # sums a float over the processes
        self.loss_sum = 0.0
        self.captions = 0

    def add(self, loss: float, captions: int) -> None:
        """One batch: this process's part of its token-mean loss, the batch's captions."""
        self.loss_sum += loss * captions
        self.captions += captions

    def step(self, step: int, epoch: int, lr: float) -> None:
        """After optimizer step ``step`` (which took learning rate ``lr``)."""
        if not self.every or step % self.every:
            return
        loss = self.reduce(self.loss_sum) / max(1, self.captions)
        self.loss_sum, self.captions = 0.0, 0
        if not self.accelerator.is_main_process:
            return
        if self.write is not None:
            self.write(f"step {step} (epoch {epoch + 1}): loss {loss:.4f}, lr {lr:.3e}")
        if self.accelerator.log_with:
            self.accelerator.log({"step_loss": loss, "step_lr": lr}, step=step)


def finish_trackers(accelerator: Any) -> None:
    """Close the trackers. Not ``Accelerator.end_training``: it also destroys the process
    group, which the run still needs for its last barrier (and a caller may train again)."""
    for tracker in accelerator.trackers:
        tracker.finish()


def log_dir(output: Path) -> Path:
    return Path(output) / LOG_DIR
