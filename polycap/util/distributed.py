"""The processes of a run: one, or several started by ``accelerate launch`` / ``torchrun``.

polycap writes no launcher and no protocol of its own. When the launcher's environment is
there (``WORLD_SIZE`` > 1), :func:`processes` joins the process group through Accelerate's
``PartialState`` (gloo on CPUs, NCCL on GPUs) with a timeout, so that a rank that dies or
never starts is one clear line after ``POLYCAP_DIST_TIMEOUT`` seconds (default 1800, as for
training), not a hang. When torch.distributed is already initialised (by the trainer's
``Accelerator``), that group is used as it is. Without a launcher there is one process and
nothing is initialised. A launched process ends itself when its launcher dies
(:func:`watch_launcher`), so a killed ``torchrun`` leaves no orphans.

Splitting work and gathering results are Accelerate's (``split_between_processes``,
``gather_object``, ``wait_for_everyone``); polycap adds only the one-line failure message.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from polycap.errors import PolycapError

TIMEOUT_ENV = "POLYCAP_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0


class DistributedError(PolycapError):
    """A distributed run could not start or a process stopped answering."""


def timeout_seconds() -> float:
    """``$POLYCAP_DIST_TIMEOUT`` (seconds) or the default."""
    value = os.environ.get(TIMEOUT_ENV)
    if not value:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        raise DistributedError(f"{TIMEOUT_ENV}={value!r}: not a number of seconds") from None
    if seconds <= 0:
        raise DistributedError(f"{TIMEOUT_ENV}={value!r}: must be positive")
    return seconds


@dataclass(frozen=True)
class Processes:
    """This process's place in the run: ``rank`` of ``world_size``; ``local_main`` is true for
    one process per machine (the one that writes files there)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str | None = None  # the device the launcher gave this process, if any

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def local_main(self) -> bool:
        return self.local_rank == 0

    def device_for(self, device: str) -> str:
        """``device`` as asked; for ``auto``, the launcher's device of this process if any
        (each launched process then encodes on its own GPU)."""
        return self.device if device == "auto" and self.device else device

    def share(self, count: int) -> range:
        """This process's contiguous part of ``range(count)`` (sizes differ by at most one,
        the first ``count % world_size`` processes one more), as Accelerate's
        ``PartialState.split_between_processes`` cuts it."""
        if not self.distributed:
            return range(count)
        with self._state().split_between_processes(list(range(count))) as mine:
            return range(mine[0], mine[-1] + 1) if mine else range(0)

    def all_gather(self, value: Any, what: str) -> list[Any]:
        """Every process's ``value`` (picklable), in rank order (Accelerate's
        ``gather_object``); ``what`` names the step for the message when a process does not
        answer."""
        if not self.distributed:
            return [value]
        from accelerate.utils import gather_object

        self._state()
        try:
            return gather_object([value])
        except Exception as error:  # gloo/NCCL raise RuntimeError and friends
            raise DistributedError(self._failure(what, error)) from None

    def barrier(self, what: str) -> None:
        """Wait for every process (bounded by the process group's timeout)."""
        if not self.distributed:
            return
        try:
            self._state().wait_for_everyone()
        except Exception as error:
            raise DistributedError(self._failure(what, error)) from None

    def _state(self) -> Any:
        """Accelerate's state of this run's processes (the one :func:`processes` joined, or the
        trainer's ``Accelerator``'s); it must be the process this object describes."""
        from accelerate import PartialState

        state = PartialState()
        if (state.process_index, state.num_processes) != (self.rank, self.world_size):
            raise DistributedError(
                f"process {self.rank} of {self.world_size} is process {state.process_index} "
                f"of {state.num_processes} to Accelerate"
            )
        return state

    def _failure(self, what: str, error: Exception) -> str:
        reason = " ".join(str(error).split())[:200]
        return (
            f"{what}: process {self.rank} of {self.world_size} lost the others "
            f"(a process died or is stuck; timeout {timeout_seconds():.0f} s, "
            f"${TIMEOUT_ENV}): {type(error).__name__}: {reason}"
        )


WATCH_SECONDS = 1.0  # how often a launched process checks that its launcher is alive
_watching: dict[str, bool] = {}


def watch_launcher() -> None:
    """In a process started by a launcher (``torchrun``, ``accelerate launch``): a daemon
    thread that ends this process when the launcher dies (SIGKILL included: this process is
    then re-parented, its parent pid changes), so that killing the launcher never leaves
    workers training as orphans. Started once; nothing without a launcher."""
    if launched_world_size() <= 1 or _watching:
        return
    import sys
    import threading
    import time

    launcher = os.getppid()

    def watch() -> None:
        while os.getppid() == launcher:
            time.sleep(WATCH_SECONDS)
        print(
            f"Error: the launcher (process {launcher}) of this process ({os.getpid()}) "
            "died; stopping (resume the run with --resume)",
            file=sys.stderr,
            flush=True,
        )
        os._exit(3)

    _watching["started"] = True
    threading.Thread(target=watch, name="polycap-launcher-watch", daemon=True).start()


def launched_world_size() -> int:
    """The world size a launcher announced in the environment (1 when there is none)."""
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        value = os.environ.get(name)
        if value:
            try:
                return int(value)
            except ValueError:
                raise DistributedError(f"{name}={value!r}: not a number of processes") from None
    return 1


def processes() -> Processes:
    """This process's :class:`Processes`, joining the launcher's process group if needed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return _from_group()
    if launched_world_size() <= 1:
        return Processes()
    watch_launcher()
    from datetime import timedelta

    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    cpu = not torch.cuda.is_available() or parse_flag_from_env("ACCELERATE_USE_CPU")
    try:
        state = PartialState(cpu=cpu, timeout=timedelta(seconds=timeout_seconds()))
    except DistributedError:
        raise
    except Exception as error:  # port in use, unreachable main process, bad rank ...
        reason = " ".join(str(error).split())[:200]
        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        raise DistributedError(
            f"could not join the distributed run at {where} "
            f"(rank {os.environ.get('RANK', '?')} of {os.environ.get('WORLD_SIZE', '?')}): "
            f"{type(error).__name__}: {reason}"
        ) from None
    if state.num_processes != launched_world_size():
        raise DistributedError(
            f"the launcher announced {launched_world_size()} processes but the process group "
            f"has {state.num_processes}"
        )
    return Processes(
        state.process_index,
        state.num_processes,
        max(0, state.local_process_index),
        str(state.device) if state.device is not None else None,
    )


def _from_group() -> Processes:
    import torch.distributed as dist

    device = None
    try:
        from accelerate import PartialState

        shared = PartialState._shared_state
        if shared.get("device") is not None:
            device = str(shared["device"])
    except ImportError:
        pass
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    return Processes(dist.get_rank(), dist.get_world_size(), local, device)
