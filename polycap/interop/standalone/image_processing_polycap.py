"""The image processor of a polycap export whose encoder is open_clip's: its eval transform.

Remote code of a ``polycap export --to hf`` folder; it must not import polycap. The settings
are open_clip's ``preprocess_cfg`` (``size``, ``mean``, ``std``, ``interpolation``,
``resize_mode``), saved in ``preprocessor_config.json``; the work is done by
``steps_polycap`` (Pillow and numpy).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from transformers import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor

from .steps_polycap import preprocess_batch

SETTINGS = ("size", "mean", "std", "interpolation", "resize_mode")


class PolycapImageProcessor(BaseImageProcessor):
    model_input_names = ["pixel_values"]

    def __init__(self, **kwargs: Any) -> None:
        self.settings = {key: kwargs.pop(key, None) for key in SETTINGS}
        super().__init__(**kwargs)
        for key, value in self.settings.items():
            setattr(self, key, value)

    def preprocess(self, images: Any, return_tensors: str | None = None, **kwargs: Any) -> Any:
        """PIL images (one or a list) -> ``pixel_values`` ``[B, 3, H, W]``."""
        from PIL import Image

        if isinstance(images, Image.Image):
            images = [images]
        pictures = [image.convert("RGB") for image in images]
        pixels = preprocess_batch(pictures, self.settings)
        return BatchFeature({"pixel_values": np.asarray(pixels)}, tensor_type=return_tensors)
