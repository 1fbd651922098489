"""A request's image and options, read within the server's limits.

The body is read into memory and counted as it arrives: past the limit the request is refused
(413) before more is read. Multipart bodies are parsed by Starlette's parser (python-multipart)
with its spooling threshold raised to the body limit, so an upload never rolls over into a
temporary file: no upload is ever written to disk. Images are decoded by
:func:`polycap.data.images.decode_image` with a pixel limit checked on the header, before decoding.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from polycap.serve.settings import ServeSettings

if TYPE_CHECKING:
    from PIL import Image
    from starlette.requests import Request

MAX_FIELDS = 32
MAX_FIELD_BYTES = 64 * 1024


class RequestError(Exception):
    """A problem with the request, answered with ``status`` and one line."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Upload:
    """The image file's bytes, its name (multipart) and the other fields, as sent."""

    data: bytes
    name: str
    fields: dict[str, Any]


async def read_upload(request: Request, settings: ServeSettings) -> Upload:
    """The image and option fields of a multipart or JSON request."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in ("multipart/form-data", "application/json"):
        raise RequestError(
            415,
            f"unsupported content type {content_type or 'none'!r}: send multipart/form-data "
            "with a file field 'image', or application/json with base64 'image'",
        )
    body = await read_body(request, settings.max_body_bytes)
    if content_type == "application/json":
        upload = _from_json(body)
    else:
        upload = await _from_multipart(request, body, settings)
    if len(upload.data) > settings.max_upload_bytes:
        raise RequestError(413, _too_large(len(upload.data), settings.max_upload_bytes))
    if not upload.data:
        raise RequestError(400, f"{upload.name}: the image is empty (0 bytes)")
    return upload


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused (413) as soon as it grows past ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, _too_large(int(declared), limit, "request"))
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, _too_large(size, limit, "request"))
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: int, limit: int, what: str = "image") -> str:
    return f"the {what} is too large ({size:,} bytes; the limit is {limit:,})"


def _from_json(body: bytes) -> Upload:
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RequestError(400, f"the body is not valid JSON ({error})") from None
    if not isinstance(payload, dict):
        raise RequestError(400, "the JSON body must be an object with 'image' and options")
    encoded = payload.pop("image", None)
    if not isinstance(encoded, str):
        raise RequestError(400, "no image: put the image file, base64-encoded, in 'image'")
    if encoded.startswith("data:") and "," in encoded:  # a data URL
        encoded = encoded.split(",", 1)[1]
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, "image: not valid base64") from None
    return Upload(data, "image", payload)


async def _from_multipart(request: Request, body: bytes, settings: ServeSettings) -> Upload:
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def stream() -> Any:
        yield body
        yield b""

    parser = MultiPartParser(
        request.headers,
        stream(),
        max_files=1,
        max_fields=MAX_FIELDS,
        max_part_size=MAX_FIELD_BYTES,
    )
    parser.spool_max_size = settings.max_body_bytes  # keep every upload in memory
    try:
        form = await parser.parse()
    except Exception as error:  # MultiPartException, or whatever a malformed body raises
        reason = error.message if isinstance(error, MultiPartException) else "invalid data"
        raise RequestError(400, f"bad multipart body ({reason})") from None
    try:
        image = form.get("image")
        if not isinstance(image, UploadFile):
            raise RequestError(400, "no image: send the image file in the multipart field 'image'")
        data = await image.read()
        fields = {}
        for name, value in form.multi_items():
            if name == "image":
                continue
            if not isinstance(value, str):
                raise RequestError(400, f"unexpected file in field {name!r}; only 'image' is one")
            if value != "":  # an empty form field means "the default"
                fields[name] = value
        return Upload(data, _safe_name(image.filename), fields)
    finally:
        await form.close()


def _safe_name(filename: str | None) -> str:
    """The upload's file name as errors show it: its last part, printable, short."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if c.isprintable())[:100]
    return name or "image"


def decode_upload(upload: Upload, settings: ServeSettings) -> Image.Image:
    """The uploaded image in RGB; TooManyPixels or BadInput (one line) when it cannot be."""
    from polycap.data.images import decode_image

    return decode_image(upload.data, upload.name, limit=settings.max_pixels)
