"""The training loop, on Hugging Face Accelerate: precomputed features, bucketed batches,
mixed precision, gradient accumulation, warmup, validation loss each epoch, atomic checkpoints
and exact resume, on one process or many (``accelerate launch`` / ``torchrun``, DDP).

One process needs no Accelerate config: ``polycap train`` runs as it always has. Under a
launcher every process builds the same data split and the same sequence of global batches
(``--batch-size`` per process × processes), takes its own share of each, and DDP averages the
gradients; the loss of a global batch is its token-mean whatever the number of processes, so N
processes take the same steps as one process with the same global batch. Only the main process
writes checkpoints, logs and progress bars.
"""

from __future__ import annotations

import errno
import math
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from polycap.data.images import describe_skipped
from polycap.errors import BadInput, PolycapError, first_line
from polycap.parts import EncoderSpec
from polycap.train.trackers import (
    check_trackers,
    finish_trackers,
    log_dir,
    log_epoch,
    start_trackers,
)
from polycap.util.atomic import check_writable_folder
from polycap.util.batching import bucketed_batches, pad_right, padded_batches
from polycap.util.distributed import watch_launcher
from polycap.util.run_folder import CHECKPOINT_PREFIX, FEATURES, TRAINER_STATE, RunFolder

PRECISIONS = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}
HOOK_ENV = "POLYCAP_TRAIN_HOOK"
HOOK_FILE_ENV = "POLYCAP_TRAIN_HOOK_FILE"
TIMEOUT_ENV = "POLYCAP_DIST_TIMEOUT"
if TYPE_CHECKING:
    from polycap.data.features import Features
    from polycap.language import LanguagePack
    from polycap.plugins import Registries
    from polycap.train.selection import Selection

__all__ = ["CHECKPOINT_PREFIX", "TRAINER_STATE", "TrainConfig", "Trainer", "train"]


@dataclass
class TrainConfig:
    """Everything a training run needs; recorded in every checkpoint."""

    language: str
    data: Path
    output: Path
    images_dir: Path | None = None
    data_format: str | None = None
    encoder: str = "ViT-B-32"
    pretrained: str | None = "openai"
    lm: str | None = None
    mapper: str = "mlp"
    mapper_options: dict[str, Any] = field(default_factory=dict)
    prefix_length: int = 10
    train_lm: bool = False
    save_lm: bool = False
    normalize_features: bool = True
    standardize_features: bool = True
    epochs: int = 10
    batch_size: int = 32  # per process; the global batch is this × processes × grad_accum
    lr: float = 2e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_accum: int = 1
    precision: str = "fp32"
    max_tokens: int = 40
    val_fraction: float = 0.1
    seed: int = 0
    save_every: int = 0
    keep_checkpoints: int = 2
    device: str = "auto"
    cache_dir: Path | None = None
    progress: bool = True
    eval_metrics: list[str] = field(default_factory=list)  # caption metrics on val, per epoch
    stop_token: str | None = None  # ends captions instead of the pack's end token (e.g. ".")
    best_metric: str | None = None  # keep best/ by this validation score (train.selection)
    early_stop: int = 0  # stop after this many epochs without improvement (0: never)
    log_with: list[str] = field(default_factory=list)  # Accelerate trackers (train.trackers)
    retrieval_bank: Path | None = None  # retrieval-augmented: prompts from this bank's kNN
    retrieval_k: int = 4  # captions per prompt

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe copy for the checkpoint."""
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


@dataclass
class TokenizedSet:
    """Captions as token ids, each pointing at its image's row in the feature matrix."""

    feature_rows: list[int]
    token_ids: list[list[int]]

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.token_ids]


@dataclass
class PreparedData:
    """What training reads: tokenized splits, one feature row per encoded image, the tokenizer
    and the encoder's identity, and the images that could not be read."""

    train: TokenizedSet
    val: TokenizedSet
    features: Features  # rows read from the run's feature store, a batch at a time
    tokenizer: Any
    encoder_info: EncoderSpec
    skipped: int
    prompts: list[list[int]] | None = None  # retrieval prompt ids per feature row
    retrieval: dict[str, Any] | None = None  # the RetrievalSetup record


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


def make_optimizer(parameters: list[torch.nn.Parameter], config: TrainConfig) -> Any:
    """AdamW over ``parameters``: the fused implementation (one kernel per step, ~5x faster
    than the per-tensor loop on the CPU) where torch has it for their device, else the
    default one."""
    try:
        return torch.optim.AdamW(
            parameters, lr=config.lr, weight_decay=config.weight_decay, fused=True
        )
    except (RuntimeError, ValueError):  # a device or dtype without a fused kernel
        return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)


def linear_warmup_decay(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> Any:
    """Linear warmup to the base lr, then linear decay to zero (as ClipCap trains)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def collate(
    batch: list[int], tokens: TokenizedSet, features: Features | torch.Tensor, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features, right-padded ids and attention mask for one batch of caption indices."""
    input_ids, mask = pad_right([tokens.token_ids[i] for i in batch], pad_id)
    rows = torch.tensor([tokens.feature_rows[i] for i in batch], dtype=torch.long)
    if isinstance(features, torch.Tensor):
        rows = rows.to(features.device)
    return features[rows], input_ids, mask


def prompt_inputs(
    batch: list[int],
    tokens: TokenizedSet,
    prompts: list[list[int]] | None,
    pad_id: int,
    device: Any = None,
) -> dict[str, torch.Tensor]:
    """``prompt_ids`` / ``prompt_mask`` (left-padded) for a batch of caption indices, from the
    prompt of each caption's image; nothing for a plain captioner."""
    if prompts is None:
        return {}
    from polycap.model.augmented import left_padded

    ids, mask = left_padded([prompts[tokens.feature_rows[i]] for i in batch], pad_id)
    return {"prompt_ids": ids.to(device), "prompt_mask": mask.to(device)}


def tokenize_records(
    records: list[Any],
    row_of: dict[Path, int],
    pack: LanguagePack,
    tokenizer: Any,
    max_tokens: int,
    stop_token: str | None = None,
) -> TokenizedSet:
    """Token ids per caption (end token kept when truncated) for records whose image encoded;
    with ``stop_token``, captions end with it instead of the pack's end token."""
    from polycap.model.captioner import caption_token_ids

    rows: list[int] = []
    ids_list: list[list[int]] = []
    for record in records:
        if record.image not in row_of:
            continue
        ids = caption_token_ids(pack, tokenizer, record.caption, stop_token)
        if len(ids) > max_tokens:
            ids = [*ids[: max_tokens - 1], ids[-1]]
        rows.append(row_of[record.image])
        ids_list.append(ids)
    return TokenizedSet(rows, ids_list)


def latest_checkpoint(output: Path) -> Path | None:
    """The newest complete checkpoint (one whose trainer state was written) in a run folder."""
    return RunFolder(output).latest_checkpoint()


class FaultHook:
    """Test-only fault injection, so kill and disk-failure tests are deterministic.

    ``POLYCAP_TRAIN_HOOK=pause@checkpoint:2,enospc@final:1``: at the n-th time training reaches
    a point (``step``: an optimizer step done; ``checkpoint`` / ``final``: inside that save, all
    files but polycap.json written), ``pause`` writes ``POLYCAP_TRAIN_HOOK_FILE`` and waits to be
    killed; ``enospc`` / ``erofs`` raise the OSError a full / read-only disk gives.
    """

    def __init__(self, spec: str | None = None) -> None:
        spec = os.environ.get(HOOK_ENV, "") if spec is None else spec
        self.rules = []
        for item in filter(None, (part.strip() for part in spec.split(","))):
            action, _, where = item.partition("@")
            point, _, count = where.partition(":")
            self.rules.append((action, point, int(count or 1)))
        self.seen: dict[str, int] = {}

    def __call__(self, point: str, main: bool = True) -> None:
        if not self.rules:
            return
        self.seen[point] = count = self.seen.get(point, 0) + 1
        for action, rule_point, rule_count in self.rules:
            if (rule_point, rule_count) != (point, count):
                continue
            if action == "pause":
                marker = os.environ.get(HOOK_FILE_ENV)
                if marker and main:
                    Path(marker).write_text(f"{point}:{count}\n", encoding="utf-8")
                time.sleep(600)
            elif action in ("enospc", "erofs"):
                code = errno.ENOSPC if action == "enospc" else errno.EROFS
                raise OSError(code, os.strerror(code))


class Trainer:
    """One training run: prepares data and model, runs epochs, writes checkpoints."""

    def __init__(
        self, config: TrainConfig, registries: Registries | None = None, console: Any = None
    ) -> None:
        from polycap.plugins import get_registries

        if config.precision not in PRECISIONS:
            raise BadInput(
                f"unknown precision {config.precision!r}; choose one of {', '.join(PRECISIONS)}"
            )
        if config.retrieval_bank is not None and config.eval_metrics:
            raise BadInput(
                "--eval-metrics does not yet caption with retrieval prompts; "
                "leave it out with --retrieval-bank (validation loss is recorded)"
            )
        self.config = config
        self.registries = registries or get_registries()
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
        self.selection = make_selection(config, self.registries)
        self.phases: PhaseTimes | None = None  # set to time the steps' phases

    def say(self, message: str) -> None:
        if self.console is not None:
            self.console.print(message)

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
        data = self.prepare_data()  # every process encodes its share of the images
        self.record_run(resume, overwrite)
        start = self.folder.latest_checkpoint() if resume else None
        if resume and start is None:
            self.say(f"No checkpoint in {config.output} to resume from; starting fresh.")
        model = self.load_or_build(start, data)
        optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], config)
        scheduler = linear_warmup_decay(
            optimizer, config.warmup_steps, self.steps_per_epoch(data) * config.epochs
        )
        state = self.restore(start, optimizer, scheduler) if start is not None else TrainState()
        fit = Fitting(*self.accelerator.prepare(model, optimizer), scheduler)
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
        final = self.save(self.folder.final, fit.model, state, point="final")
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
        from polycap.data.encoding import default_cache_dir

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
        """Once the data is ready: the folder becomes this run's (run.json written)."""
        if self.main:
            changes = self.folder.claim(self.run_options(), resume=resume, overwrite=overwrite)
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
            f"process(es) × {config.grad_accum} accumulation; {per_epoch} batches per epoch"
        )

    # -- preparation -----------------------------------------------------------------------
    def prepare_data(self) -> PreparedData:
        """Load captions, encode each image once, split by image, tokenize."""
        from polycap.data.captions import load_captions, split_by_image
        from polycap.data.encoding import load_encoder
        from polycap.data.features import encode_to_store

        config = self.config
        captions = load_captions(
            config.data, images_dir=config.images_dir, format=config.data_format
        )
        encoder = load_encoder(
            config.encoder, pretrained=config.pretrained, device=str(self.device)
        )
        encoded = encode_to_store(
            encoder,
            captions.images(),
            config.output / FEATURES,
            cache_dir=config.cache_dir,
            progress=config.progress and self.main,
        )
        features, skipped = encoded.store, encoded.stats.skipped
        assert features is not None
        if not len(features):
            raise BadInput(f"{config.data}: none of its images could be read")
        row_of = {path: row for row, path in enumerate(features.paths())}
        train_set, val_set = split_by_image(captions, config.val_fraction, seed=config.seed)
        tokenizer = self.pack.load_tokenizer(config.lm or self.pack.default_lm)
        limit, stop = config.max_tokens, config.stop_token
        train = tokenize_records(train_set.records, row_of, self.pack, tokenizer, limit, stop)
        val = tokenize_records(val_set.records, row_of, self.pack, tokenizer, limit, stop)
        if not train.token_ids:
            raise BadInput(f"{config.data}: no training captions left after skipping bad images")
        encoder_info = encoder.encoder_spec
        self.say(
            f"{len(captions.records)} captions of {len(captions.images())} images; "
            f"train {len(train.token_ids)} / validation {len(val.token_ids)} captions; "
            f"{len(skipped)} images skipped"
        )
        if skipped:
            self.say(f"Skipped {describe_skipped(skipped)}")
        data = PreparedData(train, val, features, tokenizer, encoder_info, len(skipped))
        if config.retrieval_bank is not None:
            self.add_prompts(data, captions, encoder)
        return data

    def add_prompts(self, data: PreparedData, captions: Any, encoder: Any) -> None:
        """Retrieval prompts for every encoded image (its own entry and references excluded)."""
        import os

        from polycap.model.augmented import RetrievalSetup, training_prompts
        from polycap.retrieval.bank import Bank
        from polycap.retrieval.search import check_encoder

        config = self.config
        bank = Bank.open(config.retrieval_bank)
        if bank.language != self.pack.code:
            raise BadInput(
                f"--retrieval-bank {bank.path}: bank is in {bank.language!r}, "
                f"training in {self.pack.code!r}"
            )
        check_encoder(bank, encoder)
        setup = RetrievalSetup.for_bank(bank, self.pack, config.retrieval_k)
        own = {os.path.realpath(p): texts for p, texts in captions.by_image().items()}
        data.prompts = training_prompts(bank, data.features, own, self.pack, data.tokenizer, setup)
        data.retrieval = setup.to_json()
        lengths = [len(p) for p in data.prompts]
        self.say(
            f"Retrieval prompts from {bank.path} (k={setup.k}): "
            f"{sum(lengths) / max(1, len(lengths)):.1f} tokens on average"
        )

    def load_or_build(self, start: Path | None, data: PreparedData) -> Any:
        """The checkpoint's model when resuming, else a new one (with feature statistics)."""
        from polycap.model.captioner import Captioner

        if start is not None:
            return Captioner.load(start, device=self.device, registries=self.registries).train()
        config = self.config
        model = Captioner.build(
            pack=self.pack,
            tokenizer=data.tokenizer,
            lm=self.pack.load_decoder(config.lm or self.pack.default_lm),
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
        if data.retrieval is not None:
            model.config["retrieval"] = data.retrieval
        if config.standardize_features:
            model.set_feature_stats(data.features.blocks(rows=sorted(set(data.train.feature_rows))))
        return model

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
                if last_of_group:
                    self.optimizer_step(fit)
                    state.step += 1
                    periodic = config.save_every and state.step % config.save_every == 0
                    if periodic and index + 1 < len(batches):  # else the epoch's own follows
                        self.checkpoint(fit, state)
                    self.hook("step", self.main)
                progress.update(task, advance=1, description=f"{title} loss {loss:.3f}")
        return len(batches) - first

    def progress_bar(self) -> Any:
        from polycap.util.progress import rich_progress

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

    def optimizer_step(self, fit: Fitting) -> None:
        with self.phase("optimizer"):
            trainable = [p for p in fit.model.parameters() if p.requires_grad]
            self.accelerator.clip_grad_norm_(trainable, 1.0)
            fit.optimizer.step()
            fit.scheduler.step()
            fit.optimizer.zero_grad(set_to_none=True)

    def end_epoch(self, epoch: int, fit: Fitting, state: TrainState, data: PreparedData) -> None:
        """Validation loss, the epoch's history record, and a checkpoint."""
        train_loss = self.sum_over_processes(state.loss_sum) / max(1, state.seen)
        val_loss = self.evaluate(fit.model, data)
        record = {
            "epoch": epoch + 1,
            "step": state.step,
            "train_loss": train_loss,
            "val_loss": val_loss,
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
        self.say(message)
        log_epoch(self.accelerator, record)
        self.keep_best(fit, state, record)
        self.checkpoint(fit, state)

    def keep_best(self, fit: Fitting, state: TrainState, record: dict[str, Any]) -> None:
        """With a best metric: a new best epoch's model replaces ``best/`` (atomically), before
        the epoch's checkpoint records it as the best (a kill between the two redoes the epoch,
        which writes the same ``best/`` again)."""
        if self.selection is None or not self.selection.update(state, record):
            return
        self.save(self.folder.best, fit.model, state, point="best")
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

    def sum_over_processes(self, value: float) -> float:
        if self.processes == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        return float(self.accelerator.reduce(tensor, reduction="sum")[0])

    # -- checkpoints -----------------------------------------------------------------------
    def training_record(self, state: TrainState) -> dict[str, Any]:
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

    def checkpoint(self, fit: Fitting, state: TrainState) -> Path:
        """Model and trainer state (every process's RNG, the epoch's loss so far summed over
        processes) in one atomic directory, by the main process; older checkpoints pruned."""
        from accelerate.utils import gather_object

        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        rngs = gather_object([rng]) if self.processes > 1 else [rng]
        saved = TrainState(
            **{**state.to_json(), "loss_sum": self.sum_over_processes(state.loss_sum)}
        )
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

        directory = self.save(
            self.folder.checkpoint_path(state.step), fit.model, saved, "checkpoint", extra
        )
        if self.main:
            self.prune_checkpoints(keep=directory)
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
            return plain.save(directory, training=self.training_record(state), extra=write_extra)
        except OSError as error:
            last = self.folder.latest_checkpoint()
            kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written"
            raise BadInput(
                f"{directory}: writing failed ({error.strerror or error}); {kept}"
            ) from None

    def restore(self, start: Path, optimizer: Any, scheduler: Any) -> TrainState:
        """Optimizer, scheduler, this process's RNG and the train state of a checkpoint."""
        path = start / TRAINER_STATE
        try:
            saved = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:  # noqa: BLE001 - any unreadable pickle is the same problem
            raise BadInput(f"{path}: unreadable trainer state ({error})") from None
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

    def prune_checkpoints(self, keep: Path) -> None:
        import shutil

        complete = self.folder.checkpoints()
        for old in complete[: max(0, len(complete) - self.config.keep_checkpoints)]:
            if old != keep:
                shutil.rmtree(old, ignore_errors=True)


def make_selection(config: TrainConfig, registries: Registries) -> Selection | None:
    """The run's best-epoch keeper: by ``--best-metric``, or by val_loss when only
    ``--early-stop`` is given; None when neither is."""
    from polycap.train.selection import LOSS, BestMetric, Selection

    if config.best_metric is None and not config.early_stop:
        return None
    name = config.best_metric or LOSS
    metric = BestMetric.resolve(name, config.eval_metrics, registries)
    if config.val_fraction <= 0:
        option = f"--best-metric {name}" if config.best_metric else "--early-stop"
        raise BadInput(f"{option}: needs a validation split (--val-fraction is 0)")
    return Selection(metric, patience=config.early_stop)


def make_accelerator(config: TrainConfig) -> Any:
    """An ``Accelerator`` for this run: the launcher's processes (one when not launched), the
    device from ``--device``, mixed precision, and a timeout on every collective."""
    from datetime import timedelta

    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import InitProcessGroupKwargs

    from polycap.util.devices import resolve_device

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
    timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, "1800")))
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
    config: TrainConfig,
    resume: bool = False,
    registries: Registries | None = None,
    console: Any = None,
    overwrite: bool = False,
) -> TrainResult:
    """Run one training job; see :class:`TrainConfig`."""
    trainer = Trainer(config, registries=registries, console=console)
    try:
        return trainer.run(resume=resume, overwrite=overwrite)
    finally:
        trainer.folder.unlock()
