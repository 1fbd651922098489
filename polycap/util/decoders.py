"""Loading any causal LM as a decoder: a hub id, a local folder, or a ``.gguf`` file.

GGUF files (llama.cpp's format) load through transformers' own GGUF support
(``from_pretrained(folder, gguf_file=name)``), which de-quantises the weights to float tensors.
The model then still carries the GGUF "quantisation" record, which makes ``save_pretrained``
refuse it; since nothing is quantised any more, :func:`load_causal_lm` drops that record, so a
GGUF decoder is saved like any other (safetensors). A checkpoint always bundles a GGUF-loaded
decoder: :func:`is_gguf` tells :meth:`polycap.model.captioner.Captioner.build`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

GGUF_SUFFIX = ".gguf"


def is_gguf(name_or_path: str | Path | None) -> bool:
    """Whether ``name_or_path`` names a GGUF file."""
    return bool(name_or_path) and str(name_or_path).lower().endswith(GGUF_SUFFIX)


def lm_width(lm: Any) -> int:
    """Width of the LM's token embeddings (the prefix vectors must match it)."""
    return int(lm.get_input_embeddings().embedding_dim)


def from_pretrained_args(name_or_path: str | Path) -> tuple[str, dict[str, Any]]:
    """``(name_or_path, kwargs)`` for a ``from_pretrained`` call: a ``.gguf`` file becomes its
    folder plus ``gguf_file=<name>``; a missing .gguf file is an OSError naming it."""
    if not is_gguf(name_or_path):
        return str(name_or_path), {}
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise OSError(f"no such GGUF file {path}")
    return str(path.resolve().parent), {"gguf_file": path.name}


def load_causal_lm(name_or_path: str | Path, dtype: Any = None) -> Any:
    """``AutoModelForCausalLM.from_pretrained`` for a hub id, folder or ``.gguf`` file; a GGUF
    model comes back de-quantised, savable, with ``name_or_path`` set to the file."""
    from transformers import AutoModelForCausalLM

    source, extra = from_pretrained_args(name_or_path)
    if dtype is not None:
        extra["dtype"] = dtype
    model = AutoModelForCausalLM.from_pretrained(source, **extra)
    if extra.get("gguf_file"):
        drop_gguf_quantization(model)
        model.name_or_path = str(Path(name_or_path).expanduser().resolve())
        model.config._name_or_path = model.name_or_path
    return model


def drop_gguf_quantization(model: Any) -> None:
    """Forget the GGUF quantiser of a de-quantised model (its tensors are plain floats), so
    that ``save_pretrained`` writes it like any model."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def load_auto_tokenizer(name_or_path: str | Path, loader: Any = None) -> Any:
    """``loader.from_pretrained`` (default ``AutoTokenizer``) for a hub id, folder or ``.gguf``
    file (the tokenizer stored in the GGUF file)."""
    if loader is None:
        from transformers import AutoTokenizer

        loader = AutoTokenizer
    source, extra = from_pretrained_args(name_or_path)
    return loader.from_pretrained(source, **extra)
