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
    """A problem with the request, answered with ``status`` and one line; ``param``: the
    request field at fault and ``code``: a machine-readable kind, where known (the
    OpenAI-compatible routes put both in their error object)."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


@dataclass
class ImageFile:
    """One image file's bytes and the name errors and answers call it by."""

    data: bytes
    name: str


@dataclass
class Upload:
    """The image files and the other fields of a request, as sent. ``many``: the images came
    as ``images`` (answered per image), not as the one ``image``."""

    images: list[ImageFile]
    fields: dict[str, Any]
    many: bool = False


async def read_upload(request: Request, settings: ServeSettings) -> Upload:
    """The images and option fields of a multipart or JSON request."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in ("multipart/form-data", "application/json"):
        raise RequestError(
            415,
            f"unsupported content type {clip(content_type) or 'none'!r}: send "
            "multipart/form-data with a file field 'image' (or several 'images'), or "
            "application/json with base64 'image' (or a list 'images')",
        )
    body = await read_body(request, settings.max_body_bytes)
    if content_type == "application/json":
        upload = _from_json(body)
    else:
        upload = await _from_multipart(request, body, settings)
    check_images(upload.images, settings)
    return upload


def check_images(images: list[ImageFile], settings: ServeSettings) -> None:
    """Each image non-empty and within the size limit, all of them within the count and the
    size limit together."""
    if len(images) > settings.max_images:
        raise RequestError(
            413, f"{len(images)} images in one request; the limit is {settings.max_images}"
        )
    for image in images:
        if len(image.data) > settings.max_upload_bytes:
            raise RequestError(
                413, f"{image.name}: " + _too_large(len(image.data), settings.max_upload_bytes)
            )
        if not image.data:
            raise RequestError(400, f"{image.name}: the image is empty (0 bytes)")
    total = sum(len(image.data) for image in images)
    if total > settings.max_upload_bytes:
        raise RequestError(413, _too_large(total, settings.max_upload_bytes, "images together"))


def clip(text: str, limit: int = 80) -> str:
    """A client's value as an error message quotes it: one line, at most ``limit``
    characters (a 1 MB ``language`` is not echoed back whole)."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else f"{line[:limit]}… ({len(line):,} characters)"


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
    verb = "are" if what.endswith("together") else "is"
    return f"the {what} {verb} too large ({size:,} bytes; the limit is {limit:,})"


def _from_json(body: bytes) -> Upload:
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RequestError(400, f"the body is not valid JSON ({error})") from None
    if not isinstance(payload, dict):
        raise RequestError(400, "the JSON body must be an object with 'image' and options")
    one, many = payload.pop("image", None), payload.pop("images", None)
    if one is not None and many is not None:
        raise RequestError(400, "send either 'image' (one) or 'images' (a list), not both")
    if many is not None:
        if not isinstance(many, list) or not many or not all(isinstance(i, str) for i in many):
            raise RequestError(400, "images: a non-empty list of base64-encoded image files")
        files = [
            ImageFile(decode_base64(item, f"images[{i}]"), f"images[{i}]")
            for i, item in enumerate(many)
        ]
        return Upload(files, payload, many=True)
    if not isinstance(one, str):
        raise RequestError(400, "no image: put the image file, base64-encoded, in 'image'")
    return Upload([ImageFile(decode_base64(one, "image"), "image")], payload)


def decode_base64(encoded: str, name: str = "image") -> bytes:
    """The bytes of a base64 string or a ``data:`` URL (400 naming ``name`` when invalid)."""
    if encoded.startswith("data:"):
        header, comma, encoded = encoded.partition(",")
        if not comma or not header.endswith(";base64"):
            raise RequestError(
                400, f"{name}: a data URL must be base64 (data:image/...;base64,...)"
            )
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, f"{name}: not valid base64") from None


async def _from_multipart(request: Request, body: bytes, settings: ServeSettings) -> Upload:
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def stream() -> Any:
        yield body
        yield b""

    parser = MultiPartParser(
        request.headers,
        stream(),
        max_files=settings.max_images + 1,
        max_fields=MAX_FIELDS,
        max_part_size=MAX_FIELD_BYTES,
    )
    parser.spool_max_size = settings.max_body_bytes  # keep every upload in memory
    try:
        form = await parser.parse()
    except Exception as error:  # MultiPartException, or whatever a malformed body raises
        reason = error.message if isinstance(error, MultiPartException) else "invalid data"
        raise RequestError(400, f"bad multipart body ({clip(reason)})") from None
    try:
        return await _form_upload(form)
    finally:
        await form.close()


async def _form_upload(form: Any) -> Upload:
    """The files of fields ``image`` (one) or ``images`` (several) and the other fields."""
    from starlette.datastructures import UploadFile

    files: dict[str, list[ImageFile]] = {"image": [], "images": []}
    fields, stray = {}, []
    for name, value in form.multi_items():
        if name in files:
            if not isinstance(value, UploadFile):
                raise RequestError(400, f"{name}: send the image as a file, not as text")
            files[name].append(ImageFile(await value.read(), _safe_name(value.filename)))
        elif not isinstance(value, str):
            stray.append(name)
        elif value != "":  # an empty form field means "the default"
            fields[name] = value
    if not files["image"] and not files["images"]:
        raise RequestError(400, "no image: send the image file in the multipart field 'image'")
    if stray:
        raise RequestError(
            400, f"unexpected file in field {clip(stray[0])!r}; only 'image' and 'images' are"
        )
    if files["image"] and files["images"]:
        raise RequestError(400, "send either 'image' (one file) or 'images' (several), not both")
    if len(files["image"]) > 1:
        raise RequestError(400, "several files in 'image': send several images as 'images'")
    many = bool(files["images"])
    return Upload(files["images"] if many else files["image"], fields, many=many)


def _safe_name(filename: str | None) -> str:
    """The upload's file name as errors show it: its last part, printable, short."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if c.isprintable())[:100]
    return name or "image"


def decode_upload(image: ImageFile, settings: ServeSettings) -> Image.Image:
    """The uploaded image in RGB; TooManyPixels or BadInput (one line) when it cannot be."""
    from polycap.data.images import decode_image

    return decode_image(image.data, image.name, limit=settings.max_pixels)
