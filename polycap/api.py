"""The Python API: ``polycap.load(model).caption(images, **generation_options)``.

``model`` is anything ``polycap caption --model`` takes: a checkpoint folder, a run folder, an
exported Hugging Face folder, an ONNX export (run by ONNX Runtime) or a Hub id. ``images``: a
path, a PIL image or a feature tensor (``[clip_dim]``), or a list of paths and PIL images, or a
``[B, clip_dim]`` tensor of image features (from the model's own encoder).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from polycap.errors import BadInput


def load(model: str | Path, device: str = "cpu") -> Captioner:
    """Load ``model`` for captioning on ``device`` ("cpu", "cuda", "auto")."""
    from polycap.captioning import load_captioner
    from polycap.devices import resolve_device

    device = str(resolve_device(device))
    return Captioner(load_captioner(model, device=device), device)


class Captioner:
    """A loaded model with its image encoder (loaded on first use)."""

    def __init__(self, model: Any, device: str = "cpu") -> None:
        self.model = model
        self.device = device
        self._encoder: Any = None

    @property
    def language(self) -> str:
        return self.model.config["language"]

    @property
    def encoder(self) -> Any:
        """The image encoder the model was trained with (ONNX exports bring their own)."""
        if self._encoder is None:
            from polycap.captioning import encoder_for

            self._encoder = encoder_for(self.model, device=self.device)
        return self._encoder

    def caption(
        self, images: Any, batch_size: int = 64, **generation_options: Any
    ) -> str | list[str] | list[list[str]]:
        """Captions of ``images`` (see the module docstring).

        ``generation_options``: the fields of :class:`polycap.generation.GenerationConfig`
        (``beams``, ``max_length``, ``sample``, ``top_k``, ``top_p``, ``temperature``,
        ``num_captions``, ``seed``). One caption per image gives a string per image, more give
        a list per image; one image (not in a list) gives just its result. Unreadable images
        raise :class:`polycap.errors.BadInput` naming the file.
        """
        from polycap.generation import caption_features

        config = generation_config(generation_options)
        single = _is_one_image(images)
        features = self.features(images, batch_size)
        captions = caption_features(self.model, features, config, batch_size=batch_size)
        results: list[Any] = [c[0] if config.num_captions == 1 else c for c in captions]
        return results[0] if single else results

    def features(self, images: Any, batch_size: int = 64) -> Any:
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

    from polycap.images import load_image, to_rgb

    if isinstance(item, Image.Image):
        return to_rgb(item)
    if isinstance(item, (str, Path)):
        return load_image(item)
    raise BadInput(f"cannot caption a {type(item).__name__}: give paths, PIL images or features")


def generation_config(options: dict[str, Any]) -> Any:
    """A GenerationConfig from keyword options; BadInput naming an unknown option."""
    from polycap.generation import GenerationConfig

    known = {f.name for f in dataclasses.fields(GenerationConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise BadInput(
            f"unknown generation option {unknown[0]!r}; known: {', '.join(sorted(known))}"
        )
    return GenerationConfig(**options)
