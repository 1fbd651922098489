"""Reading images: one decoded RGB image or one clear line saying why not."""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from polycap.errors import BadInput

if TYPE_CHECKING:
    from PIL import Image

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)


def load_image(path: str | Path) -> Image.Image:
    """The image at ``path``, fully decoded, in RGB.

    Missing, unreadable, corrupt and truncated files raise
    ``BadInput("<path>: not a readable image (<reason>)")``.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BadInput(f"{path}: not a readable image (no such file)") from None
    except IsADirectoryError:
        raise BadInput(f"{path}: not a readable image (is a directory)") from None
    except OSError as error:
        raise BadInput(f"{path}: not a readable image ({error.strerror or error})") from None
    return decode_image(data, path)


def decode_image(data: bytes, path: str | Path = "<bytes>") -> Image.Image:
    """Decode image bytes (read from ``path``, named in errors) into an RGB image."""
    from PIL import Image

    try:
        image = Image.open(io.BytesIO(data))
        image.load()  # decode everything now: truncated files fail here, not later
        if image.mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")  # avoids PIL's palette-transparency warning
        return image.convert("RGB")
    except Exception as error:  # PIL raises many kinds (OSError, SyntaxError, ValueError, ...)
        raise BadInput(f"{path}: not a readable image ({_reason(error)})") from None


def _reason(error: Exception) -> str:
    from PIL import Image, UnidentifiedImageError

    if isinstance(error, UnidentifiedImageError):
        return "unknown or corrupt image format"
    if isinstance(error, Image.DecompressionBombError):
        return "too many pixels"
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return text or type(error).__name__


def is_image_file(path: Path) -> bool:
    """Whether ``path`` has one of the common image suffixes (case-insensitive)."""
    return path.suffix.lower() in IMAGE_SUFFIXES


def expand_image_paths(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given, directories replaced by their image files (sorted, not recursive).

    Duplicates are dropped (first occurrence kept). A path that does not exist, or a
    directory without images, is ``BadInput``.
    """
    result: list[Path] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            result.append(path)

    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and is_image_file(p))
            if not found:
                suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
                raise BadInput(f"{path}: no image files in this folder (looked for {suffixes})")
            for image_path in found:
                add(image_path)
        elif path.exists():
            add(path)
        else:
            raise BadInput(f"{path}: no such file or folder")
    return result
