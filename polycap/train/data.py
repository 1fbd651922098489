"""What training reads: the captions, each image encoded once into the run's feature store,
split by image, tokenized; retrieval prompts for a retrieval-augmented run; batches of it.

Every process of a launched run prepares the same data (each encodes its share of the images).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from polycap.data.captions import split_by_image
from polycap.data.encoding import load_encoder
from polycap.data.features import encode_to_store
from polycap.data.images import describe_skipped, set_max_pixels
from polycap.errors import BadInput
from polycap.model.augmented import RetrievalSetup, left_padded, training_prompts
from polycap.parts import EncoderSpec
from polycap.retrieval.bank import Bank
from polycap.retrieval.search import check_encoder
from polycap.util.batching import pad_right
from polycap.util.run_folder import FEATURES

if TYPE_CHECKING:
    from polycap.data.features import Features
    from polycap.language import LanguagePack
    from polycap.train.settings import TrainSettings


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


def read_captions(settings: TrainSettings) -> Any:
    """The caption set, read with the run's data settings (columns, image limits)."""
    from polycap.data.captions import (
        CaptionSelection,
        load_captions,
        parse_split,
        set_table_columns,
        table_columns,
    )

    if settings.image_column is not None or settings.caption_column is not None:
        image, caption = table_columns()
        set_table_columns(
            image=settings.image_column or image, caption=settings.caption_column or caption
        )
    if settings.max_pixels is not None:
        set_max_pixels(settings.max_pixels)
    return load_captions(
        settings.data,
        images_dir=settings.images_dir,
        format=settings.data_format,
        allow_outside=settings.allow_outside_images,
        selection=CaptionSelection(settings.language or None, parse_split(settings.split)),
    )


def prepare_data(
    settings: TrainSettings,
    pack: LanguagePack,
    device: Any,
    main: bool,
    say: Callable[[str], None],
) -> PreparedData:
    """Load captions, encode each image once, split by image, tokenize (and, with a retrieval
    bank, add each image's prompt). ``say`` reports what was found."""

    captions = read_captions(settings)
    encoder = load_encoder(settings.encoder, pretrained=settings.pretrained, device=str(device))
    encoded = encode_to_store(
        encoder,
        captions.images(),
        settings.output / FEATURES,
        cache_dir=settings.cache_dir,
        progress=settings.progress and main,
    )
    features, skipped = encoded.store, encoded.stats.skipped
    assert features is not None
    if not len(features):
        raise BadInput(f"{settings.data}: none of its images could be read")
    row_of = {path: row for row, path in enumerate(features.paths())}
    train_set, val_set = split_by_image(captions, settings.val_fraction, seed=settings.seed)
    tokenizer = pack.load_tokenizer(settings.lm or pack.default_lm)
    limit, stop = settings.max_tokens, settings.stop_token
    train = tokenize_records(train_set.records, row_of, pack, tokenizer, limit, stop)
    val = tokenize_records(val_set.records, row_of, pack, tokenizer, limit, stop)
    if not train.token_ids:
        raise BadInput(f"{settings.data}: no training captions left after skipping bad images")
    say(
        f"{len(captions.records)} captions of {len(captions.images())} images; "
        f"train {len(train.token_ids)} / validation {len(val.token_ids)} captions; "
        f"{len(skipped)} images skipped"
    )
    if skipped:
        say(f"Skipped {describe_skipped(skipped)}")
    data = PreparedData(train, val, features, tokenizer, encoder.encoder_spec, len(skipped))
    if settings.retrieval_bank is not None:
        add_prompts(data, captions, encoder, settings, pack, say)
    return data


def add_prompts(
    data: PreparedData,
    captions: Any,
    encoder: Any,
    settings: TrainSettings,
    pack: LanguagePack,
    say: Callable[[str], None],
) -> None:
    """Retrieval prompts for every encoded image (its own entry and references excluded)."""

    bank = Bank.open(settings.retrieval_bank)
    if bank.language != pack.code:
        raise BadInput(
            f"--retrieval-bank {bank.path}: bank is in {bank.language!r}, training in {pack.code!r}"
        )
    check_encoder(bank, encoder)
    setup = RetrievalSetup.for_bank(bank, pack, settings.retrieval_k)
    own = {os.path.realpath(p): texts for p, texts in captions.by_image().items()}
    data.prompts = training_prompts(bank, data.features, own, pack, data.tokenizer, setup)
    data.retrieval = setup.to_json()
    lengths = [len(p) for p in data.prompts]
    say(
        f"Retrieval prompts from {bank.path} (k={setup.k}): "
        f"{sum(lengths) / max(1, len(lengths)):.1f} tokens on average"
    )
