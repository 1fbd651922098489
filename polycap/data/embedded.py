"""Images that live inside data (table cells, shard members): written once as files, by content.

:func:`store_image_bytes` gives such an image a file in
:func:`polycap.data.captions.embedded_images_dir` (``<sha256>.<kind>``), so that the same bytes
are one image wherever they occur and decode through polycap's one image loader.
:func:`shard_files` names the ``.tar`` shards of a webdataset path (a file, a brace pattern or a
folder). Both the caption-set readers (``builtin/tables.py``) and collections
(``data/sources.py``) use them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from polycap.data.captions import embedded_images_dir
from polycap.errors import BadInput, first_line
from polycap.util.atomic import write_bytes

_MAGIC = (
    (b"\x89PNG", "png"),
    (b"\xff\xd8", "jpg"),
    (b"GIF8", "gif"),
    (b"BM", "bmp"),
    (b"II*\x00", "tif"),
    (b"MM\x00*", "tif"),
)


def store_image_bytes(data: bytes) -> Path:
    """Write ``data`` once as ``<embedded_images_dir>/<sha256[:2]>/<sha256>.<kind>`` (the kind
    from the first bytes, ``img`` when unknown: decoding sniffs the content anyway)."""
    digest = hashlib.sha256(data).hexdigest()
    kind = next((k for magic, k in _MAGIC if data.startswith(magic)), None)
    if kind is None:
        kind = "webp" if data[:4] == b"RIFF" and data[8:12] == b"WEBP" else "img"
    target = embedded_images_dir() / digest[:2] / f"{digest}.{kind}"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(target, data)
    return target


def shard_files(path: Path) -> list[Path]:
    """The shard files ``path`` names (brace pattern expanded, folder listed); all must exist."""
    if "{" in str(path):
        from braceexpand import braceexpand

        shards = [Path(p) for p in braceexpand(str(path))]
    elif path.is_dir():
        shards = sorted(path.glob("*.tar"))
    else:
        shards = [path]
    missing = [shard for shard in shards if not shard.is_file()]
    if missing:
        raise BadInput(f"{missing[0]}: no such shard ({len(missing)} of {len(shards)} missing)")
    return shards


def shard_samples(shard: Path) -> Iterator[dict[str, Any]]:
    """The samples of one webdataset shard, in order; an unreadable shard is one line naming
    it (the caller's own BadInput passes through untouched)."""
    import webdataset

    samples = webdataset.WebDataset(str(shard), shardshuffle=False, empty_check=False)
    try:
        yield from samples
    except Exception as error:  # tarfile.ReadError, ValueError, ...
        raise BadInput(
            f"{shard}: not a readable webdataset shard ({first_line(error, 200)})"
        ) from None
