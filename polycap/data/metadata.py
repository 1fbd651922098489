"""Captions inside image files: EXIF ImageDescription, XMP ``dc:description`` and IPTC
Caption-Abstract, written through exiv2 (``pyexiv2``, the ``metadata`` extra).

Only the metadata blocks change: exiv2 copies the image data as it is (a JPEG's entropy-coded
scans byte for byte), so the pixels a viewer decodes stay the same. A file is never modified
in place: its bytes are read, the new metadata set on that copy in memory, the result written
to a temporary file beside it (``.NAME.polycap-XXXX.tmp``, given the original's permissions
and, when asked, its access and modification times) and renamed over it (``os.replace``): a
reader, or a run killed at any moment, sees the old file or the new one, never half of one.

Besides the description, polycap records which model wrote it in its own XMP namespace
(``Xmp.polycap.model``): a description with that mark was written by polycap (a rerun skips the
image as done); one without it belongs to someone else and is kept unless ``overwrite``.
JPEG, PNG, WebP and TIFF are written (WebP has no IPTC block: EXIF and XMP only); other
formats are :class:`Unsupported`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from polycap.errors import BadInput, first_line
from polycap.util.atomic import replace_beside

NAMESPACE = "https://github.com/polycap/polycap/ns/xmp/1.0/"
PREFIX = "polycap"
MARK = f"Xmp.{PREFIX}.model"
# what exiv2 writes, by the format's first bytes; IPTC where the format has a place for it
FORMATS = {"jpeg": True, "png": True, "webp": False, "tiff": True}
UTF8_IPTC = "\x1b%G"  # ISO 2022 escape for UTF-8 in Iptc.Envelope.CharacterSet


class Unsupported(BadInput):
    """An image format exiv2 cannot write metadata into (GIF, BMP, PPM, ...)."""


def image_format(head: bytes) -> str | None:
    """ "jpeg", "png", "webp", "tiff" from a file's first bytes; None for anything else."""
    if head.startswith(b"\xff\xd8"):
        return "jpeg"
    if head.startswith(b"\x89PNG"):
        return "png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    return None


@dataclass(frozen=True)
class Described:
    """What an image's metadata says now: its description (any of the three fields), and the
    model polycap recorded when polycap wrote it (None: not polycap's)."""

    description: str | None
    model: str | None

    @property
    def by_polycap(self) -> bool:
        return self.model is not None


def _exiv2() -> object:
    try:
        import pyexiv2
    except ImportError:
        raise BadInput("--write-metadata needs pyexiv2: pip install 'polycap[metadata]'") from None
    pyexiv2.registerNs(NAMESPACE, PREFIX)
    pyexiv2.set_log_level(4)  # exiv2's own warnings would interleave with the progress bar
    return pyexiv2


def read_description(path: Path) -> Described:
    """The description in ``path``'s metadata (Unsupported for formats exiv2 cannot write)."""
    data = _read(path)
    _format_of(path, data)
    pyexiv2 = _exiv2()
    with _opened(pyexiv2, path, data) as image:
        xmp = image.read_xmp()
        text = _text(xmp.get("Xmp.dc.description"))
        text = text or _text(image.read_exif().get("Exif.Image.ImageDescription"))
        if not text:
            with contextlib.suppress(RuntimeError):  # formats without IPTC
                text = _text(image.read_iptc().get("Iptc.Application2.Caption"))
        return Described(text or None, xmp.get(MARK) or None)


def _text(value: object) -> str:
    """A field's text: LangAlt values come as ``{'lang="x-default"': text, ...}``."""
    if isinstance(value, dict):
        value = value.get('lang="x-default"') or next(iter(value.values()), "")
    if isinstance(value, list):
        value = value[0] if value else ""
    return str(value or "").strip()


@dataclass(frozen=True)
class WriteOptions:
    language: str  # xml:lang of the XMP description (the pack's code)
    model: str  # recorded in polycap's XMP mark
    keep_times: bool = False
    # called with the temporary file once it is complete, before it replaces the image
    # (the tests' hook to kill a run at that moment)
    before_replace: Callable[[Path], None] | None = None


def write_description(path: Path, text: str, options: WriteOptions) -> None:
    """Set ``text`` as the image's description in EXIF, XMP and (where the format has it) IPTC,
    and polycap's mark; the file is replaced atomically, its pixels untouched (a symbolic link
    stays one: the file it points to is replaced)."""
    path = Path(os.path.realpath(path))
    data = _read(path)
    kind = _format_of(path, data)
    pyexiv2 = _exiv2()
    with _opened(pyexiv2, path, data) as image:
        image.modify_exif({"Exif.Image.ImageDescription": text})
        image.modify_xmp(
            {
                "Xmp.dc.description": {
                    'lang="x-default"': text,
                    f'lang="{options.language}"': text,
                },
                MARK: options.model,
            }
        )
        if FORMATS[kind]:
            image.modify_iptc(
                {"Iptc.Envelope.CharacterSet": UTF8_IPTC, "Iptc.Application2.Caption": text}
            )
        updated = image.get_bytes()
    _replace(path, updated, options)


def _read(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise BadInput(f"{path}: cannot read it ({error.strerror or error})") from None


def _format_of(path: Path, data: bytes) -> str:
    kind = image_format(data[:16])
    if kind is None:
        suffix = Path(path).suffix.lstrip(".").upper() or "this format"
        raise Unsupported(f"{suffix}: no metadata written (exiv2 writes JPEG, PNG, WebP, TIFF)")
    return kind


@contextlib.contextmanager
def _opened(pyexiv2: object, path: Path, data: bytes):  # type: ignore[no-untyped-def]
    try:
        image = pyexiv2.ImageData(data)  # type: ignore[attr-defined]
    except Exception as error:  # exiv2 raises RuntimeError for damaged files
        raise BadInput(f"{path}: cannot read its metadata ({first_line(error)})") from None
    try:
        yield image
    except BadInput:
        raise
    except Exception as error:
        raise BadInput(f"{path}: cannot write its metadata ({first_line(error)})") from None
    finally:
        image.close()


def _replace(path: Path, data: bytes, options: WriteOptions) -> None:
    """Rename a complete copy over ``path``, with its permissions (and times when asked)."""
    before = os.stat(path)
    times = (before.st_atime_ns, before.st_mtime_ns) if options.keep_times else None
    replace_beside(path, data, before.st_mode & 0o7777, times, options.before_replace)
