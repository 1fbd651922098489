"""The images of a collection: folders (recursive, ``--include``/``--exclude`` patterns), image
files, a file list (``--from-list``), Parquet tables and webdataset shards.

:func:`list_collection` turns what the user named into :class:`Item` s in one deterministic
order (folders walked in sorted order), each image once, so that every process of a launched
run lists the same collection and takes its own share of it. An item's ``key`` is what output
rows call it: the image's path as listed, or ``table.parquet#row-12`` / ``shard.tar#KEY`` for an
image stored inside data (such images get a file of their own, written once by content:
:func:`polycap.data.embedded.store_image_bytes`; they cannot take sidecars or metadata).

Hidden files and folders (a leading dot) are not listed; leftovers of an interrupted metadata
write (``.NAME.polycap-*.tmp``) are collected in :attr:`Collection.stale` for the caller to
remove before writing starts.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polycap.data.images import IMAGE_SUFFIXES, is_image_file
from polycap.errors import BadInput, first_line
from polycap.util.atomic import TEMP_MARK

TABLE_SUFFIXES = (".parquet", ".pq")
SHARD_SUFFIXES = (".tar",)
IMAGE_COLUMNS = ("image", "img", "picture", "photo", "jpg", "png", "file", "path", "file_name")


@dataclass(frozen=True)
class Item:
    """One image of a collection: its ``key`` in outputs, the ``file`` that decodes to it, and
    whether that file is the user's own (``writable``: sidecars and metadata may go with it)."""

    key: str
    file: Path
    writable: bool = True


@dataclass(frozen=True)
class Selection:
    """What to list: the inputs, glob patterns on names or relative paths, a list file."""

    inputs: Sequence[Path] = ()
    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    from_list: Path | None = None


@dataclass
class Collection:
    items: list[Item] = field(default_factory=list)
    stale: list[Path] = field(default_factory=list)  # temporary copies left by a killed run


def list_collection(selection: Selection) -> Collection:
    """Every image ``selection`` names, each once, in a deterministic order."""
    found = Collection()
    seen: set[str] = set()
    named = list(selection.inputs)
    if selection.from_list is not None:
        named += _read_list(selection.from_list)
    if not named:
        raise BadInput("nothing to caption: give images, folders, tables, shards or --from-list")
    for path in named:
        for item in _items(path, selection, found.stale):
            marker = os.path.normpath(item.key)
            if marker not in seen:
                seen.add(marker)
                found.items.append(item)
    return found


def _read_list(path: Path) -> list[Path]:
    """A file of image paths, one per line (blank lines and ``#`` comments ignored); relative
    paths are taken against the list's folder."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise BadInput(f"--from-list {path}: cannot read it ({first_line(error)})") from None
    base = Path(path).parent
    paths = []
    for line in lines:
        text = line.strip()
        if text and not text.startswith("#"):
            named = Path(text).expanduser()
            paths.append(named if named.is_absolute() else base / named)
    return paths


def _items(path: Path, selection: Selection, stale: list[Path]) -> Iterator[Item]:
    suffix = path.suffix.lower()
    if "{" in str(path) or suffix in SHARD_SUFFIXES:
        yield from shard_items(path)
    elif suffix in TABLE_SUFFIXES:
        yield from table_items(path)
    elif path.is_dir():
        yield from _folder_items(path, selection, stale)
    elif path.is_file():
        yield Item(str(path), path)
    else:
        raise BadInput(f"{path}: no such file or folder")


def _folder_items(root: Path, selection: Selection, stale: list[Path]) -> Iterator[Item]:
    count = 0
    for folder, folders, files in os.walk(root):
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                if TEMP_MARK in name and name.endswith(".tmp"):
                    stale.append(Path(folder) / name)
                continue
            path = Path(folder) / name
            if is_image_file(path) and _selected(path.relative_to(root).as_posix(), selection):
                count += 1
                yield Item(str(path), path)
    if not count:
        patterns = " (after --include/--exclude)" if selection.include or selection.exclude else ""
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise BadInput(f"{root}: no image files in this folder{patterns} (looked for {suffixes})")


def _selected(relative: str, selection: Selection) -> bool:
    """Glob patterns match the path below the folder (``2023/*.jpg``) or the name alone."""
    name = relative.rsplit("/", 1)[-1]

    def matches(pattern: str) -> bool:
        return fnmatch.fnmatch(relative, pattern) or fnmatch.fnmatch(name, pattern)

    if selection.include and not any(matches(p) for p in selection.include):
        return False
    return not any(matches(p) for p in selection.exclude)


# -- images inside data ------------------------------------------------------------------------


def table_items(path: Path) -> Iterator[Item]:
    """The images of a Parquet table's image column (Hugging Face ``Image`` structs, bytes, or
    file names relative to the table's folder; ``--image-column`` chooses it)."""
    import pyarrow.parquet as pq

    from polycap.data.embedded import store_image_bytes

    try:
        handle = pq.ParquetFile(str(path))
    except Exception as error:  # ArrowInvalid, OSError, ...
        raise BadInput(f"{path}: not a readable Parquet file ({first_line(error, 200)})") from None
    column = _image_column(path, handle.schema_arrow)
    row = 0
    for batch in handle.iter_batches(batch_size=1024, columns=[column]):
        for value in batch.column(0).to_pylist():
            key = f"{path}#row-{row}"
            if isinstance(value, dict):
                value = value.get("bytes") or value.get("path")
            if isinstance(value, (bytes, bytearray)):
                yield Item(key, store_image_bytes(bytes(value)), writable=False)
            elif isinstance(value, str) and value:
                named = Path(value)
                file = named if named.is_absolute() else path.parent / named
                yield Item(str(file), file)
            else:
                raise BadInput(f"{path}: row {row}: no image in column {column!r}")
            row += 1


def _image_column(path: Path, schema: Any) -> str:
    import pyarrow as pa

    from polycap.data.captions import table_columns

    names = list(schema.names)
    chosen = table_columns()[0]
    if chosen is not None:
        if chosen not in names:
            raise BadInput(f"{path}: no column {chosen!r} (--image-column); columns: {names}")
        return chosen

    def holds_bytes(kind: Any) -> bool:
        if pa.types.is_struct(kind):
            return any(kind.field(i).name == "bytes" for i in range(kind.num_fields))
        return pa.types.is_binary(kind) or pa.types.is_large_binary(kind)

    typed = [f.name for f in schema if holds_bytes(f.type)]
    named = [n for key in IMAGE_COLUMNS for n in names if n.lower() == key]
    if len(typed) == 1 or (typed and not named):
        return typed[0]
    if named:
        return named[0]
    raise BadInput(f"{path}: cannot tell which column holds the images; pass --image-column")


def shard_items(path: Path) -> Iterator[Item]:
    """The image member of each sample of webdataset shards (``KEY.jpg``, ``KEY.png``, ...)."""
    from polycap.data.embedded import shard_files, shard_samples, store_image_bytes

    suffixes = [s.lstrip(".") for s in sorted(IMAGE_SUFFIXES)] + ["jpeg"]
    for shard in shard_files(path):
        for sample in shard_samples(shard):
            member = next((s for s in suffixes if s in sample), None)
            if member is not None:
                key = f"{shard}#{sample.get('__key__', '?')}"
                yield Item(key, store_image_bytes(sample[member]), writable=False)
