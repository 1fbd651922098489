"""The Python API: ``polycap.load(model).caption(images, **generation_options)``.

``model`` is anything ``polycap caption --model`` takes: a checkpoint folder, a run folder, an
exported Hugging Face folder, an ONNX export (run by ONNX Runtime) or a Hub id. ``images``: a
path, a PIL image or a feature tensor (``[clip_dim]``), or a list of paths and PIL images, or a
``[B, clip_dim]`` tensor of image features (from the model's own encoder). Captions come from
the same :class:`~polycap.inference.pipeline.CaptionPipeline` as ``polycap caption``'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from polycap.errors import BadInput
from polycap.inference.pipeline import CaptionPipeline, generation_config

if TYPE_CHECKING:
    import torch

    from polycap.parts import ImageEncoder


def load(model: str | Path, device: str = "auto", bank: str | Path | None = None) -> Captioner:
    """Load ``model`` for captioning on ``device`` ("auto", "cpu", "cuda", "cuda:1", "mps");
    ``bank``: another bank for a retrieval-augmented model."""
    from polycap.util.devices import resolve_device

    resolved = str(resolve_device(device))
    return Captioner(CaptionPipeline.load(model, device=resolved, bank=bank))


class Captioner:
    """A loaded model with its image encoder (loaded on first use)."""

    def __init__(self, pipeline: CaptionPipeline) -> None:
        self.pipeline = pipeline

    @property
    def model(self) -> Any:
        return self.pipeline.model

    @property
    def device(self) -> str:
        return self.pipeline.device

    @property
    def language(self) -> str:
        return self.pipeline.language

    @property
    def encoder(self) -> ImageEncoder:
        """The image encoder the model was trained with (ONNX exports bring their own)."""
        return self.pipeline.encoder

    def caption(
        self, images: Any, batch_size: int = 64, **generation_options: Any
    ) -> str | list[str] | list[list[str]]:
        """Captions of ``images`` (see the module docstring).

        ``generation_options``: those of ``polycap caption`` (``beams``, ``max_length``,
        ``sample``, ``top_k``, ``top_p``, ``temperature``, ``num_captions``, ``seed``,
        ``repetition_penalty``, ``no_repeat_ngram_size``). One
        caption per image gives a string per image, more give a list per image; one image (not
        in a list) gives just its result. Unreadable images raise
        :class:`polycap.errors.BadInput` naming the file.
        """
        config = generation_config(generation_options)
        single = _is_one_image(images)
        found = self.pipeline.caption_features(
            self.features(images, batch_size), config, batch_size
        )
        results: list[Any] = [c[0] if config.num_captions == 1 else c for c in found.captions]
        return results[0] if single else results

    def features(self, images: Any, batch_size: int = 64) -> torch.Tensor:
        """``[B, clip_dim]`` features of ``images`` from the model's own image encoder (a
        feature tensor is returned as it is, ``[D]`` as ``[1, D]``)."""
        import torch

        if isinstance(images, torch.Tensor):
            if images.dim() not in (1, 2):
                raise BadInput(f"feature tensor of shape {tuple(images.shape)}: expected [B, D]")
            return images.float().reshape(-1, images.shape[-1])
        items = [images] if _is_one_image(images) else list(images)
        chunks = [
            self.encoder.encode_images(
                torch.stack([self.encoder.preprocess(_rgb(item)) for item in chunk])
            )
            for chunk in (items[i : i + batch_size] for i in range(0, len(items), batch_size))
        ]
        if not chunks:
            return torch.empty(0, int(self.model.config["encoder"]["embed_dim"]))
        return torch.cat(chunks)


def _is_one_image(images: Any) -> bool:
    import torch

    if isinstance(images, torch.Tensor):
        return images.dim() == 1
    return isinstance(images, (str, Path)) or not isinstance(images, Sequence)


def _rgb(item: Any) -> Any:
    """A path or a PIL image, as an RGB image a person would see."""
    from PIL import Image

    from polycap.data.images import load_image, to_rgb

    if isinstance(item, Image.Image):
        return to_rgb(item)
    if isinstance(item, (str, Path)):
        return load_image(item)
    raise BadInput(f"cannot caption a {type(item).__name__}: give paths, PIL images or features")
