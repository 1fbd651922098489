"""The ``hf`` encoder backend: ``AutoModel`` + ``AutoImageProcessor`` (+ ``AutoTokenizer``).

Any model with ``get_image_features`` works (``CLIPModel``, ``SiglipModel``,
``ChineseCLIPModel``, ...); ``get_text_features`` gives the text tower where there is one.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from polycap.data.encoding import file_digest
from polycap.errors import BadInput
from polycap.language import load_pretrained
from polycap.parts import ImageEncoder

WEIGHT_SUFFIXES = (".safetensors", ".bin")


def load_hf_encoder(model: str, pretrained: str | None, device: str = "cpu") -> HFEncoder:
    """A transformers image-text model as an :class:`ImageEncoder` (``pretrained`` is unused:
    the hub id or folder carries the weights)."""
    from transformers import AutoImageProcessor, AutoModel

    clip = load_pretrained(AutoModel.from_pretrained, model, "image-text model")
    if not hasattr(clip, "get_image_features"):
        raise BadInput(
            f"{model}: a {type(clip).__name__} has no image features "
            "(expected CLIPModel, SiglipModel, ChineseCLIPModel, ...)"
        )
    processor = load_pretrained(AutoImageProcessor.from_pretrained, model, "image processor")
    clip.to(device).eval()
    return HFEncoder(model, device, clip, processor, _cache_key(model))


def _cache_key(model: str) -> str:
    """``hf:<model>``, with the sha256 of its weights files for a local folder."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        files = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES)
        digest = "-".join(file_digest(p)[:16] for p in files)
        return f"hf:{folder.resolve().name}:sha256-{digest}"
    return f"hf:{model}"


def _embed_dim(config: Any) -> int:
    """Projected embedding size: ``projection_dim`` (CLIP, Chinese-CLIP), else the vision
    width (SigLIP has no projection)."""
    projection = getattr(config, "projection_dim", None)
    if isinstance(projection, int):
        return projection
    return int(config.vision_config.hidden_size)


def _features(output: Any) -> Any:
    """transformers 5 returns a model output (``pooler_output`` = projected), 4.x a tensor."""
    import torch

    return output if isinstance(output, torch.Tensor) else output.pooler_output


class HFEncoder(ImageEncoder):
    """A transformers image-text model: image tower for features, text tower for retrieval."""

    backend = "hf"

    def __init__(self, model: str, device: str, clip: Any, processor: Any, cache_key: str) -> None:
        folder = Path(model).expanduser()
        self.name = str(folder.resolve()) if folder.is_dir() else model
        self.pretrained = None
        self.device = device
        self.clip = clip
        self.processor = processor
        self.embed_dim = _embed_dim(clip.config)
        self.cache_key = cache_key
        self._tokenizer: Any = None

    def preprocess(self, image: Any) -> Any:
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]

    def encode_images(self, pixels: Any) -> Any:
        import torch

        with torch.no_grad():
            output = self.clip.get_image_features(pixel_values=pixels.to(self.device))
        return _features(output).float().cpu()

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> Any:
        import torch

        if not hasattr(self.clip, "get_text_features"):
            raise BadInput(f"encoder {self.name!r} has no text encoder")
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = load_pretrained(AutoTokenizer.from_pretrained, self.name, "tokenizer")
        texts = list(texts)
        if not texts:
            return torch.empty(0, self.embed_dim)
        # SigLIP was trained on max_length padding; the others pad to the longest text
        siglip = "siglip" in type(self.clip).__name__.lower()
        limit = int(self.clip.config.text_config.max_position_embeddings)
        accepted = inspect.signature(self.clip.get_text_features).parameters
        chunks = []
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                tokens = self._tokenizer(
                    texts[start : start + batch_size],
                    padding="max_length" if siglip else True,
                    max_length=limit,
                    truncation=True,
                    return_tensors="pt",
                )
                inputs = {k: v.to(self.device) for k, v in tokens.items() if k in accepted}
                chunks.append(_features(self.clip.get_text_features(**inputs)).float().cpu())
        return torch.cat(chunks)
