"""A training run's checkpoints: model + trainer state in one atomic folder, written by the main
process, read back for an exact resume, the oldest pruned.

``trainer_state.pt`` holds only tensors and plain values (the optimizer's and the schedule's
state dicts, every process's RNG state, the :class:`TrainState` as a plain dict) and is read
with ``torch.load(weights_only=True)``: a file that holds any other object is refused, never
unpickled (a run folder received from someone else cannot run code on ``--resume``).
"""

from __future__ import annotations

import pickle
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from polycap.errors import BadInput, first_line
from polycap.train.faults import FaultHook
from polycap.util.run_folder import TRAINER_STATE, RunFolder


@dataclass
class TrainState:
    """Where a run is: epochs done, batches done in the current epoch, optimizer steps, the
    current epoch's running train loss (caption-weighted sum over ``seen`` captions), history."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    loss_sum: float = 0.0
    seen: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, Any] | None = None  # the best epoch so far: metric, epoch, step, score
    since_best: int = 0  # epochs since the best one (early stopping counts these)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainState:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass
class Fitting:
    """What a run moves forward: the (Accelerate-prepared) model, its optimizer, its lr schedule."""

    model: Any
    optimizer: Any
    scheduler: Any


def sum_over_processes(accelerator: Any, value: float) -> float:
    """``value`` summed over the run's processes (every process must call it)."""
    if accelerator.num_processes == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=accelerator.device)
    return float(accelerator.reduce(tensor, reduction="sum")[0])


def latest_checkpoint(output: Path) -> Path | None:
    """The newest complete checkpoint (one whose trainer state was written) in a run folder."""
    return RunFolder(output).latest_checkpoint()


def read_trainer_state(path: Path) -> dict[str, Any]:
    """``trainer_state.pt`` loaded weights-only; BadInput (one line) for a file that holds
    other objects than tensors and plain values, or cannot be read."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights only" not in str(error).lower():
            raise BadInput(f"{path}: unreadable trainer state ({first_line(error)})") from None
        raise BadInput(
            f"{path}: refused: it holds objects other than tensors and plain values, which "
            "polycap never loads (a trainer state polycap wrote holds none)"
        ) from None
    except Exception as error:  # noqa: BLE001 - any unreadable file is the same problem
        raise BadInput(f"{path}: unreadable trainer state ({first_line(error)})") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict):
        raise BadInput(f"{path}: not a polycap trainer state")
    return saved


class Checkpoints:
    """Writes and reads a run's checkpoints. ``record(state)``: the training record that
    polycap.json keeps; ``keep``: how many complete checkpoints stay (the newest)."""

    def __init__(
        self,
        accelerator: Any,
        folder: RunFolder,
        record: Callable[[TrainState], dict[str, Any]],
        keep: int,
        hook: FaultHook,
    ) -> None:
        self.accelerator = accelerator
        self.folder = folder
        self.record = record
        self.keep = keep
        self.hook = hook
        self.main = accelerator.is_main_process
        self.processes = accelerator.num_processes
        self.rank = accelerator.process_index

    def write(self, fit: Fitting, state: TrainState) -> Path:
        """Model and trainer state (every process's RNG, the epoch's loss so far summed over
        processes) in one atomic directory, by the main process; older checkpoints pruned."""
        from accelerate.utils import gather_object

        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        rngs = gather_object([rng]) if self.processes > 1 else [rng]
        total = sum_over_processes(self.accelerator, state.loss_sum)
        saved = TrainState(**{**state.to_json(), "loss_sum": total})
        if self.processes > 1:  # the main process carries the sum from here on
            state.loss_sum = saved.loss_sum if self.main else 0.0
        trainer_state = {
            "optimizer": fit.optimizer.state_dict(),
            "scheduler": fit.scheduler.state_dict(),
            "state": saved.to_json(),
            "rng": rngs,
            "processes": self.processes,
        }

        def extra(target: Path) -> None:
            torch.save(trainer_state, target / TRAINER_STATE)

        path = self.folder.checkpoint_path(state.step)
        directory = self.save(path, fit.model, saved, "checkpoint", extra)
        if self.main:
            self.prune(keep=directory)
        self.accelerator.wait_for_everyone()
        return directory

    def save(
        self, directory: Path, model: Any, state: TrainState, point: str, extra: Any = None
    ) -> Path:
        """Write the model (main process only); a failing disk is one line, the last good
        checkpoint intact."""
        if not self.main:
            return directory

        def write_extra(target: Path) -> None:
            if extra is not None:
                extra(target)
            self.hook(point)

        plain = self.accelerator.unwrap_model(model)
        try:
            return plain.save(directory, training=self.record(state), extra=write_extra)
        except OSError as error:
            last = self.folder.latest_checkpoint()
            kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written"
            raise BadInput(
                f"{directory}: writing failed ({error.strerror or error}); {kept}"
            ) from None

    def restore(self, start: Path, optimizer: Any, scheduler: Any) -> TrainState:
        """Optimizer, scheduler, this process's RNG and the train state of a checkpoint."""
        path = start / TRAINER_STATE
        saved = read_trainer_state(path)
        written_by = int(saved.get("processes", 1))
        if written_by != self.processes:
            raise BadInput(
                f"{path}: written by {written_by} process(es), resumed with {self.processes}; "
                f"resume with {written_by} (the global batch must stay the same)"
            )
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        rng = saved["rng"][self.rank] if "rng" in saved else {"cpu": saved["torch_rng"]}
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
        state = TrainState.from_json(saved["state"])
        if not self.main:
            state.loss_sum = 0.0
        return state

    def prune(self, keep: Path) -> None:
        """Delete the oldest complete checkpoints beyond ``self.keep`` (never ``keep``, the
        one just written): a checkpoint goes only once a newer one is complete."""
        complete = self.folder.checkpoints()
        for old in complete[: max(0, len(complete) - self.keep)]:
            if old != keep:
                shutil.rmtree(old, ignore_errors=True)
