"""The steps around a polycap model, in Pillow and numpy: images in, caption text out.

Shipped in polycap's exports (Hugging Face and ONNX) and used by their processors and by
``run_onnx.py``; it must not import polycap.

Images: open_clip's evaluation transform (no torch, no torchvision). ``settings`` is open_clip's
``preprocess_cfg``: ``size`` (an int or ``[height, width]``), ``mean``, ``std``,
``interpolation`` (``bicubic`` or ``bilinear``) and ``resize_mode`` (``shortest`` for a square
size, or ``squash``).

Text: :func:`clean_caption` applies a language's caption rule (``caption_text``: Unicode form,
lower-casing, spaces removed between CJK characters) to decoded text, as polycap's language
packs do, and folds runs of white space.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

import numpy as np
from PIL import Image, ImageOps

RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def read_image(path: str) -> Image.Image:
    """An image file as an RGB picture the right way up (EXIF orientation applied)."""
    with Image.open(path) as image:
        return ImageOps.exif_transpose(image).convert("RGB")


def target_size(settings: dict[str, Any]) -> tuple[int, int]:
    """``(height, width)`` of the model's input."""
    size = settings["size"]
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def resize(image: Image.Image, settings: dict[str, Any]) -> Image.Image:
    """Resize as torchvision's ``Resize`` does for open_clip: the shorter side to the size
    (``shortest``, the longer side rounded down), or both sides to it (``squash``)."""
    height, width = target_size(settings)
    resample = RESAMPLE[settings.get("interpolation") or "bicubic"]
    mode = settings.get("resize_mode") or "shortest"
    if mode == "squash":
        return image.resize((width, height), resample)
    if mode != "shortest" or height != width:
        raise ValueError(f"resize_mode {mode!r} with size {height}x{width} is not supported here")
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = height, int(height * long / short)
    size = (new_short, new_long) if w <= h else (new_long, new_short)
    return image if size == image.size else image.resize(size, resample)


def center_crop(image: Image.Image, settings: dict[str, Any]) -> Image.Image:
    """The centre ``size`` of ``image`` (torchvision's rounding)."""
    height, width = target_size(settings)
    w, h = image.size
    top = int(round((h - height) / 2.0))
    left = int(round((w - width) / 2.0))
    return image.crop((left, top, left + width, top + height))


def preprocess(image: Image.Image, settings: dict[str, Any]) -> np.ndarray:
    """One picture -> ``[3, H, W]`` float32 pixels, as open_clip's eval transform makes them."""
    image = center_crop(resize(image, settings), settings).convert("RGB")
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    mean = np.asarray(settings["mean"], dtype=np.float32)
    std = np.asarray(settings["std"], dtype=np.float32)
    return ((pixels - mean) / std).transpose(2, 0, 1).copy()


def preprocess_batch(images: list[Image.Image], settings: dict[str, Any]) -> np.ndarray:
    """Pictures -> ``[B, 3, H, W]`` float32."""
    return np.stack([preprocess(image, settings) for image in images])


CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f\u3000-\u303f\uff01-\uff60"
BETWEEN_CJK = re.compile(f"(?<=[{CJK}]) +(?=[{CJK}])")
SPACES = re.compile(r"\s+")


def clean_caption(text: str, rule: dict[str, Any]) -> str:
    """Decoded text -> the caption as polycap writes it (``rule``: ``unicode`` form, default
    NFC; ``lowercase``; ``join_cjk``: no spaces between CJK characters)."""
    text = unicodedata.normalize(rule.get("unicode", "NFC"), text.replace("\u2581", " "))
    if rule.get("lowercase"):
        text = text.lower()
    if rule.get("join_cjk"):
        text = BETWEEN_CJK.sub("", text)
    return SPACES.sub(" ", text).strip()
