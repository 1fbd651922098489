"""The checkpoint file format: what a saved captioner's folder holds, written atomically and
read back checked.

A checkpoint is a directory::

    polycap.json          what it is: versions, encoder, mapper kind + options, prefix length,
                          language, LM source, flags, training record (written last)
    mapper.safetensors    the mapper's weights
    feature_stats.safetensors  mean and spread of the training features (standardised models)
    tokenizer/            the tokenizer files (save_pretrained)
    lm/                   the LM (save_pretrained, safetensors) when it was trained or bundled
                          (another folder when polycap.json names it as ``lm_dir``: a Hugging
                          Face export's ``decoder/``); otherwise polycap.json names the hub id /
                          path it is loaded from
    encoder/              the image encoder's weights file, when it was a local file (a copy,
                          never a hard link), so the checkpoint loads from any folder or machine

Saving is atomic: everything is written to a temporary directory beside the target, which
then replaces the target by rename. A reader sees the old checkpoint or the new, never half.
:class:`polycap.model.captioner.Captioner` is the model; this module is its files.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from polycap.errors import BadInput, UnknownName
from polycap.parts import EncoderSpec
from polycap.util.atomic import atomic_folder, copy_file
from polycap.util.decoders import lm_width

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


def _registries(registries: Registries | None) -> Registries:
    if registries is not None:
        return registries
    from polycap.plugins import get_registries

    return get_registries()


def write_checkpoint(
    model: Any,
    directory: str | os.PathLike[str],
    training: dict[str, Any] | None = None,
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``model`` (a :class:`~polycap.model.captioner.Captioner`) to ``directory``
    atomically; returns its path.

    ``training``: the training record stored in polycap.json. ``extra(path)``, when given,
    writes more files (e.g. optimizer state) into the checkpoint before it is published, so
    they appear atomically with it.
    """

    def write(target: Path) -> None:
        _write_weights(model, target)
        if extra is not None:
            extra(target)
        _write_config(model, target, training)

    return atomic_directory(Path(directory), write)


def _write_weights(model: Any, target: Path) -> None:
    """The mapper, the feature statistics, the tokenizer and (when bundled) the LM."""
    from safetensors.torch import save_file

    state = {
        name: tensor.detach().to("cpu").contiguous()
        for name, tensor in model.mapper.state_dict().items()
    }
    save_file(state, str(target / MAPPER_FILE), metadata={"format": "pt"})
    if model.feature_mean is not None and model.feature_std is not None:
        stats = {"mean": model.feature_mean.cpu(), "std": model.feature_std.cpu()}
        save_file(stats, str(target / FEATURE_STATS_FILE), metadata={"format": "pt"})
    model.tokenizer.save_pretrained(str(target / TOKENIZER_DIR))
    if model.config.get("save_lm") or model.train_lm:
        lm_dir = target / model.config.get("lm_dir", LM_DIR)
        model.lm.save_pretrained(str(lm_dir), safe_serialization=True)


def _write_config(model: Any, target: Path, training: dict[str, Any] | None) -> None:
    """polycap.json, last (fsynced): a folder with it is a complete checkpoint."""
    from polycap.version import __version__

    record = {
        "polycap_version": __version__,
        "format_version": FORMAT_VERSION,
        **model.config,
        "encoder": _bundle_encoder_weights(model.config, model.directory, target),
        "training": training,
    }
    text = json.dumps(record, indent=2, ensure_ascii=False, default=str)
    with open(target / CONFIG_FILE, "w", encoding="utf-8") as handle:
        handle.write(text + "\n")
        handle.flush()
        os.fsync(handle.fileno())


@dataclass
class CheckpointParts:
    """What a checkpoint folder holds, read and checked: the pieces of a captioner."""

    pack: LanguagePack
    tokenizer: Any
    lm: nn.Module
    mapper: nn.Module
    config: dict[str, Any]  # polycap.json minus per-save fields (the model's ``config``)
    feature_stats: tuple[torch.Tensor, torch.Tensor] | None


def read_checkpoint(
    directory: Path,
    expected_language: str | None = None,
    registries: Registries | None = None,
    dtype: Any = None,
) -> CheckpointParts:
    """The parts of the checkpoint in ``directory`` (see :meth:`Captioner.load` for the
    errors)."""
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
    stats = None
    if config.get("standardize_features"):
        stats = load_feature_stats(directory / FEATURE_STATS_FILE)
    return CheckpointParts(pack, tokenizer, lm, mapper, _model_config(config), stats)


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


def _bundle_encoder_weights(
    config: dict[str, Any], directory: Path | None, target: Path
) -> dict[str, Any]:
    """Put the encoder's local weights file into the checkpoint being written at ``target``
    (an independent copy: editing either never changes the other), so the checkpoint loads
    on another machine; returns the encoder record with ``bundled`` set (the file's path
    inside the checkpoint)."""
    record = dict(config["encoder"])
    weights = encoder_weights_file(config, directory)
    if weights is None:
        record.pop("bundled", None)
        return record
    (target / ENCODER_DIR).mkdir(exist_ok=True)
    copy_file(weights, target / ENCODER_DIR / weights.name)  # a copy, never a hard link
    record["bundled"] = f"{ENCODER_DIR}/{weights.name}"
    return record


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
