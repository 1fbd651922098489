"""open_clip's evaluation preprocessing without importing open_clip, for ONNX exports.

An ONNX export runs its image tower in ONNX Runtime, but its preprocessing came from
``open_clip.transform``, and importing open_clip (with timm, which it imports eagerly) is most
of a cold ``polycap caption -m EXPORT``'s start-up time and a quarter of its memory.
:func:`fast_transform` rebuilds the common case of open_clip's evaluation transform (a square
size, ``resize_mode`` "shortest", bicubic or bilinear resampling, RGB) from the same Pillow,
numpy and torch calls torchvision makes — resize the shorter side, centre crop, convert to RGB,
scale to [0, 1], normalise — so its pixels are identical (``tests/test_clip_preprocess.py``
compares them bit for bit). Anything else (other resize modes or sizes, tensor input) returns
None or falls back to open_clip's own transform.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

RESAMPLING = {"bicubic": 3, "bilinear": 2}  # PIL.Image.Resampling values


def fast_transform(settings: dict[str, Any]) -> Callable[[Any], Any] | None:
    """A callable equal to ``image_transform_v2(PreprocessCfg(**settings), is_train=False)``
    on PIL images, or None when ``settings`` are not the common case it covers."""
    height, width = settings["size"]
    if (
        height != width
        or settings.get("resize_mode", "shortest") != "shortest"
        or settings.get("interpolation") not in RESAMPLING
        or settings.get("mode", "RGB") != "RGB"
    ):
        return None
    import torch

    size, resample = int(height), RESAMPLING[settings["interpolation"]]
    mean = torch.as_tensor(settings["mean"], dtype=torch.float32).view(-1, 1, 1)
    std = torch.as_tensor(settings["std"], dtype=torch.float32).view(-1, 1, 1)

    def transform(image: Any) -> Any:
        image = _resize_shorter(image, size, resample)
        image = _centre_crop(image, size).convert("RGB")
        return _to_tensor(image).sub_(mean).div_(std)

    return transform


def _resize_shorter(image: Any, size: int, resample: int) -> Any:
    """torchvision's ``Resize(size)`` on a PIL image: the shorter side to ``size``, the longer
    one scaled and truncated; no resampling when the size is already right."""
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    new_width, new_height = (size, new_long) if width <= height else (new_long, size)
    if (new_width, new_height) == (width, height):
        return image
    return image.resize((new_width, new_height), resample)


def _centre_crop(image: Any, size: int) -> Any:
    """torchvision's ``CenterCrop(size)`` on a PIL image at least ``size`` on both sides."""
    width, height = image.size
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def _to_tensor(image: Any) -> Any:
    """torchvision's ``ToTensor`` on an RGB PIL image: ``[3, H, W]`` float32 in [0, 1]."""
    import numpy as np
    import torch

    array = np.array(image, np.uint8, copy=True)
    pixels = torch.from_numpy(array).view(image.size[1], image.size[0], 3)
    return pixels.permute((2, 0, 1)).contiguous().to(dtype=torch.float32).div(255)
