"""A polycap captioner for transformers: image encoder -> mapper -> prefix -> causal LM.

Remote code of a ``polycap export --to hf`` folder (``AutoModel.from_pretrained(folder,
trust_remote_code=True)``); it must not import polycap. The parts load from the folder's own
files, nothing is downloaded: the image encoder from ``config.image_encoder["folder"]`` (open_clip's
``open_clip_config.json`` + weights through ``local-dir:``, or a transformers CLIP/SigLIP
folder), the mapper from its safetensors file, the decoder (a stock causal LM) from
``config.decoder_folder``. ``generate(pixel_values)`` returns token ids for
``processor.batch_decode``: greedy and sampling through the decoder's own ``generate`` with
the prefix as ``inputs_embeds``; ``num_beams > 1`` runs polycap's beam search (ClipCap's:
candidates ranked by log-probability over length at every step).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, PreTrainedModel

from .configuration_polycap import PolycapConfig

# -- the mappers (the same modules, and so the same weight names, as polycap's) ---------------


class MLPMapper(nn.Module):
    def __init__(self, clip_dim: int, lm_dim: int, prefix_length: int, hidden_size: int) -> None:
        super().__init__()
        self.prefix_length, self.lm_dim = prefix_length, lm_dim
        self.net = nn.Sequential(
            nn.Linear(clip_dim, hidden_size),
            nn.Tanh(),
            nn.Linear(hidden_size, lm_dim * prefix_length),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).view(-1, self.prefix_length, self.lm_dim)


class LinearMapper(nn.Module):
    def __init__(self, clip_dim: int, lm_dim: int, prefix_length: int) -> None:
        super().__init__()
        self.prefix_length, self.lm_dim = prefix_length, lm_dim
        self.linear = nn.Linear(clip_dim, lm_dim * prefix_length)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features).view(-1, self.prefix_length, self.lm_dim)


class TransformerMapper(nn.Module):
    def __init__(self, clip_dim: int, lm_dim: int, prefix_length: int, **options: Any) -> None:
        super().__init__()
        self.lm_dim = lm_dim
        self.clip_length = int(options["clip_length"])
        self.linear = nn.Linear(clip_dim, self.clip_length * lm_dim)
        self.prefix_const = nn.Parameter(torch.zeros(prefix_length, lm_dim))
        layer = nn.TransformerEncoderLayer(
            d_model=lm_dim,
            nhead=int(options["num_heads"]),
            dim_feedforward=max(1, int(lm_dim * float(options["mlp_ratio"]))),
            dropout=float(options["dropout"]),
            activation="relu",
            batch_first=True,
            norm_first=True,
        )
        self.transformer = nn.TransformerEncoder(
            layer, num_layers=int(options["num_layers"]), enable_nested_tensor=False
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        batch = features.shape[0]
        mapped = self.linear(features).view(batch, self.clip_length, self.lm_dim)
        const = self.prefix_const.to(mapped.dtype).unsqueeze(0).expand(batch, -1, -1)
        return self.transformer(torch.cat([mapped, const], dim=1))[:, self.clip_length :]


MAPPERS = {"mlp": MLPMapper, "linear": LinearMapper, "transformer": TransformerMapper}


def build_mapper(record: dict[str, Any], prefix_length: int) -> nn.Module:
    kind = record["kind"]
    if kind not in MAPPERS:
        raise ValueError(f"mapper {kind!r} has no transformers port (kinds: {sorted(MAPPERS)})")
    sizes = (int(record["clip_dim"]), int(record["lm_dim"]), prefix_length)
    return MAPPERS[kind](*sizes, **record.get("options", {}))


# -- the image encoders --------------------------------------------------------------------------


class OpenClipImages(nn.Module):
    """open_clip's image tower, built from ``open_clip_config.json`` and weights in ``folder``."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        import open_clip

        self.clip = open_clip.create_model(f"local-dir:{folder}", load_weights=True)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(pixel_values)


class TransformersImages(nn.Module):
    """A transformers image-text model (CLIP, SigLIP, ...): its projected image features."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.clip = AutoModel.from_pretrained(str(folder))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.clip.get_image_features(pixel_values=pixel_values)
        return out if isinstance(out, torch.Tensor) else out.pooler_output


ENCODERS = {"open_clip": OpenClipImages, "transformers": TransformersImages}


def _local_folder(name_or_path: str | os.PathLike[str], options: dict[str, Any]) -> Path:
    """The export as a local folder: itself, or its Hub snapshot (downloaded or cached)."""
    if Path(name_or_path).is_dir():
        return Path(name_or_path)
    from huggingface_hub import snapshot_download

    wanted = ("revision", "cache_dir", "token", "local_files_only")
    return Path(
        snapshot_download(str(name_or_path), **{k: options[k] for k in wanted if k in options})
    )


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (the export is incomplete)")
    return load_file(str(path), device="cpu")


class PolycapModel(PreTrainedModel):
    """Image encoder + mapper + decoder of a polycap export (see the module docstring)."""

    config_class = PolycapConfig
    base_model_prefix = "polycap"
    main_input_name = "pixel_values"

    def __init__(self, config: PolycapConfig) -> None:
        super().__init__(config)
        self.mapper = build_mapper(config.mapper, config.prefix_length)
        self.encoder: nn.Module | None = None
        self.decoder: Any = None
        self.register_buffer("feature_mean", None, persistent=False)
        self.register_buffer("feature_std", None, persistent=False)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike[str], *args: Any, config: Any = None, **kwargs: Any
    ) -> PolycapModel:
        """Assemble the model from the export's files (no single ``model.safetensors``)."""
        folder = _local_folder(name_or_path, kwargs)
        if not isinstance(config, PolycapConfig):
            config = PolycapConfig.from_pretrained(str(folder))
        model = cls(config)
        model.mapper.load_state_dict(_load_safetensors(folder / config.mapper["file"]))
        if config.feature_stats:
            stats = _load_safetensors(folder / config.feature_stats)
            model.feature_mean, model.feature_std = stats["mean"], stats["std"]
        encoder = config.image_encoder
        model.encoder = ENCODERS[encoder["backend"]](folder / encoder["folder"])
        dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
        model.decoder = AutoModelForCausalLM.from_pretrained(
            str(folder / config.decoder_folder), **({"dtype": dtype} if dtype is not None else {})
        )
        return model.eval()

    # -- image -> prefix -----------------------------------------------------------------------
    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` pixels (the processor's) -> ``[B, clip_dim]`` image features."""
        return self.encoder(pixel_values.to(self.device)).float()

    def prefix(self, features: torch.Tensor) -> torch.Tensor:
        """``[B, clip_dim]`` features -> ``[B, prefix_length, lm_dim]``: what the decoder reads
        before the caption (L2-normalised and standardised as in training, then mapped)."""
        features = features.float().to(self.device)
        if self.config.normalize_features:
            features = F.normalize(features, dim=-1)
        if self.feature_mean is not None:
            features = (features - self.feature_mean.to(features)) / self.feature_std.to(features)
        weight = next(self.mapper.parameters())
        prefix = self.mapper(features.to(weight.dtype))
        return prefix.to(self.decoder.get_input_embeddings().weight.dtype)

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor | None = None) -> Any:
        """The decoder over ``[prefix; input_ids]`` (teacher forcing); its output has the logits."""
        embeds = self.prefix(self.image_features(pixel_values))
        if input_ids is not None:
            tokens = self.decoder.get_input_embeddings()(input_ids.to(embeds.device))
            embeds = torch.cat([embeds, tokens], dim=1)
        return self.decoder(inputs_embeds=embeds)

    # -- captions ------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(
        self,
        pixel_values: torch.Tensor | None = None,
        max_new_tokens: int | None = None,
        num_beams: int = 1,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Caption token ids ``[B, T]`` (the stop token, then padding, after each caption).

        ``image_features=`` instead of ``pixel_values`` captions features computed elsewhere.
        Other keywords (``do_sample``, ``top_p``, ...) go to the decoder's ``generate``."""
        features = kwargs.pop("image_features", None)
        if features is None:
            features = self.image_features(pixel_values)
        prefix = self.prefix(features)
        length = int(max_new_tokens or self.config.max_length)
        stop, pad = int(self.config.stop_token_id), int(self.config.pad_token_id)
        if num_beams > 1:
            return beam_search(self.decoder, prefix, num_beams, length, (stop, pad))
        mask = torch.ones(prefix.shape[:2], dtype=torch.long, device=prefix.device)
        kwargs.setdefault("do_sample", False)
        return self.decoder.generate(
            inputs_embeds=prefix,
            attention_mask=mask,
            max_new_tokens=length,
            eos_token_id=stop,
            pad_token_id=pad,
            **kwargs,
        )


def beam_search(
    decoder: Any, prefix: torch.Tensor, width: int, length: int, ends: tuple[int, int]
) -> torch.Tensor:
    """polycap's (ClipCap's) beam search: a beam's score is its summed log-probability, and
    candidates are ranked by score / length (stop token counted) at every step; a finished
    beam stays as one candidate with its score and length. The best beam per image."""
    stop, pad = ends
    images = prefix.shape[0]
    rows = torch.arange(images, device=prefix.device).repeat_interleave(width)
    out = decoder(inputs_embeds=prefix, use_cache=True)
    logits, cache = out.logits[:, -1].float()[rows], _cache(out)
    cache.reorder_cache(rows)
    keyword = _cache_keyword(decoder)
    scores = torch.zeros(images, width, device=prefix.device)
    scores[:, 1:] = float("-inf")
    lengths = torch.zeros_like(scores)
    finished = torch.zeros_like(scores, dtype=torch.bool)
    tokens = torch.empty((images * width, 0), dtype=torch.long, device=prefix.device)
    filler = torch.full((logits.shape[-1],), float("-inf"), device=prefix.device)
    filler[stop] = 0.0
    for step in range(length):
        vocab = logits.shape[-1]
        logp = torch.log_softmax(logits, dim=-1).view(images, width, vocab)
        logp = torch.where(finished[..., None], filler, logp)
        grown = lengths + (~finished).float()
        totals = scores[..., None] + logp
        best = (totals / grown[..., None]).view(images, -1).topk(width, dim=1).indices
        source = torch.div(best, vocab, rounding_mode="floor")
        chosen = best % vocab
        scores = totals.view(images, -1).gather(1, best)
        lengths, finished = grown.gather(1, source), finished.gather(1, source) | (chosen == stop)
        picked = (torch.arange(images, device=prefix.device)[:, None] * width + source).view(-1)
        tokens = torch.cat([tokens[picked], chosen.view(-1, 1)], dim=1)
        if bool(finished.all()) or step + 1 == length:
            break
        cache.reorder_cache(picked)
        out = decoder(input_ids=chosen.view(-1, 1), use_cache=True, **{keyword: cache})
        logits, cache = out.logits[:, -1].float(), _cache(out)
    return _best_beams(tokens, scores / lengths.clamp_min(1), width, (stop, pad))


def _cache_keyword(decoder: Any) -> str:
    """``cache`` (transformers 5.x) or ``past_key_values`` (before)."""
    import inspect

    return (
        "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"
    )


def _cache(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _best_beams(
    tokens: torch.Tensor, ranked: torch.Tensor, width: int, ends: tuple[int, int]
) -> torch.Tensor:
    """Each image's best beam, cut after its stop token, padded to one length."""
    stop, pad = ends
    best = ranked.argmax(dim=1)
    chosen = []
    for image, beam in enumerate(best.tolist()):
        ids = tokens[image * width + beam].tolist()
        chosen.append(ids[: ids.index(stop) + 1] if stop in ids else ids)
    longest = max(len(ids) for ids in chosen)
    padded = [ids + [pad] * (longest - len(ids)) for ids in chosen]
    return torch.tensor(padded, dtype=torch.long, device=tokens.device)
