"""The Python API: ``polycap.load(model).caption(images, **generation_options)``.

``model`` is anything ``polycap caption --model`` takes: a checkpoint folder, a run folder, an
exported Hugging Face folder, an ONNX export (run by ONNX Runtime) or a Hub id; the device is
``auto`` (a GPU when there is one), as on the command line. ``images``:

- one image: a path, a PIL image, or an 8-bit image array (numpy or torch ``uint8``,
  ``[H, W, 3]`` or ``[3, H, W]``; ``[H, W]`` grey);
- several: a list, tuple or any iterable (a generator too) of those, or an 8-bit batch
  ``[B, H, W, 3]`` / ``[B, 3, H, W]``;
- image features from the model's own encoder: a float tensor or array, ``[clip_dim]`` (one)
  or ``[B, clip_dim]``.

Captions come from the same :class:`~polycap.inference.pipeline.CaptionPipeline` as
``polycap caption``'s, with the same options; ``progress=True`` shows its progress bars.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from polycap.data.images import load_image, to_rgb
from polycap.errors import BadInput
from polycap.inference.pipeline import CaptionPipeline, generation_config
from polycap.util.devices import resolve_device
from polycap.util.progress import progress_bar

if TYPE_CHECKING:
    import torch

    from polycap.parts import ImageEncoder


def load(model: str | Path, device: str = "auto", bank: str | Path | None = None) -> Captioner:
    """Load ``model`` for captioning on ``device`` ("auto", "cpu", "cuda", "cuda:1", "mps");
    ``bank``: another bank for a retrieval-augmented model."""

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
        self, images: Any, batch_size: int = 64, progress: bool = False, **generation_options: Any
    ) -> str | list[str] | list[list[str]]:
        """Captions of ``images`` (see the module docstring).

        ``generation_options``: those of ``polycap caption`` (``beams``, ``max_length``,
        ``sample``, ``top_k``, ``top_p``, ``temperature``, ``num_captions``, ``seed``,
        ``repetition_penalty``, ``no_repeat_ngram_size``). One caption per image gives a string
        per image, more give a list per image; one image (not in a list) gives just its result.
        ``progress``: progress bars on stderr (encoding and captioning), as the CLI shows.
        Unreadable images raise :class:`polycap.errors.BadInput` naming the file.
        """
        config = generation_config(generation_options)
        single, items = _as_items(images)
        found = self.pipeline.caption_features(
            self._features(items, batch_size, progress), config, batch_size, progress
        )
        results: list[Any] = [c[0] if config.num_captions == 1 else c for c in found.captions]
        return results[0] if single else results

    def features(self, images: Any, batch_size: int = 64, progress: bool = False) -> torch.Tensor:
        """``[B, clip_dim]`` features of ``images`` from the model's own image encoder (features
        are returned as they are, ``[D]`` as ``[1, D]``)."""
        return self._features(_as_items(images)[1], batch_size, progress)

    def _features(self, items: Any, batch_size: int, progress: bool) -> torch.Tensor:
        import torch

        if isinstance(items, torch.Tensor):  # features, [B, D]
            return items
        width = int(self.model.config["encoder"]["embed_dim"])
        chunks = [torch.empty(0, width)]
        with progress_bar("encoding", len(items), progress and len(items) > 1) as advance:
            for start in range(0, len(items), batch_size):
                chunk = items[start : start + batch_size]
                pixels = torch.stack([self.encoder.preprocess(_rgb(item)) for item in chunk])
                chunks.append(self.encoder.encode_images(pixels).float().cpu())
                advance(len(chunk))
        return torch.cat(chunks)


def _as_items(images: Any) -> tuple[bool, Any]:
    """``(one image?, what to encode)``: a list of single images (paths, PIL images, 8-bit
    arrays), or a ``[B, D]`` float tensor of features."""
    import torch
    from PIL import Image

    if isinstance(images, (str, Path, Image.Image)):
        return True, [images]
    array = _tensor(images)
    if array is not None:
        if array.is_floating_point():  # features
            if array.dim() not in (1, 2):
                raise BadInput(
                    f"float array of shape {tuple(array.shape)}: image features are [D] or "
                    "[B, D]; images are 8-bit (uint8) arrays [H, W, 3] or [B, H, W, 3]"
                )
            return array.dim() == 1, array.float().reshape(-1, array.shape[-1])
        if array.dtype != torch.uint8:
            raise BadInput(f"a {array.dtype} array: images are 8-bit (uint8) arrays")
        if array.dim() == 4:  # a batch of images
            return False, list(array)
        return True, [array]
    if isinstance(images, Iterable):
        return False, list(images)
    raise BadInput(
        f"cannot caption a {type(images).__name__}: give paths, PIL images, 8-bit image arrays "
        "or features, one or an iterable of them"
    )


def _tensor(value: Any) -> torch.Tensor | None:
    """``value`` as a torch tensor when it is a tensor or a numpy array, else None."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if type(value).__module__ == "numpy" and hasattr(value, "__array__"):
        import numpy as np

        return torch.from_numpy(np.ascontiguousarray(value))
    return None


def _rgb(item: Any) -> Any:
    """A path, a PIL image or an 8-bit array, as an RGB image a person would see."""
    from PIL import Image

    if isinstance(item, Image.Image):
        return to_rgb(item)
    if isinstance(item, (str, Path)):
        return load_image(item)
    array = _tensor(item)
    if array is not None and array.dtype.is_floating_point is False and array.dim() in (2, 3):
        return _array_image(array)
    raise BadInput(
        f"cannot caption a {type(item).__name__}"
        f"{f' of shape {tuple(array.shape)}' if array is not None else ''}: give paths, PIL "
        "images or 8-bit image arrays ([H, W, 3] or [3, H, W])"
    )


def _array_image(array: torch.Tensor) -> Any:
    """An 8-bit ``[H, W]``, ``[H, W, 3|4]`` or ``[3|4, H, W]`` array as an RGB PIL image."""
    import torch
    from PIL import Image

    if array.dtype != torch.uint8:
        raise BadInput(f"a {array.dtype} image array: images are 8-bit (uint8)")
    if array.dim() == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = array.permute(1, 2, 0)  # channels first -> last
    if array.dim() == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.dim() == 3 and array.shape[-1] not in (3, 4):
        raise BadInput(
            f"image array of shape {tuple(array.shape)}: expected [H, W, 3] or [3, H, W]"
        )
    return to_rgb(Image.fromarray(array.contiguous().numpy()))
