"""The training loop: precomputed features, bucketed batches, AMP, accumulation, warmup,
validation loss each epoch, atomic checkpoints and exact resume."""

from __future__ import annotations

import json
import math
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from polycap.batching import bucketed_batches, padded_batches
from polycap.encoding import EncoderSpec
from polycap.errors import BadInput

if TYPE_CHECKING:
    from polycap.language import LanguagePack
    from polycap.plugins import Registries

CHECKPOINT_PREFIX = "checkpoint-"
TRAINER_STATE = "trainer_state.pt"
PRECISIONS = ("fp32", "bf16", "fp16")


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
    batch_size: int = 32
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
class TrainResult:
    """Where the final model went and the per-epoch history."""

    model_dir: Path
    history: list[dict[str, float]]
    skipped_images: int


def resolve_device(device: str) -> torch.device:
    """'auto' means the GPU when there is one."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype for a precision name; None for fp32."""
    if precision not in PRECISIONS:
        raise BadInput(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def linear_warmup_decay(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> Any:
    """Linear warmup to the base lr, then linear decay to zero (as ClipCap trains)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def collate(
    batch: list[int], tokens: TokenizedSet, features: torch.Tensor, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features, right-padded ids and attention mask for one batch of caption indices."""
    longest = max(len(tokens.token_ids[i]) for i in batch)
    input_ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), longest), dtype=torch.long)
    for row, index in enumerate(batch):
        ids = tokens.token_ids[index]
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[row, : len(ids)] = 1
    rows = torch.tensor([tokens.feature_rows[i] for i in batch], dtype=torch.long)
    return features[rows], input_ids, mask


def tokenize_records(
    records: list[Any], row_of: dict[Path, int], pack: LanguagePack, tokenizer: Any, max_tokens: int
) -> TokenizedSet:
    """Token ids per caption (end token kept when truncated) for records whose image encoded."""
    rows: list[int] = []
    ids_list: list[list[int]] = []
    for record in records:
        if record.image not in row_of:
            continue
        ids = pack.encode_caption(tokenizer, record.caption)
        if len(ids) > max_tokens:
            ids = [*ids[: max_tokens - 1], ids[-1]]
        rows.append(row_of[record.image])
        ids_list.append(ids)
    return TokenizedSet(rows, ids_list)


def latest_checkpoint(output: Path) -> Path | None:
    """The newest complete checkpoint (one whose trainer state was written) in a run folder."""
    if not output.is_dir():
        return None
    complete = [
        path
        for path in output.glob(f"{CHECKPOINT_PREFIX}*")
        if (path / TRAINER_STATE).is_file() and path.name[len(CHECKPOINT_PREFIX) :].isdigit()
    ]
    return max(complete, key=lambda path: int(path.name[len(CHECKPOINT_PREFIX) :]), default=None)


class Trainer:
    """One training run: prepares data and model, runs epochs, writes checkpoints."""

    def __init__(
        self, config: TrainConfig, registries: Registries | None = None, console: Any = None
    ) -> None:
        from polycap.plugins import get_registries

        self.config = config
        self.registries = registries or get_registries()
        self.console = console
        self.device = resolve_device(config.device)
        self.amp_dtype = autocast_dtype(config.precision)
        self.pack = self.registries.languages.get(config.language)

    def say(self, message: str) -> None:
        if self.console is not None:
            self.console.print(message)

    # -- preparation -----------------------------------------------------------------------
    def prepare_data(self) -> tuple[TokenizedSet, TokenizedSet, torch.Tensor, Any, int]:
        """Load captions, encode each image once, split by image, tokenize."""
        from polycap.data import load_captions, split_by_image
        from polycap.encoding import encode_images, load_encoder

        config = self.config
        captions = load_captions(
            config.data, images_dir=config.images_dir, format=config.data_format
        )
        encoder = load_encoder(
            config.encoder, pretrained=config.pretrained, device=str(self.device)
        )
        encoded = encode_images(
            encoder, captions.images(), cache_dir=config.cache_dir, progress=config.progress
        )
        if not encoded.paths:
            raise BadInput(f"{config.data}: none of its images could be read")
        row_of = {path: row for row, path in enumerate(encoded.paths)}
        train_set, val_set = split_by_image(captions, config.val_fraction, seed=config.seed)
        tokenizer = self.pack.load_tokenizer(config.lm or self.pack.default_lm)
        train = tokenize_records(train_set.records, row_of, self.pack, tokenizer, config.max_tokens)
        val = tokenize_records(val_set.records, row_of, self.pack, tokenizer, config.max_tokens)
        if not train.token_ids:
            raise BadInput(f"{config.data}: no training captions left after skipping bad images")
        encoder_info = encoder.encoder_spec
        self.say(
            f"{len(captions.records)} captions of {len(captions.images())} images; "
            f"train {len(train.token_ids)} / validation {len(val.token_ids)} captions; "
            f"{len(encoded.skipped)} images skipped"
        )
        return train, val, encoded.features, (tokenizer, encoder_info), len(encoded.skipped)

    def build_model(self, tokenizer: Any, encoder_info: EncoderSpec) -> Any:
        from polycap.model import Captioner

        config = self.config
        lm = self.pack.load_decoder(config.lm or self.pack.default_lm)
        return Captioner.build(
            pack=self.pack,
            tokenizer=tokenizer,
            lm=lm,
            encoder_info=encoder_info,
            mapper=config.mapper,
            prefix_length=config.prefix_length,
            mapper_options=dict(config.mapper_options),
            train_lm=config.train_lm,
            normalize_features=config.normalize_features,
            lm_source=config.lm or self.pack.default_lm,
            save_lm=config.train_lm or config.save_lm,
            registries=self.registries,
        )

    # -- the loop --------------------------------------------------------------------------
    def run(self, resume: bool = False) -> TrainResult:
        """Train for ``config.epochs`` epochs (continuing the last checkpoint when resuming)."""
        from polycap.model import Captioner

        config = self.config
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        train, val, features, (tokenizer, encoder_info), skipped = self.prepare_data()
        features = features.to(self.device)
        start = latest_checkpoint(config.output) if resume else None
        if resume and start is None:
            self.say(f"No checkpoint in {config.output} to resume from; starting fresh.")
        if start is not None:
            model = Captioner.load(start, device=str(self.device), registries=self.registries)
            self.say(f"Resuming from {start}")
        else:
            model = self.build_model(tokenizer, encoder_info)
            if config.standardize_features:
                model.set_feature_stats(features[sorted(set(train.feature_rows))])
        model.to(self.device)

        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
        steps_per_epoch = math.ceil(
            math.ceil(len(train.token_ids) / config.batch_size) / config.grad_accum
        )
        scheduler = linear_warmup_decay(
            optimizer, config.warmup_steps, steps_per_epoch * config.epochs
        )
        use_scaler = self.amp_dtype == torch.float16 and self.device.type == "cuda"
        scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        state = {"epoch": 0, "batch": 0, "step": 0, "history": []}
        if start is not None:
            saved = torch.load(start / TRAINER_STATE, map_location="cpu", weights_only=False)
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            scaler.load_state_dict(saved["scaler"])
            state = saved["state"]
            torch.set_rng_state(saved["torch_rng"])

        pad_id = model.pad_token_id
        for epoch in range(state["epoch"], config.epochs):
            batches = bucketed_batches(train.lengths, config.batch_size, seed=config.seed + epoch)
            model.train()
            train_loss, seen = 0.0, 0
            with self.progress_bar() as progress:
                task = progress.add_task(f"epoch {epoch + 1}/{config.epochs}", total=len(batches))
                progress.update(task, completed=state["batch"])
                for index in range(state["batch"], len(batches)):
                    batch = collate(batches[index], train, features, pad_id)
                    loss = self.train_batch(model, batch, scaler)
                    train_loss += loss * len(batches[index])
                    seen += len(batches[index])
                    last_of_group = (index + 1) % config.grad_accum == 0 or index + 1 == len(
                        batches
                    )
                    if last_of_group:
                        self.optimizer_step(model, optimizer, scheduler, scaler, trainable)
                        state["step"] += 1
                    state["batch"] = index + 1
                    progress.update(
                        task,
                        advance=1,
                        description=(f"epoch {epoch + 1}/{config.epochs} loss {loss:.3f}"),
                    )
                    if (
                        config.save_every
                        and last_of_group
                        and state["step"] % config.save_every == 0
                    ):
                        self.checkpoint(model, optimizer, scheduler, scaler, state)
            val_loss = self.evaluate(model, val, features, pad_id)
            record = {
                "epoch": epoch + 1,
                "step": state["step"],
                "train_loss": train_loss / max(1, seen),
                "val_loss": val_loss,
            }
            state["history"].append(record)
            state["epoch"], state["batch"] = epoch + 1, 0
            self.say(
                f"epoch {epoch + 1}: train loss {record['train_loss']:.4f}, "
                f"validation loss {val_loss:.4f}"
                if not math.isnan(val_loss)
                else f"epoch {epoch + 1}: train loss {record['train_loss']:.4f}"
            )
            self.checkpoint(model, optimizer, scheduler, scaler, state)
        final = config.output / "final"
        model.save(final, training=self.training_record(state))
        return TrainResult(final, state["history"], skipped)

    def progress_bar(self) -> Any:
        from polycap.progress import rich_progress

        return rich_progress(self.console, enabled=self.config.progress)

    def train_batch(self, model: Any, batch: tuple[torch.Tensor, ...], scaler: Any) -> float:
        features, input_ids, mask = (t.to(self.device) for t in batch)
        with torch.autocast(
            self.device.type,
            dtype=self.amp_dtype or torch.float32,
            enabled=self.amp_dtype is not None,
        ):
            loss = model(features, input_ids, mask).loss / self.config.grad_accum
        scaler.scale(loss).backward()
        return float(loss.detach()) * self.config.grad_accum

    def optimizer_step(
        self,
        model: Any,
        optimizer: Any,
        scheduler: Any,
        scaler: Any,
        trainable: list[torch.nn.Parameter],
    ) -> None:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def evaluate(
        self, model: Any, tokens: TokenizedSet, features: torch.Tensor, pad_id: int
    ) -> float:
        """Mean validation loss per caption; NaN when there is no validation split."""
        if not tokens.token_ids:
            return float("nan")
        model.eval()
        total = 0.0
        for batch_indices in padded_batches(tokens.lengths, self.config.batch_size):
            feats, ids, mask = (
                t.to(self.device) for t in collate(batch_indices, tokens, features, pad_id)
            )
            with torch.autocast(
                self.device.type,
                dtype=self.amp_dtype or torch.float32,
                enabled=self.amp_dtype is not None,
            ):
                total += float(model(feats, ids, mask).loss) * len(batch_indices)
        return total / len(tokens.token_ids)

    def training_record(self, state: dict[str, Any]) -> dict[str, Any]:
        return {
            **self.config.to_json(),
            "epochs_done": state["epoch"],
            "steps_done": state["step"],
            "history": state["history"],
        }

    def checkpoint(
        self, model: Any, optimizer: Any, scheduler: Any, scaler: Any, state: dict[str, Any]
    ) -> Path:
        """Model and trainer state in one atomic directory; older checkpoints pruned."""
        directory = self.config.output / f"{CHECKPOINT_PREFIX}{state['step']:08d}"
        trainer_state = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "state": json.loads(json.dumps(state)),
            "torch_rng": torch.get_rng_state(),
        }
        model.save(
            directory,
            training=self.training_record(state),
            extra=lambda target: torch.save(trainer_state, target / TRAINER_STATE),
        )
        self.prune_checkpoints(keep=directory)
        return directory

    def prune_checkpoints(self, keep: Path) -> None:
        checkpoints = sorted(self.config.output.glob(f"{CHECKPOINT_PREFIX}*"))
        complete = [path for path in checkpoints if (path / TRAINER_STATE).is_file()]
        for old in complete[: max(0, len(complete) - self.config.keep_checkpoints)]:
            if old != keep:
                shutil.rmtree(old, ignore_errors=True)


def train(
    config: TrainConfig,
    resume: bool = False,
    registries: Registries | None = None,
    console: Any = None,
) -> TrainResult:
    """Run one training job; see :class:`TrainConfig`."""
    return Trainer(config, registries=registries, console=console).run(resume=resume)
