"""The training loop, on Hugging Face Accelerate: precomputed features, bucketed batches,
mixed precision, gradient accumulation, warmup, validation loss each epoch, atomic checkpoints
and exact resume, on one process or many (``accelerate launch`` / ``torchrun``, DDP).

One process needs no Accelerate config: ``polycap train`` runs as it always has. Under a
launcher every process builds the same data split and the same sequence of global batches
(``--batch-size`` per process × processes), takes its own share of each, and DDP averages the
gradients; the loss of a global batch is its token-mean whatever the number of processes, so N
processes take the same steps as one process with the same global batch. Only the main process
writes checkpoints, logs and progress bars.

The run's settings are :class:`polycap.train.settings.TrainSettings` (``TrainConfig`` is its
older name); the data it reads, :mod:`polycap.train.data`; its optimizer and schedule,
:mod:`polycap.train.optim`; its checkpoints, :mod:`polycap.train.checkpoints`; the test-only
fault hooks, :mod:`polycap.train.faults`. Their names stay importable from here.
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from polycap.data.encoding import default_cache_dir
from polycap.errors import BadInput, PolycapError, first_line
from polycap.plugins import get_registries
from polycap.train.checkpoints import (  # noqa: F401 - kept importable from here
    Checkpoints,
    Fitting,
    TrainState,
    latest_checkpoint,
    sum_over_processes,
)
from polycap.train.data import (  # noqa: F401 - kept importable from here
    PreparedData,
    TokenizedSet,
    collate,
    prepare_data,
    prompt_inputs,
    tokenize_records,
)
from polycap.train.faults import HOOK_ENV, HOOK_FILE_ENV, FaultHook  # noqa: F401
from polycap.train.optim import (  # noqa: F401 - kept importable from here
    current_lr,
    linear_warmup_decay,
    make_optimizer,
    make_scheduler,
)
from polycap.train.settings import PRECISIONS, TrainSettings, check_settings, write_settings
from polycap.train.trackers import (
    StepLog,
    check_trackers,
    finish_trackers,
    log_dir,
    log_epoch,
    start_trackers,
)
from polycap.util.atomic import check_writable_folder
from polycap.util.batching import bucketed_batches, padded_batches
from polycap.util.devices import resolve_device
from polycap.util.distributed import timeout_seconds, watch_launcher
from polycap.util.progress import rich_progress
from polycap.util.run_folder import CHECKPOINT_PREFIX, TRAINER_STATE, RunFolder

if TYPE_CHECKING:
    from polycap.plugins import Registries

TrainConfig = TrainSettings  # the older name, kept for code that imports it

__all__ = [
    "CHECKPOINT_PREFIX",
    "TRAINER_STATE",
    "TrainConfig",
    "TrainSettings",
    "Trainer",
    "train",
]


@dataclass
class TrainResult:
    """Where the final model went, the per-epoch history, and what this process ran."""

    model_dir: Path
    history: list[dict[str, float]]
    skipped_images: int
    batches_run: int = 0
    resumed_from: Path | None = None
    processes: int = 1
    global_batch_size: int = 0
    main_process: bool = True  # under a launcher, only the main process reports
    best: dict[str, Any] | None = None  # the best epoch (metric, epoch, step, score, model)
    stopped_early: int | None = None  # the last epoch run when early stopping ended the run


class PhaseTimes:
    """Process CPU seconds and wall seconds per phase of the training steps (``data``,
    ``forward``, ``backward``, ``optimizer``), for benchmarks and profiles: set
    ``Trainer.phases`` to one. Waits for the GPU at each phase's end when there is one."""

    def __init__(self, device: Any = "cpu") -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.cpu: dict[str, float] = {}
        self.wall: dict[str, float] = {}

    @contextmanager
    def measure(self, name: str) -> Iterator[None]:
        start, cpu = time.perf_counter(), time.process_time()
        yield
        if self.cuda:
            torch.cuda.synchronize()
        self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - cpu
        self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - start

    def shares(self) -> dict[str, float]:
        """Each phase's share of the CPU time of all phases."""
        total = sum(self.cpu.values()) or 1.0
        return {name: seconds / total for name, seconds in self.cpu.items()}


class Trainer:
    """One training run: prepares data and model, runs epochs, writes checkpoints."""

    def __init__(
        self, config: TrainSettings, registries: Registries | None = None, console: Any = None
    ) -> None:

        self.config = config
        self.registries = registries or get_registries()
        self.selection = check_settings(config, self.registries)  # before any work
        self.pack = self.registries.languages.get(config.language)
        self.accelerator = make_accelerator(config)
        watch_launcher()  # launched workers stop when their launcher dies
        self.main = self.accelerator.is_main_process
        self.processes = self.accelerator.num_processes
        self.rank = self.accelerator.process_index
        self.device = self.accelerator.device
        self.console = console if self.main else None
        self.folder = RunFolder(config.output)
        self.hook = FaultHook()
        self.checkpoints = Checkpoints(
            self.accelerator, self.folder, self.training_record, config.keep_checkpoints, self.hook
        )
        self.steps = StepLog(
            config.log_every, self.accelerator, self.log_line, self.sum_over_processes
        )
        self.phases: PhaseTimes | None = None  # set to time the steps' phases

    def say(self, message: str) -> None:
        if self.console is not None:
            self.console.print(message)

    def log_line(self, message: str) -> None:
        """A ``--log-every`` line: on the console, or on stderr when there is none (``--json``,
        the Python API), terminal or not."""
        if self.console is not None:
            self.console.print(message, highlight=False)
        else:
            print(message, file=sys.stderr, flush=True)

    def sum_over_processes(self, value: float) -> float:
        return sum_over_processes(self.accelerator, value)

    def training_record(self, state: TrainState) -> dict[str, Any]:
        """What polycap.json's ``training`` says of the run, as of ``state``."""
        return {
            **self.config.to_json(),
            "processes": self.processes,
            "global_batch_size": self.global_batch_size,
            "epochs_done": state.epoch,
            "steps_done": state.step,
            "history": state.history,
            "best": state.best,
            "stopped_early": self.stopped_early(state),
        }

    @property
    def global_batch_size(self) -> int:
        return self.config.batch_size * self.processes * self.config.grad_accum

    # -- the run ---------------------------------------------------------------------------
    def run(self, resume: bool = False, overwrite: bool = False) -> TrainResult:
        """Train for ``config.epochs`` epochs (continuing the last checkpoint when resuming)."""
        config = self.config
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        self.take_folder(resume, overwrite)
        data = prepare_data(config, self.pack, self.device, self.main, self.say)
        self.record_run(resume, overwrite)
        start = self.folder.latest_checkpoint() if resume else None
        if resume and start is None:
            self.say(f"No checkpoint in {config.output} to resume from; starting fresh.")
        fit, state = self.fitting(start, data)
        self.announce(start, state, data)
        start_trackers(self.accelerator, self.run_options())
        batches_run = 0
        for epoch in range(state.epoch, config.epochs):
            if self.stops_early(state):
                break
            batches_run += self.run_epoch(epoch, fit, state, data)
            self.end_epoch(epoch, fit, state, data)
        stopped = self.stopped_early(state)
        if stopped is not None and self.selection is not None:
            self.say(self.selection.describe_stop(state))
        final = self.checkpoints.save(self.folder.final, fit.model, state, point="final")
        if self.main:  # the loss and validation curves beside the models (with matplotlib)
            from polycap.eval.charts import write_training_curves

            write_training_curves(config.output, state.history)
        finish_trackers(self.accelerator)
        self.accelerator.wait_for_everyone()
        return TrainResult(
            final,
            state.history,
            data.skipped,
            batches_run=batches_run,
            resumed_from=start,
            processes=self.processes,
            global_batch_size=self.global_batch_size,
            main_process=self.main,
            best=self.best_record(state),
            stopped_early=stopped,
        )

    def fitting(self, start: Path | None, data: PreparedData) -> tuple[Fitting, TrainState]:
        """The model (new, or the checkpoint's), its optimizer and schedule (restored from
        the checkpoint when resuming), prepared by Accelerate; and where the run is."""
        config = self.config
        model = self.load_or_build(start, data)
        optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], config)
        total = self.steps_per_epoch(data) * config.epochs
        scheduler = make_scheduler(optimizer, config.lr_schedule, config.warmup_steps, total)
        state = TrainState()
        if start is not None:
            state = self.checkpoints.restore(start, optimizer, scheduler)
        return Fitting(*self.accelerator.prepare(model, optimizer), scheduler), state

    def stops_early(self, state: TrainState) -> bool:
        return self.selection is not None and self.selection.should_stop(state)

    def stopped_early(self, state: TrainState) -> int | None:
        """The last epoch run, when early stopping ended the run before ``config.epochs``."""
        early = self.stops_early(state) and state.epoch < self.config.epochs
        return state.epoch if early else None

    def best_record(self, state: TrainState) -> dict[str, Any] | None:
        if state.best is None:
            return None
        return {**state.best, "model": str(self.folder.best)}

    def take_folder(self, resume: bool, overwrite: bool) -> None:
        """On the main process: check writability, clean leftovers, claim the run folder."""

        if self.main:
            check_writable_folder(self.config.output, "--output")
            self.folder.lock()  # one run per folder, before its leftovers are cleaned
            cache = self.config.cache_dir
            if cache is not None:
                check_writable_folder(Path(cache), "--cache-dir")
            else:
                check_writable_folder(default_cache_dir(), "feature cache")
            cleaned = self.folder.clean_stale()
            if cleaned:
                self.say(f"Cleaned {len(cleaned)} temporary folder(s) left by an interrupted save")
            self.folder.claim(self.run_options(), resume=resume, overwrite=overwrite, write=False)
        self.accelerator.wait_for_everyone()

    def record_run(self, resume: bool, overwrite: bool) -> None:
        """Once the data is ready: the folder becomes this run's (run.json and the resolved
        settings, settings.toml, written)."""
        if self.main:
            changes = self.folder.claim(self.run_options(), resume=resume, overwrite=overwrite)
            write_settings(self.config, self.config.output)
            for change in changes:
                self.say(f"Resuming with {change}")
        self.accelerator.wait_for_everyone()

    def run_options(self) -> dict[str, Any]:
        return {**self.config.to_json(), "processes": self.processes}

    def announce(self, start: Path | None, state: TrainState, data: PreparedData) -> None:
        config = self.config
        per_epoch = self.epoch_batch_count(data)
        left = (config.epochs - state.epoch) * per_epoch - state.batch
        if start is not None:
            self.say(
                f"Resuming from {start} (epoch {state.epoch + 1}, batch {state.batch} of "
                f"{per_epoch}, step {state.step}): {max(0, left)} batches left"
            )
        self.say(
            f"Training on {self.processes} process(es) ({self.device.type}); global batch "
            f"{self.global_batch_size} = {config.batch_size} per process × {self.processes} "
            f"process(es) × {config.grad_accum} accumulation; {per_epoch} batches per epoch; "
            f"lr {config.lr:g} ({config.lr_schedule}, {config.warmup_steps} warm-up steps)"
        )

    def load_or_build(self, start: Path | None, data: PreparedData) -> Any:
        """The checkpoint's model when resuming, else a new one (with feature statistics)."""
        from polycap.model.captioner import Captioner

        if start is not None:
            return Captioner.load(start, device=self.device, registries=self.registries).train()
        config = self.config
        lm = self.pack.load_decoder(config.lm or self.pack.default_lm)
        try:
            model = self.build(data, lm)
        except (TypeError, ValueError, AssertionError) as error:  # the mapper refused its options
            options = ", ".join(f"{k}={v}" for k, v in config.mapper_options.items()) or "none"
            raise BadInput(
                f"--mapper {config.mapper} (options: {options}): {first_line(error)}"
            ) from None
        if data.retrieval is not None:
            model.config["retrieval"] = data.retrieval
        if config.standardize_features:
            model.set_feature_stats(data.features.blocks(rows=sorted(set(data.train.feature_rows))))
        return model

    def build(self, data: PreparedData, lm: Any) -> Any:
        """A new captioner as the settings describe it, in front of ``lm``."""
        from polycap.model.captioner import Captioner

        config = self.config
        return Captioner.build(
            pack=self.pack,
            tokenizer=data.tokenizer,
            lm=lm,
            encoder_info=data.encoder_info,
            mapper=config.mapper,
            prefix_length=config.prefix_length,
            mapper_options=dict(config.mapper_options),
            train_lm=config.train_lm,
            normalize_features=config.normalize_features,
            lm_source=config.lm or self.pack.default_lm,
            save_lm=config.train_lm or config.save_lm,
            registries=self.registries,
            stop_token=config.stop_token,
        )

    def epoch_batches(self, epoch: int, data: PreparedData) -> list[list[int]]:
        """The epoch's global batches: the same list on every process."""
        size = self.config.batch_size * self.processes
        return bucketed_batches(data.train.lengths, size, seed=self.config.seed + epoch)

    def epoch_batch_count(self, data: PreparedData) -> int:
        return math.ceil(len(data.train.token_ids) / (self.config.batch_size * self.processes))

    def steps_per_epoch(self, data: PreparedData) -> int:
        return math.ceil(self.epoch_batch_count(data) / self.config.grad_accum)

    # -- one epoch -------------------------------------------------------------------------
    def run_epoch(self, epoch: int, fit: Fitting, state: TrainState, data: PreparedData) -> int:
        """The epoch's remaining batches (from ``state.batch``); returns how many ran."""
        config = self.config
        batches = self.epoch_batches(epoch, data)
        first = state.batch
        fit.model.train()
        title = f"epoch {epoch + 1}/{config.epochs}"
        with self.progress_bar() as progress:
            task = progress.add_task(title, total=len(batches), completed=first)
            for index in range(first, len(batches)):
                last_of_group = (index + 1) % config.grad_accum == 0 or index + 1 == len(batches)
                sync = nullcontext() if last_of_group else self.accelerator.no_sync(fit.model)
                with sync:
                    loss = self.train_batch(fit.model, batches[index], data)
                state.loss_sum += loss * len(batches[index])
                state.seen += len(batches[index])
                state.batch = index + 1
                self.steps.add(loss, len(batches[index]))
                if last_of_group:
                    lr = self.optimizer_step(fit)
                    state.step += 1
                    self.steps.step(state.step, epoch, lr)
                    periodic = config.save_every and state.step % config.save_every == 0
                    if periodic and index + 1 < len(batches):  # else the epoch's own follows
                        self.checkpoints.write(fit, state)
                    self.hook("step", self.main)
                progress.update(task, advance=1, description=f"{title} loss {loss:.3f}")
        return len(batches) - first

    def progress_bar(self) -> Any:

        return rich_progress(self.console, enabled=self.config.progress and self.main)

    def share(self, batch: list[int], tokens: TokenizedSet) -> tuple[list[int], float]:
        """This process's captions of a global batch, and its weight: its share of the batch's
        tokens (1.0 on one process), so that the shares' token-mean losses, weighted, sum to
        the whole batch's token-mean loss. With fewer captions than processes, a process
        that got none takes one at weight 0 (it must still join the gradient all-reduce)."""
        mine = batch[self.rank :: self.processes]
        if self.processes == 1:
            return mine, 1.0
        if not mine:
            return batch[:1], 0.0
        total = sum(len(tokens.token_ids[i]) for i in batch)
        return mine, sum(len(tokens.token_ids[i]) for i in mine) / total

    def train_batch(self, model: Any, batch: list[int], data: PreparedData) -> float:
        """Forward and backward on this process's share of one global batch; returns its part
        of the global batch's token-mean loss (the parts of all processes sum to it)."""
        shard, weight = self.share(batch, data.train)
        with self.phase("data"):
            pad = self.pad_id(model)
            inputs = [t.to(self.device) for t in collate(shard, data.train, data.features, pad)]
            prompt = prompt_inputs(shard, data.train, data.prompts, pad, self.device)
        with self.phase("forward"):
            loss = model(*inputs, **prompt).loss
        with self.phase("backward"):  # DDP averages: × processes
            self.accelerator.backward(loss * (weight * self.processes))
        return float(loss.detach()) * weight

    def phase(self, name: str) -> Any:
        """``phases.measure(name)`` when this trainer's phases are timed (:class:`PhaseTimes`)."""
        return self.phases.measure(name) if self.phases is not None else nullcontext()

    def pad_id(self, model: Any) -> int:
        return self.accelerator.unwrap_model(model).pad_token_id

    def optimizer_step(self, fit: Fitting) -> float:
        """Clip, step, schedule, zero; returns the learning rate the step took."""
        lr = current_lr(fit.optimizer)
        with self.phase("optimizer"):
            trainable = [p for p in fit.model.parameters() if p.requires_grad]
            self.accelerator.clip_grad_norm_(trainable, 1.0)
            fit.optimizer.step()
            fit.scheduler.step()
            fit.optimizer.zero_grad(set_to_none=True)
        return lr

    def end_epoch(self, epoch: int, fit: Fitting, state: TrainState, data: PreparedData) -> None:
        """Validation loss, the epoch's history record, and a checkpoint."""
        train_loss = self.sum_over_processes(state.loss_sum) / max(1, state.seen)
        val_loss = self.evaluate(fit.model, data)
        record = {
            "epoch": epoch + 1,
            "step": state.step,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "lr": current_lr(fit.optimizer),  # where the schedule is at the epoch's end
        }
        if self.config.eval_metrics and data.val.token_ids:
            from polycap.train.validation import validation_scores

            plain = self.accelerator.unwrap_model(fit.model)
            val = data.val
            record.update(
                validation_scores(
                    plain,
                    val.feature_rows,
                    val.token_ids,
                    data.features,
                    self.config.eval_metrics,
                    self.config.max_tokens,
                    self.config.batch_size,
                )
            )
        state.history.append(record)
        state.epoch, state.batch, state.loss_sum, state.seen = epoch + 1, 0, 0.0, 0
        message = f"epoch {epoch + 1}: train loss {train_loss:.4f}"
        if not math.isnan(val_loss):
            message += f", validation loss {val_loss:.4f}"
        self.say(f"{message}, lr {record['lr']:.3e}")
        log_epoch(self.accelerator, record)
        self.keep_best(fit, state, record)
        self.checkpoints.write(fit, state)

    def keep_best(self, fit: Fitting, state: TrainState, record: dict[str, Any]) -> None:
        """With a best metric: a new best epoch's model replaces ``best/`` (atomically), before
        the epoch's checkpoint records it as the best (a kill between the two redoes the epoch,
        which writes the same ``best/`` again)."""
        if self.selection is None or not self.selection.update(state, record):
            return
        self.checkpoints.save(self.folder.best, fit.model, state, point="best")
        self.accelerator.wait_for_everyone()
        best = state.best or {}
        self.say(f"best {best['metric']} so far ({best['score']:.4f}): saved {self.folder.best}")

    @torch.no_grad()
    def evaluate(self, model: Any, data: PreparedData) -> float:
        """Mean validation loss per caption over global batches (each process scores its share
        of each); NaN when there is no validation split."""
        tokens = data.val
        if not tokens.token_ids:
            return float("nan")
        plain = self.accelerator.unwrap_model(model)
        plain.eval()
        total = 0.0
        for batch in padded_batches(tokens.lengths, self.config.batch_size * self.processes):
            shard, weight = self.share(batch, tokens)
            if weight == 0.0:
                continue
            feats, ids, mask = collate(shard, tokens, data.features, plain.pad_token_id)
            prompt = prompt_inputs(shard, tokens, data.prompts, plain.pad_token_id, self.device)
            with self.accelerator.autocast():
                loss = plain(
                    feats.to(self.device), ids.to(self.device), mask.to(self.device), **prompt
                ).loss
            total += float(loss) * weight * len(batch)
        plain.train()
        return self.sum_over_processes(total) / len(tokens.token_ids)


def make_accelerator(config: TrainSettings) -> Any:
    """An ``Accelerator`` for this run: the launcher's processes (one when not launched), the
    device from ``--device``, mixed precision, and a timeout on every collective."""
    from datetime import timedelta

    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import InitProcessGroupKwargs

    device = resolve_device(config.device)
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if launched and device.index is not None:
        raise BadInput(
            f"--device {config.device}: the launcher gives each process its device; "
            "use --device auto (choose GPUs with CUDA_VISIBLE_DEVICES)"
        )
    if not launched:  # a process may train more than once (tests, the demo): fresh state
        AcceleratorState._reset_state(reset_partial_state=True)
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)
    timeout = timedelta(seconds=timeout_seconds())
    try:
        return Accelerator(
            cpu=device.type == "cpu",
            mixed_precision=PRECISIONS[config.precision],
            gradient_accumulation_steps=config.grad_accum,
            kwargs_handlers=[InitProcessGroupKwargs(timeout=timeout)],
            log_with=check_trackers(config.log_with) or None,
            project_dir=str(log_dir(config.output)) if config.log_with else None,
        )
    except ValueError as error:
        raise BadInput(f"--precision {config.precision}: {error}") from None
    except RuntimeError as error:
        first = first_line(error)
        raise PolycapError(f"distributed set-up failed: {first}") from None


def train(
    config: TrainSettings,
    resume: bool = False,
    registries: Registries | None = None,
    console: Any = None,
    overwrite: bool = False,
) -> TrainResult:
    """Run one training job; see :class:`TrainSettings`."""
    trainer = Trainer(config, registries=registries, console=console)
    try:
        return trainer.run(resume=resume, overwrite=overwrite)
    finally:
        trainer.folder.unlock()
