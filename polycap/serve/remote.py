"""Images named by URL in ``/v1/chat/completions``: ``data:`` URLs always, ``http(s)`` ones
only when the server runs with ``--allow-remote-images``.

A remote image is fetched with httpx within the server's limits: at most
``--max-upload-mb`` bytes (refused from its ``Content-Length``, else as soon as the body grows
past it, before the rest is read), at most ``--remote-timeout-s`` seconds for the whole fetch
(connecting, redirects, the body), at most 3 redirects, ``http``/``https`` only. Fetching is
off by default: a server that fetches what clients name can be pointed at addresses only it
can reach.
"""

from __future__ import annotations

import asyncio

from polycap.serve.settings import ServeSettings
from polycap.serve.uploads import ImageFile, RequestError, clip, decode_base64

MAX_REDIRECTS = 3


async def image_from_url(url: str, name: str, settings: ServeSettings) -> ImageFile:
    """The image a ``data:`` or (when allowed) ``http(s)`` URL holds; ``name`` is the request
    field errors point at."""
    if url.startswith("data:"):
        return ImageFile(decode_base64(url, name), name)
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme not in ("http", "https"):
        raise RequestError(
            400,
            f"{name}: give the image as a data: URL (data:image/png;base64,...), "
            f"not {clip(url, 40)!r}",
            param=name,
            code="invalid_image_url",
        )
    if not settings.allow_remote_images:
        raise RequestError(
            400,
            f"{name}: remote image URLs are not fetched by this server; send the image as a "
            "data: URL (or start the server with --allow-remote-images)",
            param=name,
            code="remote_images_disabled",
        )
    try:
        data = await asyncio.wait_for(_fetch(url, name, settings), settings.remote_timeout_s)
    except TimeoutError:
        raise RequestError(
            400,
            f"{name}: fetching {clip(url, 60)} took longer than {settings.remote_timeout_s:g} s",
            param=name,
            code="image_fetch_failed",
        ) from None
    return ImageFile(data, _url_name(url))


async def _fetch(url: str, name: str, settings: ServeSettings) -> bytes:
    import httpx

    limit = settings.max_upload_bytes
    try:
        async with (
            httpx.AsyncClient(
                follow_redirects=True,
                max_redirects=MAX_REDIRECTS,
                timeout=settings.remote_timeout_s,
            ) as client,
            client.stream("GET", url) as reply,
        ):
            if reply.status_code != 200:
                raise _failed(name, url, f"HTTP {reply.status_code}")
            declared = reply.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise _too_large(name, int(declared), limit)
            chunks, size = [], 0
            async for chunk in reply.aiter_bytes():
                size += len(chunk)
                if size > limit:
                    raise _too_large(name, size, limit)
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.HTTPError as error:
        raise _failed(name, url, type(error).__name__) from None


def _failed(name: str, url: str, why: str) -> RequestError:
    return RequestError(
        400,
        f"{name}: could not fetch {clip(url, 60)} ({why})",
        param=name,
        code="image_fetch_failed",
    )


def _too_large(name: str, size: int, limit: int) -> RequestError:
    return RequestError(
        413,
        f"{name}: the image is too large ({size:,} bytes or more; the limit is {limit:,})",
        param=name,
        code="image_too_large",
    )


def _url_name(url: str) -> str:
    """The last part of a URL's path, as answers and errors name the image."""
    path = url.split("?", 1)[0].split("#", 1)[0].rstrip("/")
    return clip(path.rsplit("/", 1)[-1] or "image", 100)
