"""The captioner: CLIP features -> mapper -> prefix -> causal LM, an ``nn.Module``.

Its checkpoint folder (polycap.json, mapper weights, tokenizer, LM, bundled encoder weights;
written atomically) is :mod:`polycap.model.checkpoint`; :meth:`Captioner.save` and
:meth:`Captioner.load` go through it. The file format's names (``CONFIG_FILE``,
``read_config``, ``load_mapper_weights``, ...) stay importable from here.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from polycap.errors import BadInput
from polycap.model.checkpoint import (  # noqa: F401 - the file format's names, kept here too
    CONFIG_FILE,
    ENCODER_DIR,
    FEATURE_STATS_FILE,
    FORMAT_VERSION,
    LM_DIR,
    MAPPER_FILE,
    TOKENIZER_DIR,
    _registries,
    atomic_directory,
    encoder_weights_file,
    load_feature_stats,
    load_mapper_weights,
    read_checkpoint,
    read_config,
    recorded_encoder_spec,
    write_checkpoint,
)
from polycap.model.lm_keywords import lm_keywords
from polycap.parts import EncoderSpec
from polycap.util.decoders import is_gguf, lm_width

if TYPE_CHECKING:
    from polycap.language import LanguagePack
    from polycap.plugins import Registries

IGNORE_INDEX = -100


@dataclass
class CaptionerOutput:
    """``loss``: mean cross-entropy over caption tokens (padding excluded);
    ``logits``: ``[B, T, vocab]``, position ``t`` predicting ``input_ids[:, t]``."""

    loss: torch.Tensor
    logits: torch.Tensor


@dataclass(frozen=True)
class BuildOptions:
    """How :meth:`Captioner.build` makes a captioner: the ``mapper`` kind and its
    ``mapper_options``, ``prefix_length``, whether to ``train_lm`` and ``normalize_features``.
    ``lm_source``: hub id or path the LM came from (default: its ``name_or_path``); local paths
    are stored absolute. ``save_lm``: bundle the LM weights in checkpoints (default: only when
    ``train_lm``). ``stop_token``: a token (e.g. ``"."``, as in official ClipCap checkpoints)
    that ends captions instead of the pack's end token."""

    mapper: str = "mlp"
    prefix_length: int = 10
    mapper_options: Mapping[str, Any] | None = None
    train_lm: bool = False
    normalize_features: bool = True
    lm_source: str | None = None
    save_lm: bool | None = None
    stop_token: str | None = None


def _encoder_spec(encoder_info: EncoderSpec | Mapping[str, Any]) -> EncoderSpec:
    """The :class:`EncoderSpec` of ``encoder_info``; BadInput when it has no embedding size."""
    encoder = (
        encoder_info
        if isinstance(encoder_info, EncoderSpec)
        else EncoderSpec.from_json(encoder_info)
    )
    if encoder.embed_dim is None:
        raise BadInput("encoder_info needs 'embed_dim' (the image-embedding size)")
    return encoder


def _portable(encoder: EncoderSpec) -> EncoderSpec:
    """``encoder`` with a local weights file made absolute, so it loads from any folder."""
    if encoder.pretrained and Path(encoder.pretrained).expanduser().is_file():
        local = Path(encoder.pretrained).expanduser().resolve()
        return dataclasses.replace(encoder, pretrained=str(local))
    return encoder


def _lm_record(lm: Any, options: BuildOptions) -> dict[str, Any]:
    """polycap.json's ``lm`` (where it loads from; local paths absolute) and ``save_lm``."""
    name = getattr(lm, "name_or_path", None)
    source = options.lm_source or name or ""
    save_lm = options.train_lm if options.save_lm is None else options.save_lm
    if is_gguf(source) or is_gguf(name):
        save_lm = True  # a GGUF file is no from_pretrained folder: bundle the weights
    if source and Path(source).exists():
        source = str(Path(source).resolve())
    return {"lm": source, "save_lm": bool(save_lm)}


class Captioner(nn.Module):
    """Mapper + causal LM + tokenizer + language pack, with a JSON-able ``config``.

    Attributes: ``pack``, ``tokenizer``, ``lm``, ``mapper``, ``config`` (what polycap.json
    records), ``end_token_id``, ``pad_token_id``, ``prefix_length``, ``train_lm``.
    """

    def __init__(
        self,
        pack: LanguagePack,
        tokenizer: Any,
        lm: nn.Module,
        mapper: nn.Module,
        config: dict[str, Any],
    ) -> None:
        super().__init__()
        self.pack = pack
        self.tokenizer = tokenizer
        self.lm = lm
        self.mapper = mapper
        self.config = config
        self.prefix_length = int(config["prefix_length"])
        self.train_lm = bool(config["train_lm"])
        self.directory: Path | None = None  # the checkpoint it was loaded from
        self.normalize_features = bool(config["normalize_features"])
        self.feature_mean: torch.Tensor | None = None
        self.feature_std: torch.Tensor | None = None
        self.stop_token: str | None = config.get("stop_token")
        if self.stop_token:
            self.end_token_id = stop_token_id(tokenizer, self.stop_token)
        else:
            self.end_token_id = pack.end_token_id(tokenizer)
        self.pad_token_id = pack.pad_token_id(tokenizer)
        if not self.train_lm:
            self.lm.requires_grad_(False)
            self.lm.eval()

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        pack: LanguagePack,
        tokenizer: Any,
        lm: nn.Module,
        encoder_info: EncoderSpec | Mapping[str, Any],
        options: BuildOptions | None = None,
        registries: Registries | None = None,
        **fields: Any,
    ) -> Captioner:
        """A fresh captioner: a new mapper (a registered kind) in front of ``lm``.

        ``encoder_info``: the image encoder's :class:`EncoderSpec` (or its JSON record).
        ``fields``: :class:`BuildOptions` fields by keyword (``prefix_length=...``), over
        ``options``.
        """
        opts = replace(options or BuildOptions(), **fields)
        encoder = _encoder_spec(encoder_info)
        mapper_class = _registries(registries).mappers.get(opts.mapper)
        clip_dim = encoder.embed_dim
        width = lm_width(lm)
        built = mapper_class(clip_dim, width, opts.prefix_length, **(opts.mapper_options or {}))
        config = {
            "encoder": _portable(encoder).to_json(cache_key=False),
            "mapper": {
                "kind": opts.mapper,
                "options": built.options(),
                "clip_dim": clip_dim,
                "lm_dim": width,
            },
            "prefix_length": int(opts.prefix_length),
            "language": pack.code,
            **_lm_record(lm, opts),
            "train_lm": bool(opts.train_lm),
            "normalize_features": bool(opts.normalize_features),
        }
        if opts.stop_token:
            config["stop_token"] = opts.stop_token
        return cls(pack, tokenizer, lm, built, config)

    # -- captions as token ids --------------------------------------------------------------
    def encode_caption(self, text: str) -> list[int]:
        """Caption -> ids ending with this model's end token (the stop token when it has one;
        a caption that already ends with the stop token keeps just that one)."""
        return caption_token_ids(self.pack, self.tokenizer, text, self.stop_token)

    def decode_caption(self, ids: list[int], finished: bool = True) -> str:
        """Generated ids (end token cut off) -> text; the stop token of a ``finished`` caption
        is part of its text (official ClipCap captions end with their ".")."""
        if self.stop_token and finished:
            ids = [*ids, self.end_token_id]
        return self.pack.decode_caption(self.tokenizer, ids)

    # -- training / inference ---------------------------------------------------------------
    def train(self, mode: bool = True) -> Captioner:
        """Like nn.Module.train, but a frozen LM stays in eval mode (no dropout)."""
        super().train(mode)
        if not self.train_lm:
            self.lm.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimizer should update: the mapper, plus the LM when ``train_lm``."""
        return [p for p in self.parameters() if p.requires_grad]

    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The LM's token embeddings of ``input_ids``."""
        return self.lm.get_input_embeddings()(input_ids)

    def set_feature_stats(self, features: torch.Tensor | Iterable[torch.Tensor]) -> None:
        """Standardise mapper inputs with the mean and spread of these training features: one
        tensor, or blocks of rows (a feature store's ``blocks()``: never all rows at once).

        CLIP embeddings share a large common direction (random-weight encoders: cosine ~0.98
        between any two images), which a mapper learns around only slowly; centring and
        scaling each dimension exposes what differs between images. Saved with the model.
        """
        if isinstance(features, torch.Tensor):
            prepared = self._prepare(features.float().cpu())
            self.feature_mean = prepared.mean(dim=0)
            spread = prepared.std(dim=0) if len(prepared) > 1 else None
        else:
            mean, spread = streamed_mean_std(features, self._prepare)
            self.feature_mean = mean
        self.feature_std = (
            spread.clamp_min(1e-6) if spread is not None else torch.ones_like(self.feature_mean)
        )
        self.config["standardize_features"] = True

    def _prepare(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(features, dim=-1) if self.normalize_features else features

    def prefix(self, features: torch.Tensor) -> torch.Tensor:
        """``[B, clip_dim]`` image features -> ``[B, prefix_length, lm_dim]`` prefix embeddings
        (features L2-normalised when ``normalize_features``, then standardised when the model
        has feature statistics)."""
        weight = next(self.mapper.parameters())
        features = self._prepare(features.to(device=weight.device).float())
        if self.feature_mean is not None and self.feature_std is not None:
            mean = self.feature_mean.to(features.device)
            features = (features - mean) / self.feature_std.to(features.device)
        prefix = self.mapper(features.to(weight.dtype))
        embedding = self.lm.get_input_embeddings().weight
        return prefix.to(embedding.dtype)

    def forward(
        self,
        features: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        prompt_ids: torch.Tensor | None = None,
        prompt_mask: torch.Tensor | None = None,
    ) -> CaptionerOutput:
        """Teacher forcing on ``[prefix; token embeddings]``.

        ``input_ids``: ``[B, T]`` caption ids (each ending with the end token), right-padded;
        ``attention_mask``: 1 for real tokens, 0 for padding. The loss covers caption tokens
        only (the first is predicted from the last prefix position); prefix positions and
        padding are ignored. ``prompt_ids`` / ``prompt_mask``: a retrieval prompt per row,
        left-padded, placed between prefix and caption (:mod:`polycap.model.augmented`; position ids
        then skip the padding).
        """
        prefix = self.prefix(features)
        input_ids = input_ids.to(prefix.device)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attention_mask = attention_mask.to(prefix.device)
        context, context_mask = prefix, attention_mask.new_ones(prefix.shape[:2])
        extra: dict[str, Any] = {}
        if prompt_ids is not None:
            from polycap.model.augmented import positions, with_prompt

            if prompt_mask is None:
                prompt_mask = torch.ones_like(prompt_ids)
            context, context_mask = with_prompt(self, prefix, prompt_ids, prompt_mask)
        embeds = torch.cat([context, self.embed_tokens(input_ids)], dim=1)
        mask = torch.cat([context_mask.to(attention_mask.dtype), attention_mask], dim=1)
        if prompt_ids is not None:
            extra["position_ids"] = positions(mask)
        # position t predicts token t+1: the last context position predicts the first token
        total = embeds.shape[1]
        first = total - input_ids.shape[1] - 1
        keep, window = self._caption_logits(first, total - 1, total, embeds.device)
        out = self.lm(
            inputs_embeds=embeds,
            attention_mask=mask,
            use_cache=False,
            **keep,
            **extra,
        )
        logits = out.logits[:, window]
        labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
        loss = F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]),
            labels.reshape(-1),
            ignore_index=IGNORE_INDEX,
        )
        return CaptionerOutput(loss=loss, logits=logits)

    def _caption_logits(
        self, first: int, stop: int, total: int, device: torch.device
    ) -> tuple[dict, slice]:
        """The LM keywords that limit the output projection (vocabulary-sized) to the
        positions that predict caption tokens, and the slice of its logits that holds them
        (:meth:`polycap.model.lm_keywords.LMKeywords.keep_window`)."""
        if not hasattr(self, "_lm_keywords"):
            self._lm_keywords = lm_keywords(self.lm)
        return self._lm_keywords.keep_window(first, stop, total, device)

    # -- saving and loading (the file format: polycap.model.checkpoint) ----------------------
    def save(
        self,
        directory: str | os.PathLike[str],
        training: dict[str, Any] | None = None,
        extra: Callable[[Path], None] | None = None,
    ) -> Path:
        """Write the checkpoint to ``directory`` atomically; returns its path.

        ``training``: the training record stored in polycap.json. ``extra(path)``, when
        given, writes more files (e.g. optimizer state) into the checkpoint before it is
        published, so they appear atomically with it.
        """
        return write_checkpoint(self, directory, training, extra)

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str],
        device: str | torch.device = "cpu",
        *,
        expected_language: str | None = None,
        registries: Registries | None = None,
        dtype: Any = None,
    ) -> Captioner:
        """Load a checkpoint written by :meth:`save`, in eval mode, on ``device``.

        Errors: BadInput for a directory that is not a checkpoint, corrupt/missing files, or a
        language other than ``expected_language``; UnknownName when the checkpoint's language
        pack or mapper kind is not installed.
        """
        directory = Path(directory)
        parts = read_checkpoint(directory, expected_language, registries, dtype)
        model = cls(parts.pack, parts.tokenizer, parts.lm, parts.mapper, parts.config)
        if parts.feature_stats is not None:
            model.feature_mean, model.feature_std = parts.feature_stats
        model.directory = directory.resolve()
        model.to(device)
        model.eval()
        return model


def caption_token_ids(
    pack: Any, tokenizer: Any, text: str, stop_token: str | None = None
) -> list[int]:
    """``pack.encode_caption``, or with a ``stop_token`` the caption's ids ending with that token
    instead of the pack's end token (once, when the caption already ends with it)."""
    ids = pack.encode_caption(tokenizer, text)
    if not stop_token:
        return ids
    stop = stop_token_id(tokenizer, stop_token)
    ids = ids[:-1]  # the pack's end token
    return ids if ids and ids[-1] == stop else [*ids, stop]


def stop_token_id(tokenizer: Any, token: str) -> int:
    """The id of ``token`` as one vocabulary entry (BadInput if it is not a single token)."""
    vocab = tokenizer.get_vocab()
    if token in vocab:
        return int(vocab[token])
    ids = tokenizer(token, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise BadInput(
            f"stop token {token!r} is {len(ids)} tokens for tokenizer "
            f"{tokenizer.name_or_path!r}; it must be exactly one"
        )
    return int(ids[0])


def streamed_mean_std(
    blocks: Iterable[torch.Tensor], prepare: Callable[[torch.Tensor], torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-dimension mean and (unbiased) std of ``prepare(block)`` over blocks of rows, merged
    pairwise in float64 (Chan et al.); std is None for a single row."""
    count, mean, squares = 0, None, None
    for block in blocks:
        rows = prepare(block.float().cpu()).double()
        if not len(rows):
            continue
        block_mean = rows.mean(dim=0)
        block_squares = ((rows - block_mean) ** 2).sum(dim=0)
        if mean is None:
            count, mean, squares = len(rows), block_mean, block_squares
            continue
        total = count + len(rows)
        delta = block_mean - mean
        mean = mean + delta * (len(rows) / total)
        squares = squares + block_squares + delta**2 * (count * len(rows) / total)
        count = total
    if mean is None or squares is None:
        raise ValueError("no feature rows to take statistics of")
    spread = (squares / (count - 1)).sqrt().float() if count > 1 else None
    return mean.float(), spread
