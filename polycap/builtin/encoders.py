"""The built-in image-encoder backend: open_clip (``open_clip.create_model_and_transforms``)."""

from __future__ import annotations

import difflib
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from polycap.data.encoding import file_digest
from polycap.errors import BadInput, first_line
from polycap.hookspecs import Register, hookimpl
from polycap.parts import ImageEncoder
from polycap.util.safe_load import not_weights

SCHEMAS = ("hf-hub:", "local-dir:")
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


@hookimpl
def register_encoders(register: Register) -> None:
    """``open_clip``: any open_clip model name with a weights tag, a weights file or None."""
    register("open_clip", load_open_clip)


def load_open_clip(model: str, pretrained: str | None, device: str = "cpu") -> OpenClipEncoder:
    """An open_clip model as an :class:`ImageEncoder` (weights: tag, local file, or None)."""
    import open_clip

    schema = next((s for s in SCHEMAS if model.startswith(s)), None)
    if schema is None:
        _register_polycap_configs(model)
        _check_model_name(open_clip, model)
        weights_hash = _check_pretrained(open_clip, model, pretrained)
        if weights_hash is not None and pretrained is not None:  # a local file: recorded
            pretrained = str(Path(pretrained).expanduser().resolve())  # absolute
    else:
        pretrained = None  # the schema's folder / hub repo carries the weights
        weights_hash = _local_dir_hash(model) if schema == "local-dir:" else None
    try:
        clip, _, preprocess = open_clip.create_model_and_transforms(
            model,
            pretrained=pretrained,
            device=device,
            pretrained_text=pretrained is not None,
            **_weights_only(open_clip),
        )
    except (OSError, RuntimeError, ValueError, KeyError, EOFError, pickle.UnpicklingError) as error:
        message = first_line(error)
        raise BadInput(
            f"cannot load open_clip model {model!r} with weights {pretrained!r}: {message[:300]}"
        ) from error
    clip.eval()
    return OpenClipEncoder(model, pretrained, device, clip, preprocess, weights_hash, schema)


def _weights_only(open_clip: Any) -> dict[str, bool]:
    """``weights_only=True`` (tensors only: a weights file never runs code) where this
    open_clip takes it; older ones read weights files with torch's own default."""
    import inspect

    parameters = inspect.signature(open_clip.create_model_and_transforms).parameters
    return {"weights_only": True} if "weights_only" in parameters else {}


def _register_polycap_configs(model: str) -> None:
    """polycap's own tiny config (demo, tests) is known in every process, not only the one
    that built it, so demo checkpoints load in a new shell."""
    from polycap.offline import tiny

    if model == tiny.TINY_CLIP_NAME:
        tiny.register_tiny_clip_config()


def _check_model_name(open_clip: Any, model: str) -> None:
    names = open_clip.list_models()
    if model.replace("/", "-") in names:
        return
    message = f"No open_clip model {model!r}."
    close = difflib.get_close_matches(model, names, n=3, cutoff=0.6)
    if close:
        message += f" Did you mean {', '.join(repr(c) for c in close)}?"
    message += (
        f" ({len(names)} models: python -c 'import open_clip; print(open_clip.list_models())')"
    )
    raise BadInput(message)


def _check_pretrained(open_clip: Any, model: str, pretrained: str | None) -> str | None:
    """Validate the weights argument; for a local file return its sha256."""
    if pretrained is None:
        return None
    if open_clip.is_pretrained_cfg(model.replace("/", "-"), pretrained):
        return None
    path = Path(pretrained).expanduser()
    if path.is_file():
        reason = not_weights(path)
        if reason is not None:
            raise BadInput(f"{pretrained}: {reason}; expected open_clip weights")
        return file_digest(path)
    if path.exists() or "/" in pretrained or path.suffix in WEIGHT_SUFFIXES:
        raise BadInput(f"{pretrained}: no such weights file")
    tags = open_clip.list_pretrained_tags_by_model(model.replace("/", "-"))
    message = f"open_clip model {model!r} has no pretrained weights {pretrained!r}."
    close = difflib.get_close_matches(pretrained, tags, n=1, cutoff=0.5)
    if close:
        message += f" Did you mean {close[0]!r}?"
    message += f" Tags: {', '.join(tags[:10])}." if tags else " It has no pretrained tags."
    raise BadInput(message)


def _local_dir_hash(model: str) -> str | None:
    folder = Path(model[len("local-dir:") :]).expanduser()
    if not folder.is_dir():
        raise BadInput(f"{folder}: no such open_clip model folder")
    files = sorted(
        p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES or p.suffix == ".json"
    )
    if not any(p.suffix in WEIGHT_SUFFIXES for p in files):
        return None  # no weights: random init, not cacheable
    return "-".join(file_digest(p)[:16] for p in files)


class OpenClipEncoder(ImageEncoder):
    """An open_clip CLIP model: image tower for features, text tower for retrieval."""

    backend = "open_clip"

    def __init__(
        self,
        model: str,
        pretrained: str | None,
        device: str,
        clip: Any,
        preprocess: Any,
        weights_hash: str | None = None,
        schema: str | None = None,
    ) -> None:
        self.name = model
        self.pretrained = pretrained
        self.device = device
        self.clip = clip
        self._preprocess = preprocess
        self._tokenizer: Any = None
        self.embed_dim = int(_embed_dim(clip))
        self.cache_key = _cache_key(model, pretrained, weights_hash, schema)

    def preprocess(self, image: Any) -> Any:
        return self._preprocess(image)

    def encode_images(self, pixels: Any) -> Any:
        import torch

        with torch.no_grad():
            features = self.clip.encode_image(pixels.to(self.device))
        return features.float().cpu()

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> Any:
        import open_clip
        import torch

        if getattr(self.clip, "text", None) is None and not hasattr(self.clip, "transformer"):
            raise BadInput(f"encoder {self.name!r} has no text encoder")
        if self._tokenizer is None:
            self._tokenizer = open_clip.get_tokenizer(self.name)
        texts = list(texts)
        if not texts:
            return torch.empty(0, self.embed_dim)
        chunks = []
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                tokens = self._tokenizer(texts[start : start + batch_size]).to(self.device)
                chunks.append(self.clip.encode_text(tokens).float().cpu())
        return torch.cat(chunks)


def _embed_dim(clip: Any) -> int:
    visual = getattr(clip, "visual", None)
    for owner, attribute in ((visual, "output_dim"), (clip, "embed_dim")):
        value = getattr(owner, attribute, None)
        if isinstance(value, int):
            return value
    projection = getattr(clip, "text_projection", None)
    if projection is not None and hasattr(projection, "shape"):
        return int(projection.shape[-1])
    raise BadInput("cannot tell the embedding size of this open_clip model")


def _cache_key(
    model: str, pretrained: str | None, weights_hash: str | None, schema: str | None
) -> str | None:
    """backend + model + weights identity; None (no caching) for random weights."""
    if weights_hash is not None:
        return f"open_clip:{model}:sha256-{weights_hash[:32]}"
    if schema == "hf-hub:":
        return f"open_clip:{model}"
    if pretrained is None:
        return None  # random weights differ per process: never share cache entries
    return f"open_clip:{model}:{pretrained.lower().replace('-', '_')}"
