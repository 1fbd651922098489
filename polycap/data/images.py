"""Reading images: one decoded RGB image, as a person sees it, or one clear line saying why not.

"As a person sees it": the EXIF orientation is applied; 16-bit and 32-bit greyscale are scaled
to 8 bits (not clipped to white); float images in [0, 1] are scaled to [0, 255]; palette,
greyscale, bilevel and CMYK images become RGB (Pillow's conversions; ICC profiles are not
applied); transparent pixels are composited onto white, as an image viewer on a page shows them.
Images with more pixels than :func:`max_pixels` (a decompression-bomb guard; the CLI's
``--max-pixels``) are refused before they are decoded, and so are images whose decoding would
hold more bytes than an 8-bit RGB image of that many pixels (deep 16/32-bit pixels count by
their bytes: :func:`decoded_bytes`). Deep pixels are scaled to 8 bits in strips, never as a
float copy of the whole image.

Ordinary (3-channel) JPEGs are decoded with ``torchvision.io.decode_jpeg`` (its bundled
libjpeg-turbo gives the same pixels as Pillow's); everything else, and any JPEG torchvision
cannot decode, goes through Pillow. :func:`set_jpeg_decoder` switches this.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from polycap.errors import BadInput, first_line

if TYPE_CHECKING:
    from PIL import Image

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own default bomb limit (about 9459 x 9459)
BACKGROUND = (255, 255, 255)  # what transparent pixels are shown on
ORIENTATION_TAG = 0x0112  # EXIF "Orientation"

STRIP_PIXELS = 1 << 20  # pixels converted at a time from 16/32-bit to 8 bits
# bytes per pixel Pillow holds for a decoded image of each mode (multi-band modes take 4)
MODE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
RGB_BYTES = 4  # the RGB result, as Pillow stores it

JPEG_MAGIC = b"\xff\xd8\xff"
JPEG_DECODERS = ("torchvision", "torchvision-gpu", "pil")

_limit = {"pixels": DEFAULT_MAX_PIXELS}
_jpeg = {"decoder": "torchvision"}


def max_pixels() -> int:
    """The most pixels (width x height) an image may have; larger ones are refused."""
    return _limit["pixels"]


def set_max_pixels(limit: int) -> None:
    """Change the decompression-bomb limit for this process (the CLI's ``--max-pixels``)."""
    if limit < 1:
        raise BadInput(f"--max-pixels must be at least 1, not {limit}")
    _limit["pixels"] = int(limit)


def load_image(path: str | Path) -> Image.Image:
    """The image at ``path``, fully decoded, in RGB, as a person sees it.

    Missing, unreadable, corrupt, truncated and too-large files raise
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
        reason = link_problem(path) or error.strerror or str(error)
        raise BadInput(f"{path}: not a readable image ({reason})") from None
    return decode_image(data, path)


def jpeg_decoder() -> str:
    """Who decodes ordinary JPEGs: "torchvision" (CPU; the default), "torchvision-gpu" or "pil"."""
    return _jpeg["decoder"]


def set_jpeg_decoder(name: str) -> None:
    """Choose the JPEG decoder for this process.

    "torchvision" decodes on the CPU (pixels identical to Pillow's, measured in the tests);
    "torchvision-gpu" decodes on the encoder's CUDA device with nvJPEG (pixels may differ
    slightly from Pillow's); "pil" uses Pillow for every image.
    """
    if name not in JPEG_DECODERS:
        raise BadInput(f"JPEG decoder must be one of {', '.join(JPEG_DECODERS)}, not {name!r}")
    _jpeg["decoder"] = name


class TooManyPixels(BadInput):
    """An image whose header declares more pixels than the limit (a decompression bomb?)."""


def decode_image(
    data: bytes, path: str | Path = "<bytes>", limit: int | None = None, device: str = "cpu"
) -> Image.Image:
    """Decode image bytes (read from ``path``, named in errors) into an RGB image.

    ``limit``: the most pixels allowed (default :func:`max_pixels`), checked on the header
    before anything is decoded (:class:`TooManyPixels`). ``device``: where the image will be
    encoded; with the "torchvision-gpu" decoder a CUDA device decodes JPEGs there.
    """
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # our own limit is checked below, without PIL's warnings
    limit = max_pixels() if limit is None else limit
    try:
        image = Image.open(io.BytesIO(data))
        _check_size(image, path, limit)
        if image.mode == "RGB" and data[:3] == JPEG_MAGIC and jpeg_decoder() != "pil":
            decoded = _decode_jpeg(data, device)
            if decoded is not None:
                return decoded
        image.load()  # decode everything now: truncated files fail here, not later
        return to_rgb(image)
    except BadInput:
        raise
    except Exception as error:  # PIL raises many kinds (OSError, SyntaxError, ValueError, ...)
        raise BadInput(f"{path}: not a readable image ({_reason(error)})") from None


def check_header(data: bytes, path: str | Path = "<bytes>", limit: int | None = None) -> None:
    """The size checks of :func:`decode_image` on the header alone (nothing decoded): for
    images whose features come from a cache, so ``--max-pixels`` holds for them too."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    limit = max_pixels() if limit is None else limit
    try:
        image = Image.open(io.BytesIO(data))
    except Exception as error:  # PIL raises many kinds
        raise BadInput(f"{path}: not a readable image ({_reason(error)})") from None
    _check_size(image, path, limit)


def unreadable_reason(error: BadInput) -> str:
    """The reason inside ``"<path>: not a readable image (<reason>)"``, whole (its own
    parentheses kept)."""
    text = str(error)
    marker = "not a readable image ("
    if marker in text and text.endswith(")"):
        return text.split(marker, 1)[1][:-1]
    return text


def decoded_bytes(mode: str, pixels: int) -> int:
    """Bytes that decoding an image of ``mode`` into RGB holds at its peak: the decoded pixels
    plus the RGB result (the 8-bit strips of :func:`_to_8_bits` are one more byte a pixel)."""
    decoded = MODE_BYTES.get(mode, 4)
    extra = 1 if mode.startswith(("I", "F")) else 0
    return pixels * (decoded + extra + RGB_BYTES)


def _check_size(image: Image.Image, path: str | Path, limit: int) -> None:
    """TooManyPixels for more pixels than ``limit``, or for an image whose decoding would hold
    more bytes than an 8-bit RGB image of ``limit`` pixels does (deep or wide pixels)."""
    width, height = image.size
    pixels = width * height
    if pixels > limit:
        raise TooManyPixels(
            f"{path}: not a readable image ({width}x{height} = {pixels:,} pixels, "
            f"more than the limit of {limit:,}; raise it with --max-pixels)"
        )
    needed, allowed = decoded_bytes(image.mode, pixels), decoded_bytes("RGB", limit)
    if needed > allowed:
        raise TooManyPixels(
            f"{path}: not a readable image ({width}x{height} {image.mode} pixels need "
            f"{needed / 2**20:,.0f} MiB to decode, more than the {allowed / 2**20:,.0f} MiB "
            "that --max-pixels allows; raise it with --max-pixels)"
        )


def _decode_jpeg(data: bytes, device: str) -> Image.Image | None:
    """A 3-channel JPEG decoded by torchvision, upright; None where torchvision cannot (then
    Pillow decodes it, and names the problem of a corrupt file)."""
    try:
        import torch
        from PIL import Image
        from torchvision.io import ImageReadMode, decode_jpeg

        on = (
            "cuda"
            if jpeg_decoder() == "torchvision-gpu" and str(device).startswith("cuda")
            else "cpu"
        )
        raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        pixels = decode_jpeg(raw, mode=ImageReadMode.RGB, apply_exif_orientation=True, device=on)
        return Image.fromarray(pixels.permute(1, 2, 0).contiguous().cpu().numpy(), mode="RGB")
    except Exception:  # torchvision missing, or a JPEG it cannot read: Pillow decides
        return None


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` upright, 8 bits per channel, transparency composited onto white."""
    from PIL import ImageOps

    if image.getexif().get(ORIENTATION_TAG, 1) != 1:
        image = ImageOps.exif_transpose(image)
    image = _to_8_bits(image)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("LA", "La", "PA", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        from PIL import Image

        background = Image.new("RGB", image.size, BACKGROUND)
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB")


def _to_8_bits(image: Image.Image) -> Image.Image:
    """16/32-bit integer and float greyscale -> 8-bit "L" (PIL's own convert clips them),
    converted in strips of :data:`STRIP_PIXELS`: the extra memory is the 8-bit result plus one
    strip, never a float copy of the whole image."""
    if not (image.mode.startswith("I") or image.mode.startswith("F")):
        return image
    import numpy as np
    from PIL import Image

    width, height = image.size
    rows = max(1, STRIP_PIXELS // max(width, 1))
    strips = [(top, min(height, top + rows)) for top in range(0, height, rows)]
    scale = _scale_to_8_bits(image, strips)
    result = np.empty((height, width), dtype=np.uint8)
    for top, bottom in strips:
        values = np.asarray(image.crop((0, top, width, bottom)), dtype=np.float64) * scale
        values = np.nan_to_num(values, nan=0.0, posinf=255.0, neginf=0.0)
        result[top:bottom] = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return Image.fromarray(result, mode="L")


def _scale_to_8_bits(image: Image.Image, strips: list[tuple[int, int]]) -> float:
    """The factor to 8 bits: floats in [0, 1] times 255, 16-bit ranges / 257, else 1."""
    import numpy as np

    if image.mode.startswith("I;16"):
        return 1 / 257.0
    low, high = np.inf, -np.inf
    for top, bottom in strips:
        values = np.asarray(image.crop((0, top, image.size[0], bottom)))
        finite = values[np.isfinite(values)] if image.mode.startswith("F") else values
        if finite.size:
            low, high = min(low, float(finite.min())), max(high, float(finite.max()))
    if image.mode.startswith("F"):
        return 255.0 if low >= 0.0 and high <= 1.0 else 1.0  # floats in [0, 1]: the usual way
    return 1 / 257.0 if high > 255 else 1.0  # 16-bit range (65535 -> 255)


def _reason(error: Exception) -> str:
    from PIL import UnidentifiedImageError

    if isinstance(error, UnidentifiedImageError):
        return "unknown or corrupt image format"
    return first_line(error)


def skipped_rows(skipped: Iterable[tuple[str | Path, str]]) -> list[dict[str, str]]:
    """Unreadable images for JSON output: ``[{"image": path, "reason": why}, ...]``."""
    return [{"image": str(path), "reason": reason} for path, reason in skipped]


def describe_skipped(skipped: Sequence[tuple[str | Path, str]], shown: int = 5) -> str:
    """``3 unreadable image(s): a.png (reason), b.png (reason) and 1 more``."""
    named = ", ".join(f"{path} ({reason})" for path, reason in skipped[:shown])
    more = f" and {len(skipped) - shown} more" if len(skipped) > shown else ""
    return f"{len(skipped)} unreadable image(s): {named}{more}"


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
                raise BadInput(_no_images(path))
            for image_path in found:
                add(image_path)
        elif path.exists():
            add(path)
        else:
            raise BadInput(f"{path}: {link_problem(path) or 'no such file or folder'}")
    return result


def link_problem(path: Path) -> str | None:
    """What is wrong with ``path`` as a symbolic link: a loop, or a link to nothing."""
    import errno
    import os

    try:
        os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "a symbolic link loop (it leads back to itself)"
        if os.path.islink(path):
            return f"a broken symbolic link (to {os.readlink(path)}, which does not exist)"
    return None


def _no_images(folder: Path) -> str:
    """The line for a folder without image files, naming links that lead nowhere."""
    suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
    message = f"{folder}: no image files in this folder (looked for {suffixes})"
    broken = [
        f"{entry.name} is {problem}"
        for entry in sorted(folder.iterdir())
        if entry.is_symlink() and (problem := link_problem(entry))
    ]
    if broken:
        message += f"; {'; '.join(broken[:3])}" + (" ..." if len(broken) > 3 else "")
    return message
