"""The captioner: CLIP features -> mapper -> prefix -> causal LM; saved self-describing.

A checkpoint is a directory::

    polycap.json          what it is: versions, encoder, mapper kind + options, prefix length,
                          language, LM source, flags, training record (written last)
    mapper.safetensors    the mapper's weights
    tokenizer/            the tokenizer files (save_pretrained)
    lm/                   the LM (save_pretrained, safetensors) when it was trained or bundled
                          (another folder when polycap.json names it as ``lm_dir``: a Hugging
                          Face export's ``decoder/``); otherwise polycap.json names the hub id /
                          path it is loaded from
    encoder/              the image encoder's weights file, when it was a local file (a hard
                          link or a copy), so the checkpoint loads from any folder or machine

Saving is atomic: everything is written to a temporary directory beside the target, which
then replaces the target by rename. A reader sees the old checkpoint or the new, never half.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from polycap.errors import BadInput, UnknownName
from polycap.model.decoders import is_gguf
from polycap.model.lm_keywords import lm_keywords
from polycap.parts import EncoderSpec
from polycap.util.atomic import atomic_folder

if TYPE_CHECKING:
    from polycap.language import LanguagePack
    from polycap.plugins import Registries

CONFIG_FILE = "polycap.json"
MAPPER_FILE = "mapper.safetensors"
FEATURE_STATS_FILE = "feature_stats.safetensors"
TOKENIZER_DIR = "tokenizer"
LM_DIR = "lm"
ENCODER_DIR = "encoder"
FORMAT_VERSION = 1
IGNORE_INDEX = -100


@dataclass
class CaptionerOutput:
    """``loss``: mean cross-entropy over caption tokens (padding excluded);
    ``logits``: ``[B, T, vocab]``, position ``t`` predicting ``input_ids[:, t]``."""

    loss: torch.Tensor
    logits: torch.Tensor


def _registries(registries: Registries | None) -> Registries:
    if registries is not None:
        return registries
    from polycap.plugins import get_registries

    return get_registries()


def lm_width(lm: Any) -> int:
    """Width of the LM's token embeddings (the prefix vectors must match it)."""
    return int(lm.get_input_embeddings().embedding_dim)


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

    # -- saving -----------------------------------------------------------------------------
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
        from polycap.version import __version__

        def write(target: Path) -> None:
            from safetensors.torch import save_file

            state = {
                name: tensor.detach().to("cpu").contiguous()
                for name, tensor in self.mapper.state_dict().items()
            }
            save_file(state, str(target / MAPPER_FILE), metadata={"format": "pt"})
            if self.feature_mean is not None and self.feature_std is not None:
                stats = {"mean": self.feature_mean.cpu(), "std": self.feature_std.cpu()}
                save_file(stats, str(target / FEATURE_STATS_FILE), metadata={"format": "pt"})
            self.tokenizer.save_pretrained(str(target / TOKENIZER_DIR))
            if self.config.get("save_lm") or self.train_lm:
                lm_dir = target / self.config.get("lm_dir", LM_DIR)
                self.lm.save_pretrained(str(lm_dir), safe_serialization=True)
            if extra is not None:
                extra(target)
            record = {
                "polycap_version": __version__,
                "format_version": FORMAT_VERSION,
                **self.config,
                "encoder": _bundle_encoder_weights(self.config, self.directory, target),
                "training": training,
            }
            text = json.dumps(record, indent=2, ensure_ascii=False, default=str)
            with open(target / CONFIG_FILE, "w", encoding="utf-8") as handle:
                handle.write(text + "\n")
                handle.flush()
                os.fsync(handle.fileno())

        return atomic_directory(Path(directory), write)

    # -- loading ----------------------------------------------------------------------------
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
        config = read_config(directory)
        pack, mapper_class = _pack_and_mapper(directory, config, expected_language, registries)
        weights = directory / MAPPER_FILE
        if not weights.is_file():
            raise BadInput(f"{weights}: missing (the checkpoint is incomplete)")
        tokenizer, lm, width = _tokenizer_and_lm(directory, config, pack, dtype)

        def build(prefix_length: int) -> nn.Module:
            return mapper_class(
                int(config["encoder"]["embed_dim"]),
                width,
                prefix_length,
                **config["mapper"]["options"],
            )

        try:
            mapper = build(int(config["prefix_length"]))
        except TypeError as error:
            raise BadInput(f"{directory / CONFIG_FILE}: bad mapper options ({error})") from error
        load_mapper_weights(mapper, weights, rebuild=build)
        model = cls(pack, tokenizer, lm, mapper, _model_config(config))
        if config.get("standardize_features"):
            model.feature_mean, model.feature_std = load_feature_stats(
                directory / FEATURE_STATS_FILE
            )
        model.directory = directory.resolve()
        model.to(device)
        model.eval()
        return model


def _pack_and_mapper(
    directory: Path,
    config: dict[str, Any],
    expected_language: str | None,
    registries: Registries | None,
) -> tuple[LanguagePack, Any]:
    """The checkpoint's language pack and mapper class, from the installed plugins (BadInput
    for another language than ``expected_language``; UnknownName naming what to install)."""
    code = config["language"]
    if expected_language is not None and code != expected_language:
        raise BadInput(f"{directory} was trained for language {code!r}, not {expected_language!r}")
    found = _registries(registries)
    if code not in found.languages:
        raise UnknownName(
            f"{directory} was trained for language {code!r}, but no language pack {code!r} "
            f"is installed. Run: polycap plugins install {code}"
        )
    pack = found.languages.get(code)
    kind = config["mapper"]["kind"]
    if kind not in found.mappers:
        raise UnknownName(
            f"{directory} uses the mapper {kind!r}: {found.mappers.unknown_message(kind)} "
            "Install the plugin that provides it."
        )
    return pack, found.mappers.get(kind)


def _tokenizer_and_lm(
    directory: Path, config: dict[str, Any], pack: LanguagePack, dtype: Any
) -> tuple[Any, nn.Module, int]:
    """The checkpoint's tokenizer and LM (bundled, or from where it came) and the LM's width,
    checked against the width the mapper was trained for."""
    tokenizer_dir = directory / TOKENIZER_DIR
    if not tokenizer_dir.is_dir():
        raise BadInput(f"{tokenizer_dir}: missing (the checkpoint is incomplete)")
    tokenizer = pack.load_tokenizer(str(tokenizer_dir))
    lm_dir = directory / config.get("lm_dir", LM_DIR)
    if config.get("save_lm") or config["train_lm"]:
        if not lm_dir.is_dir():
            raise BadInput(f"{lm_dir}: missing (the checkpoint is incomplete)")
        lm = pack.load_decoder(str(lm_dir), dtype=dtype)
    else:
        lm = pack.load_decoder(config["lm"], dtype=dtype)
    width = lm_width(lm)
    recorded = config["mapper"].get("lm_dim")
    if recorded is not None and int(recorded) != width:
        raise BadInput(
            f"{directory}: the mapper was trained for an LM of width {recorded}, "
            f"but {config['lm']!r} has width {width}"
        )
    return tokenizer, lm, width


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


_REQUIRED = {
    "language": str,
    "lm": str,
    "prefix_length": int,
    "train_lm": bool,
    "mapper": dict,
    "encoder": dict,
}


def read_config(directory: Path) -> dict[str, Any]:
    """polycap.json of a checkpoint, checked; BadInput naming the file and the problem."""
    path = directory / CONFIG_FILE
    if not path.is_file():
        if not directory.exists():
            hint = _interrupted_save_hint(directory)
            raise BadInput(f"{directory}: no such checkpoint{hint}")
        raise BadInput(f"{directory}: not a polycap checkpoint (no {CONFIG_FILE})")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadInput(f"{path}: not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise BadInput(f"{path}: expected a JSON object")
    for key, kind in _REQUIRED.items():
        if not isinstance(config.get(key), kind):
            raise BadInput(f"{path}: missing or invalid {key!r}")
    mapper = config["mapper"]
    if not isinstance(mapper.get("kind"), str) or not isinstance(mapper.get("options"), dict):
        raise BadInput(f"{path}: missing or invalid 'mapper.kind' / 'mapper.options'")
    if not isinstance(config["encoder"].get("embed_dim"), int):
        raise BadInput(f"{path}: missing or invalid 'encoder.embed_dim'")
    return config


def _model_config(config: dict[str, Any]) -> dict[str, Any]:
    """What a loaded model keeps as ``.config`` (polycap.json minus per-save fields)."""
    kept = {k: v for k, v in config.items() if k not in ("polycap_version", "format_version")}
    kept.setdefault("normalize_features", True)
    kept.setdefault("save_lm", kept["train_lm"])
    kept.pop("training", None)
    return kept


def load_mapper_weights(
    mapper: nn.Module, path: Path, rebuild: Callable[[int], nn.Module] | None = None
) -> None:
    """Load ``path`` (safetensors) into ``mapper``; BadInput on a corrupt or mismatched file.

    ``rebuild(prefix_length)`` builds the same mapper with another prefix length: when given,
    a mismatch says which prefix length the weights were trained with.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise BadInput(f"{path}: unreadable weights ({error})") from None
    try:
        mapper.load_state_dict(state, strict=True)
    except RuntimeError:
        raise BadInput(f"{path}: {_mismatch(mapper, state, rebuild)}") from None


def _shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in state.items()}


def _mismatch(
    mapper: nn.Module, state: dict[str, torch.Tensor], rebuild: Callable[[int], nn.Module] | None
) -> str:
    """One line saying how the weights in ``state`` differ from what ``mapper`` needs."""
    needed, found = _shapes(mapper.state_dict()), _shapes(state)
    missing, extra = sorted(set(needed) - set(found)), sorted(set(found) - set(needed))
    if missing or extra:
        return (
            f"weights do not fit the {type(mapper).__name__} that {CONFIG_FILE} describes "
            f"(missing tensors: {missing[:3]}; unexpected tensors: {extra[:3]})"
        )
    name = next(key for key in needed if needed[key] != found[key])
    detail = f"tensor {name!r} is {list(found[name])}, the settings need {list(needed[name])}"
    prefix_length = getattr(mapper, "prefix_length", None)
    fitting = _fitting_prefix_length(rebuild, found) if rebuild is not None else None
    if fitting is not None and fitting != prefix_length:
        return (
            f"holds weights for prefix_length {fitting}, but {CONFIG_FILE} says prefix_length "
            f"{prefix_length} ({detail})"
        )
    return f"weights do not fit the mapper that {CONFIG_FILE} describes ({detail})"


def _fitting_prefix_length(
    rebuild: Callable[[int], nn.Module], found: dict[str, tuple[int, ...]], most: int = 512
) -> int | None:
    """The prefix length whose mapper has exactly the shapes ``found`` (built on the meta
    device, so nothing is allocated), or None."""
    for prefix_length in range(1, most + 1):
        try:
            with torch.device("meta"):
                candidate = rebuild(prefix_length)
        except (TypeError, ValueError, BadInput):
            continue
        if _shapes(candidate.state_dict()) == found:
            return prefix_length
    return None


def load_feature_stats(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of the training features (safetensors); BadInput when missing or corrupt."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise BadInput(f"{path}: missing (the checkpoint is incomplete)")
    try:
        stats = load_file(str(path), device="cpu")
        return stats["mean"], stats["std"]
    except (SafetensorError, OSError, ValueError, KeyError) as error:
        raise BadInput(f"{path}: unreadable feature statistics ({error})") from None


def _interrupted_save_hint(directory: Path) -> str:
    parent = directory.parent
    if not parent.is_dir():
        return ""
    for old in sorted(parent.glob(f".{directory.name}.old-*")):
        if (old / CONFIG_FILE).is_file():
            return f" (a save was interrupted; the previous checkpoint is at {old})"
    return ""


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


def atomic_directory(directory: Path, write: Callable[[Path], None]) -> Path:
    """Create ``directory`` by ``write(temp_dir)`` then rename(s); never half-written.

    An existing checkpoint at ``directory`` is replaced; an existing non-empty directory that
    is not a checkpoint is refused (BadInput) rather than deleted.
    """
    directory = Path(os.path.abspath(directory))
    if directory.exists() and not directory.is_dir():
        raise BadInput(f"{directory}: exists and is not a directory")
    if directory.is_dir() and not (directory / CONFIG_FILE).is_file() and any(directory.iterdir()):
        raise BadInput(
            f"{directory}: exists and is not a polycap checkpoint; refusing to overwrite it"
        )
    with atomic_folder(directory) as temp:
        write(temp)
    return directory


def encoder_weights_file(config: dict[str, Any], directory: Path | None) -> Path | None:
    """The encoder's local weights file: the copy bundled in checkpoint ``directory`` when
    there is one, else the recorded absolute path when it is a file; None for weight tags."""
    encoder = config["encoder"]
    bundled = encoder.get("bundled")
    if bundled and directory is not None and (directory / bundled).is_file():
        return directory / bundled
    pretrained = encoder.get("pretrained")
    if pretrained and Path(pretrained).is_absolute() and Path(pretrained).is_file():
        return Path(pretrained)
    return None


def recorded_encoder_spec(config: dict[str, Any], directory: Path | None) -> EncoderSpec:
    """The encoder a checkpoint records, loading from its own copies where it has them: the
    weights file in ``encoder/`` (``bundled``), or the encoder's model folder (``bundled_model``,
    e.g. a transformers CLIP folder in a Hugging Face export's ``image_encoder/``)."""
    spec = EncoderSpec.from_json(config["encoder"])
    weights = encoder_weights_file(config, directory)
    if weights is not None:
        return dataclasses.replace(spec, pretrained=str(weights))
    folder = config["encoder"].get("bundled_model")
    if folder and directory is not None and (directory / folder).is_dir():
        return dataclasses.replace(spec, name=str(directory / folder))
    return spec


def _bundle_encoder_weights(
    config: dict[str, Any], directory: Path | None, target: Path
) -> dict[str, Any]:
    """Put the encoder's local weights file into the checkpoint being written at ``target``
    (a hard link, else a copy), so the checkpoint loads on another machine; returns the
    encoder record with ``bundled`` set (the file's path inside the checkpoint)."""
    record = dict(config["encoder"])
    weights = encoder_weights_file(config, directory)
    if weights is None:
        record.pop("bundled", None)
        return record
    (target / ENCODER_DIR).mkdir(exist_ok=True)
    copy = target / ENCODER_DIR / weights.name
    try:
        os.link(weights, copy)
    except OSError:  # another file system, or links not allowed
        shutil.copyfile(weights, copy)
    record["bundled"] = f"{ENCODER_DIR}/{weights.name}"
    return record
