"""Importing official ClipCap checkpoints (rmokady/CLIP_prefix_caption and its forks).

The official code saves ``torch.save(model.state_dict())`` of ``ClipCaptionModel`` or
``ClipCaptionPrefix``: keys ``clip_project.*`` (the mapper) and ``gpt.*`` (the GPT-2 it feeds).
``clip_project`` is one of

- ``mlp``: ``model.0`` Linear, Tanh, ``model.2`` Linear (``train.py``'s default);
- ``linear``: a single Linear, ``weight``/``bias`` (``predict.py`` for prefixes over 10);
- ``transformer``: ``linear``, ``prefix_const`` and ``transformer.layers.N.*`` pre-norm layers
  (``norm1``, ``attn.to_queries``, ``attn.to_keys_values``, ``attn.project``, ``norm2``,
  ``mlp.fc1``, ``mlp.fc2``; 8 heads, ReLU).

Each becomes the polycap mapper of the same kind with the same function (the transformer's
separate query and key/value projections are stacked into ``nn.MultiheadAttention``'s one
input projection). Official models see CLIP features as they come (no L2 normalisation, no
standardisation) and end captions with a ``"."`` they were trained on, never with the end of
text token; the imported checkpoint records both (``normalize_features: false``, no feature
statistics, ``stop_token``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from polycap.errors import BadInput, first_line

if TYPE_CHECKING:
    from polycap.parts import EncoderSpec

MAPPER_PREFIX = "clip_project."
LM_PREFIX = "gpt."
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
DEFAULT_HEADS = 8  # the official TransformerMapper's fixed head count
# CLIP embedding size -> the open_clip encoder the official code used for it
KNOWN_ENCODERS = {512: ("ViT-B-32", "openai"), 640: ("RN50x4", "openai")}


@dataclass
class ClipCapMapper:
    """What the ``clip_project.*`` tensors describe: kind, sizes, and polycap's state dict."""

    kind: str
    clip_dim: int
    prefix_length: int
    options: dict[str, Any]
    state: dict[str, Any]


def read_state_dict(path: Path) -> dict[str, Any]:
    """The tensors of a ``torch.save``-d state dict (wrapped or ``module.``-prefixed too),
    read weights-only (:func:`polycap.util.safe_load.load_torch_weights`)."""
    import torch

    from polycap.util.safe_load import load_torch_weights

    data = load_torch_weights(path)
    for key in WRAPPER_KEYS:
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not data:
        raise BadInput(
            f"{path}: expected a state dict (name -> tensor), found {type(data).__name__}"
        )
    state = {}
    for name, value in data.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise BadInput(f"{path}: entry {name!r} is not a tensor; expected a state dict")
        state[name.removeprefix("module.")] = value
    return state


def split_state(path: Path, state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(mapper tensors, LM tensors) without their ``clip_project.`` / ``gpt.`` prefixes."""
    mapper = {k[len(MAPPER_PREFIX) :]: v for k, v in state.items() if k.startswith(MAPPER_PREFIX)}
    lm = {k[len(LM_PREFIX) :]: v for k, v in state.items() if k.startswith(LM_PREFIX)}
    unknown = sorted(k for k in state if not k.startswith((MAPPER_PREFIX, LM_PREFIX)))
    if unknown:
        raise BadInput(
            f"{path}: unknown key {unknown[0]!r} ({len(unknown)} in all); a ClipCap checkpoint "
            "has only clip_project.* and gpt.* keys"
        )
    if not mapper:
        raise BadInput(f"{path}: no clip_project.* keys; not a ClipCap checkpoint")
    return mapper, lm


def _shape(path: Path, state: dict[str, Any], key: str, dims: int) -> tuple[int, ...]:
    if key not in state:
        raise BadInput(f"{path}: missing clip_project.{key}")
    shape = tuple(state[key].shape)
    if len(shape) != dims:
        raise BadInput(f"{path}: clip_project.{key} has shape {list(shape)}, expected {dims}-D")
    return shape


def _prefix_length(path: Path, key: str, out: int, lm_dim: int) -> int:
    if out % lm_dim:
        raise BadInput(
            f"{path}: clip_project.{key} gives {out} values, not a multiple of the LM width "
            f"{lm_dim}; do the weights belong to this --lm?"
        )
    return out // lm_dim


def detect_mapper(path: Path, state: dict[str, Any], lm_dim: int, heads: int) -> ClipCapMapper:
    """Kind, sizes and polycap-layout weights of ``clip_project`` (tensors without prefix)."""
    keys = set(state)
    if {"model.0.weight", "model.2.weight"} <= keys:
        if any(k.startswith("model.") and k.split(".")[1] not in ("0", "2") for k in keys):
            raise BadInput(f"{path}: clip_project.model has more than two Linear layers")
        hidden, clip_dim = _shape(path, state, "model.0.weight", 2)
        out, hidden2 = _shape(path, state, "model.2.weight", 2)
        if hidden2 != hidden:
            raise BadInput(f"{path}: clip_project.model.0 gives {hidden}, model.2 takes {hidden2}")
        renamed = {k.replace("model.", "net.", 1): v for k, v in state.items()}
        prefix = _prefix_length(path, "model.2.weight", out, lm_dim)
        return ClipCapMapper("mlp", clip_dim, prefix, {"hidden_size": hidden}, renamed)
    if keys == {"weight", "bias"}:
        out, clip_dim = _shape(path, state, "weight", 2)
        prefix = _prefix_length(path, "weight", out, lm_dim)
        return ClipCapMapper(
            "linear", clip_dim, prefix, {}, {f"linear.{k}": v for k, v in state.items()}
        )
    if "prefix_const" in keys and "linear.weight" in keys:
        return _transformer(path, state, lm_dim, heads)
    shown = ", ".join(sorted(keys)[:4])
    raise BadInput(
        f"{path}: clip_project.* ({shown}, ...) is none of ClipCap's mappers "
        "(MLP model.0/model.2, Linear weight/bias, TransformerMapper linear/prefix_const)"
    )


def _transformer(path: Path, state: dict[str, Any], lm_dim: int, heads: int) -> ClipCapMapper:
    import torch

    prefix, width = _shape(path, state, "prefix_const", 2)
    if width != lm_dim:
        raise BadInput(
            f"{path}: clip_project.prefix_const has width {width}, the LM has {lm_dim}; "
            "do the weights belong to this --lm?"
        )
    out, clip_dim = _shape(path, state, "linear.weight", 2)
    clip_length = _prefix_length(path, "linear.weight", out, lm_dim)
    layers = sorted({int(k.split(".")[2]) for k in state if k.startswith("transformer.layers.")})
    if not layers or layers != list(range(len(layers))):
        raise BadInput(f"{path}: clip_project.transformer.layers.* missing or not numbered 0..N")
    converted = {
        "linear.weight": state["linear.weight"],
        "linear.bias": state["linear.bias"],
        "prefix_const": state["prefix_const"],
    }
    hidden = _shape(path, state, "transformer.layers.0.mlp.fc1.weight", 2)[0]
    for index in layers:
        old, new = f"transformer.layers.{index}.", f"transformer.layers.{index}."
        q = state[f"{old}attn.to_queries.weight"]
        kv = state[f"{old}attn.to_keys_values.weight"]
        if tuple(q.shape) != (lm_dim, lm_dim) or tuple(kv.shape) != (2 * lm_dim, lm_dim):
            raise BadInput(f"{path}: clip_project.{old}attn.* shapes do not fit width {lm_dim}")
        zeros = torch.zeros(lm_dim, dtype=q.dtype)
        q_bias = state.get(f"{old}attn.to_queries.bias", zeros)
        kv_bias = state.get(f"{old}attn.to_keys_values.bias", torch.cat([zeros, zeros]))
        # keys_values reshapes to (2, heads, head_dim): the first lm_dim rows are the keys
        converted[f"{new}self_attn.in_proj_weight"] = torch.cat([q, kv], dim=0)
        converted[f"{new}self_attn.in_proj_bias"] = torch.cat([q_bias, kv_bias], dim=0)
        for ours, theirs in (
            ("self_attn.out_proj", "attn.project"),
            ("norm1", "norm1"),
            ("norm2", "norm2"),
            ("linear1", "mlp.fc1"),
            ("linear2", "mlp.fc2"),
        ):
            for part in ("weight", "bias"):
                key = f"{old}{theirs}.{part}"
                if key not in state:
                    raise BadInput(f"{path}: missing clip_project.{key}")
                converted[f"{new}{ours}.{part}"] = state[key]
    options = {
        "clip_length": clip_length,
        "num_layers": len(layers),
        "num_heads": heads,
        "mlp_ratio": hidden / lm_dim,
        "dropout": 0.0,
    }
    return ClipCapMapper("transformer", clip_dim, prefix, options, converted)


def load_lm_weights(path: Path, lm: Any, state: dict[str, Any], lm_name: str) -> None:
    """Put the ``gpt.*`` tensors into ``lm``; BadInput when they belong to another model."""
    own = lm.state_dict()
    for key, tensor in state.items():
        if key in own and tuple(own[key].shape) != tuple(tensor.shape):
            raise BadInput(
                f"{path}: gpt.{key} has shape {list(tensor.shape)}, but {lm_name!r} has "
                f"{list(own[key].shape)}; pass the --lm these weights were trained from"
            )
    result = lm.load_state_dict(state, strict=False)
    # old GPT-2 state dicts carry the causal-mask buffers (attn.bias / attn.masked_bias)
    unexpected = [k for k in result.unexpected_keys if not k.endswith(("attn.bias", "masked_bias"))]
    if unexpected:
        raise BadInput(
            f"{path}: gpt.{unexpected[0]} is not a parameter of {lm_name!r} "
            f"({len(unexpected)} such keys); pass the --lm these weights were trained from"
        )
    tied = {"lm_head.weight"} if getattr(lm.config, "tie_word_embeddings", False) else set()
    missing = [k for k in result.missing_keys if k not in tied]
    if missing:
        raise BadInput(f"{path}: no gpt.{missing[0]} ({len(missing)} LM weights missing)")
    if tied:
        lm.tie_weights()


@dataclass(frozen=True)
class ImportOptions:
    """How :func:`import_clipcap` reads an official ClipCap file (see its docstring)."""

    lm: str = "gpt2"
    language: str = "en"
    stop_token: str = "."
    encoder: str | None = None
    pretrained: str | None = None
    heads: int = DEFAULT_HEADS
    force: bool = False  # replace another polycap model at ``output`` (never a foreign folder)


def import_clipcap(
    weights: str | os.PathLike[str],
    output: str | os.PathLike[str],
    options: ImportOptions | None = None,
    registries: Any = None,
    **fields: Any,
) -> Path:
    """Convert an official ClipCap ``.pt`` into a polycap checkpoint at ``output``.

    ``lm``: hub id or folder of the base LM the ``gpt.*`` weights belong to (architecture and
    tokenizer; its weights are used as they are when the file has no ``gpt.*`` keys).
    ``encoder``/``pretrained``: the CLIP the features came from (default: the official one
    for the embedding size: ViT-B-32 for 512, RN50x4 for 640). The LM is bundled.
    ``fields``: :class:`ImportOptions` fields by keyword (``lm=...``), over ``options``.
    """
    from polycap.interop.targets import check_target
    from polycap.model.captioner import Captioner, lm_width

    opts = replace(options or ImportOptions(), **fields)
    lm, stop_token = opts.lm, opts.stop_token
    path = Path(weights)
    check_target(Path(output), "clipcap", opts.force)
    mapper_state, lm_state = split_state(path, read_state_dict(path))
    if registries is None:
        from polycap.plugins import get_registries

        registries = get_registries()
    pack = registries.languages.get(opts.language)
    tokenizer = pack.load_tokenizer(lm)
    decoder = pack.load_decoder(lm)
    if lm_state:
        load_lm_weights(path, decoder, lm_state, lm)
    found = detect_mapper(path, mapper_state, lm_width(decoder), opts.heads)
    encoder_info = _encoder_info(path, found.clip_dim, opts.encoder, opts.pretrained)
    model = Captioner.build(
        pack,
        tokenizer,
        decoder,
        encoder_info,
        mapper=found.kind,
        prefix_length=found.prefix_length,
        mapper_options=found.options,
        normalize_features=False,
        lm_source=lm,
        save_lm=True,
        registries=registries,
        stop_token=stop_token or None,
    )
    try:
        model.mapper.load_state_dict(found.state, strict=True)
    except RuntimeError as error:
        first = first_line(error)
        raise BadInput(
            f"{path}: clip_project.* does not fit a {found.kind} mapper ({first})"
        ) from None
    model.config["imported_from"] = {"format": "clipcap", "file": str(path.resolve())}
    return model.save(output)


def _encoder_info(
    path: Path, clip_dim: int, encoder: str | None, pretrained: str | None
) -> EncoderSpec:
    from polycap.data.encoding import parse_spec
    from polycap.parts import EncoderSpec

    if encoder is None:
        if clip_dim not in KNOWN_ENCODERS:
            raise BadInput(
                f"{path}: CLIP embeddings of size {clip_dim}: pass --encoder (and --pretrained) "
                "naming the CLIP they came from"
            )
        encoder, default_tag = KNOWN_ENCODERS[clip_dim]
        pretrained = pretrained or default_tag
    backend, name = parse_spec(encoder)
    return EncoderSpec(name=name, pretrained=pretrained, backend=backend, embed_dim=clip_dim)
