"""Decoded-image memory, bounded: what decoding an image will cost, and a byte budget that
concurrent decodes share.

A pixel limit alone does not bound memory: a 16-bit greyscale PNG of 6300 x 6300 is 77 KB on
the wire and tens of megabytes per copy once decoded, and a server decoding several at once
adds them up. So each upload's cost is estimated from its header (width x height x the bytes
Pillow stores per pixel in its mode, plus the copies the conversion to 8-bit RGB makes), an
image whose cost alone is over the budget is refused (413) before anything is decoded, and
the others wait until their cost fits beside the decodes already running
(:class:`DecodeBudget`). A request's images are decoded one after another, so one request
holds at most one image's cost at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass

from polycap.serve.uploads import RequestError

# Bytes per pixel Pillow keeps in memory: 1 for "1", "L" and "P", 2 for the 16-bit modes,
# 4 for every other mode ("RGB" is stored as 4 bytes a pixel, like "RGBA", "I" and "F").
ONE_BYTE_MODES = frozenset({"1", "L", "P"})
CONVERSION_BYTES = 8  # an RGBA (or transposed) intermediate and the RGB result, 4 bytes each
HIGH_BIT_WORK_BYTES = 6  # 16/32-bit and float modes: a 4-byte working array + the 8-bit image


@dataclass(frozen=True)
class DecodeCost:
    """An image as its header declares it, and the bytes decoding it may hold at its peak."""

    width: int
    height: int
    mode: str
    bytes: int


def stored_bytes_per_pixel(mode: str) -> int:
    """What Pillow stores per pixel in ``mode``."""
    if mode in ONE_BYTE_MODES:
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4


def decode_cost(data: bytes) -> DecodeCost | None:
    """The peak bytes of decoding ``data`` into 8-bit RGB, from its header only (nothing is
    decoded); None when Pillow cannot read a header (decoding then names the problem)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height, mode = image.width, image.height, image.mode
    except Exception:  # not an image: decode_image says so in its own words
        return None
    per_pixel = stored_bytes_per_pixel(mode) + CONVERSION_BYTES
    if mode.startswith(("I", "F")):
        per_pixel += HIGH_BIT_WORK_BYTES
    return DecodeCost(width, height, mode, width * height * per_pixel)


def megabytes(size: int) -> str:
    return f"{size / 1024 / 1024:,.0f} MiB"


class DecodeBudget:
    """At most ``limit`` bytes of images being decoded at once, across all requests.

    ``async with budget.hold(name, cost):`` waits until ``cost`` fits beside the decodes in
    progress (first come, first served); a cost over the whole budget is refused at once with
    a 413. ``peak`` is the most bytes ever held together, ``waits`` how often a decode had to
    wait (what the tests read).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        self.waits = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed = asyncio.Condition()

    def check(self, name: str, cost: DecodeCost) -> None:
        """413 when ``cost`` alone is more than the budget (it could never be decoded)."""
        if cost.bytes > self.limit:
            raise RequestError(
                413,
                f"{name}: decoding this {cost.width}x{cost.height} image (mode {cost.mode}) "
                f"needs about {megabytes(cost.bytes)}, more than the server's decode budget of "
                f"{megabytes(self.limit)} (--decode-memory-mb)",
            )

    def _condition(self) -> asyncio.Condition:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a new event loop (tests run several): fresh state
            self._loop, self._changed, self.used = loop, asyncio.Condition(), 0
        return self._changed

    @contextlib.asynccontextmanager
    async def hold(self, name: str, cost: DecodeCost | None) -> AsyncIterator[None]:
        """Hold ``cost``'s bytes while the body runs (None: an unreadable header, held at 0)."""
        size = 0 if cost is None else cost.bytes
        if cost is not None:
            self.check(name, cost)
        changed = self._condition()
        async with changed:
            if self.used + size > self.limit:
                self.waits += 1
                await changed.wait_for(lambda: self.used + size <= self.limit)
            self.used += size
            self.peak = max(self.peak, self.used)
        try:
            yield
        finally:
            async with changed:
                self.used -= size
                changed.notify_all()
