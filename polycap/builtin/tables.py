"""Caption sets as tables and shards: Parquet, Arrow, ``datasets.save_to_disk`` folders and
webdataset ``.tar`` shards (img2dataset's layout).

A table has an image column (Hugging Face ``Image`` structs ``{bytes, path}``, raw bytes, or
file names) and a caption column (text, or a list of texts); both are found by name and type
(``--image-column`` / ``--caption-column`` choose them). A shard holds ``KEY.jpg`` (or
``.png``, ``.webp``, ...) with ``KEY.txt`` or ``KEY.json`` (``caption``/``text``).

Images stored as bytes are written once to a content-addressed folder
(:func:`polycap.data.captions.embedded_images_dir`, ``<sha256>.<ext>``): the same bytes are one
image wherever they occur, the feature cache and the split by image key on the content, and
decoding goes through polycap's image loader, so a corrupt image is skipped and counted like a
corrupt file. Rows are read in batches (``pyarrow``), not all at once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polycap.builtin.benchmark_formats import XM3600_LANGUAGES
from polycap.builtin.formats import CAPTION_KEYS, IMAGE_KEYS
from polycap.data.captions import (
    caption_selection,
    check_caption,
    check_image_name,
    resolve_image,
    table_columns,
)
from polycap.data.embedded import shard_files
from polycap.data.embedded import store_image_bytes as store_image_bytes  # its former home
from polycap.errors import BadInput, first_line
from polycap.hookspecs import Register, hookimpl
from polycap.parts import CaptionRecord

TABLE_IMAGE_KEYS = (*IMAGE_KEYS, "img", "picture", "photo", "jpg", "png")
TABLE_CAPTION_KEYS = (
    *CAPTION_KEYS,
    "captions",
    "sentences",
    "texts",
    "txt",
    "description",
    "annotations",  # STAIR Captions' Parquet copy: a list of {annotation_id, image_id, caption}
)
LANGUAGE_KEYS = ("language", "lang", "trg_lang")  # a column naming each row's caption language
# per-language copies name their files <code>-00000-of-00001.parquet (an XM3600 language code)
_LANGUAGE_FILE = re.compile(r"^([a-z]{2,3})-\d{5}-of-\d{5}$")
SHARD_IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm")
DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
BATCH_ROWS = 1024


@hookimpl
def register_caption_formats(register: Register) -> None:
    """Parquet, Arrow, save_to_disk folders, webdataset shards."""
    register("parquet", Parquet())
    register("arrow", ArrowFile())
    register("hf-dataset", SavedDataset())
    register("webdataset", WebDatasetShards())


# -- tables ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Columns:
    image: str
    caption: str
    language: str | None = None  # rows are kept where it equals the chosen language

    def names(self) -> list[str]:
        return [self.image, self.caption] + ([self.language] if self.language else [])


def choose_columns(path: Path, schema: Any) -> Columns:
    """The image and caption columns: the ones chosen by option, else found by name/type."""
    import pyarrow as pa

    names = list(schema.names)
    chosen_image, chosen_caption = table_columns()
    for option, name in (("--image-column", chosen_image), ("--caption-column", chosen_caption)):
        if name is not None and name not in names:
            raise BadInput(f"{path}: no column {name!r} ({option}); columns are: {_list(names)}")

    def is_image(field: Any) -> bool:
        kind = field.type
        if pa.types.is_struct(kind):
            return any(kind.field(i).name == "bytes" for i in range(kind.num_fields))
        return pa.types.is_binary(kind) or pa.types.is_large_binary(kind)

    def is_text(field: Any) -> bool:
        kind = field.type
        if pa.types.is_list(kind) or pa.types.is_large_list(kind):
            kind = kind.value_type
            if pa.types.is_struct(kind):  # [{caption: ...}, ...]
                return any(kind.field(i).name in CAPTION_KEYS for i in range(kind.num_fields))
        return pa.types.is_string(kind) or pa.types.is_large_string(kind)

    image = chosen_image or _detect(
        path, names, [f.name for f in schema if is_image(f)], TABLE_IMAGE_KEYS, "image"
    )
    caption = chosen_caption or _detect(
        path,
        names,
        [f.name for f in schema if is_text(f) and f.name.lower() in TABLE_CAPTION_KEYS],
        TABLE_CAPTION_KEYS,
        "caption",
    )
    language = next((n for n in names if n.lower() in LANGUAGE_KEYS), None)
    return Columns(image, caption, language)


def _detect(
    path: Path, names: list[str], typed: list[str], keys: tuple[str, ...], what: str
) -> str:
    """One column by type (bytes columns for images), else by name."""
    if len(typed) == 1:
        return typed[0]
    named = [n for key in keys for n in (typed or names) if n.lower() == key]
    if named:
        return named[0]
    hint = f" (candidates: {_list(typed)})" if typed else ""
    raise BadInput(
        f"{path}: cannot tell which column holds the {what}{hint}; pass --{what}-column "
        f"(columns are: {_list(names)})"
    )


def _list(names: Iterable[str]) -> str:
    names = list(names)
    return ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")


def table_records(
    path: Path, batches: Iterable[Any], columns: Columns, base: Path
) -> list[CaptionRecord]:
    """Records of every row of ``batches`` (pyarrow RecordBatches with both columns)."""
    records: list[CaptionRecord] = []
    row = 0
    wanted = _table_language(path, columns)
    for batch in batches:
        images = batch.column(columns.image).to_pylist()
        captions = batch.column(columns.caption).to_pylist()
        languages = (
            batch.column(columns.language).to_pylist() if columns.language else [None] * len(images)
        )
        for image, caption, language in zip(images, captions, languages):
            where = f"row {row}"
            if wanted is not None and language != wanted:
                row += 1
                continue
            image_path, image_id = _row_image(path, where, columns.image, image, base)
            texts = caption if isinstance(caption, list) else [caption]
            texts = [_caption_text(text) for text in texts]
            if not texts:
                raise BadInput(f"{path}: {where}: empty caption list")
            for text in texts:
                records.append(
                    CaptionRecord(image_path, check_caption(path, where, text), image_id)
                )
            row += 1
    return records


def _caption_text(value: Any) -> Any:
    """A caption cell's text: the string, or the ``caption`` of a ``{caption, ...}`` struct."""
    if isinstance(value, dict):
        return next((value[key] for key in CAPTION_KEYS if key in value), None)
    return value


def _table_language(path: Path, columns: Columns) -> str | None:
    """The language whose rows are read: the chosen one where the table has a language column
    (BadInput when none is chosen); None where every row is read. A per-language copy named
    ``<code>-00000-of-00001.parquet`` for another language than the chosen one is BadInput."""
    chosen = caption_selection().language
    match = _LANGUAGE_FILE.match(path.stem)
    if match and chosen and match.group(1) in XM3600_LANGUAGES and match.group(1) != chosen:
        raise BadInput(
            f"{path}: the per-language copy for {match.group(1)!r}, but --lang is {chosen!r}"
        )
    if columns.language is None:
        return None
    if chosen is None:
        raise BadInput(
            f"{path}: its rows are in several languages (column {columns.language!r}); "
            "pick one with --lang"
        )
    return chosen


def _row_image(path: Path, where: str, column: str, value: Any, base: Path) -> tuple[Path, str]:
    """(image file, image id) of one cell: HF Image struct, bytes, or a file name."""
    if isinstance(value, dict):
        data, name = value.get("bytes"), value.get("path")
        if data:
            stored = store_image_bytes(data)
            return stored, stored.stem[:16]
        value = name
    if isinstance(value, (bytes, bytearray)):
        stored = store_image_bytes(bytes(value))
        return stored, stored.stem[:16]
    name = check_image_name(path, where, column, value)
    return resolve_image(name, base), name


class _Table:
    """Shared reading of one table source (subclasses open it as pyarrow batches)."""

    name = ""
    suffixes: tuple[str, ...] = ()

    def sniff(self, path: Path) -> bool:
        return path.suffix.lower() in self.suffixes

    def read(self, path: Path, images_dir: Path | None) -> list[CaptionRecord]:
        schema, batches = self.open(path)
        columns = choose_columns(path, schema)
        base = images_dir if images_dir is not None else path.parent
        return table_records(path, batches(columns), columns, base)

    def open(self, path: Path) -> tuple[Any, Any]:
        """(schema, batches(columns) -> iterator of RecordBatches)."""
        raise NotImplementedError


class Parquet(_Table):
    """A Parquet file (e.g. a Hugging Face dataset's ``data/train-*.parquet``)."""

    name = "parquet"
    suffixes = (".parquet", ".pq")

    def open(self, path: Path) -> tuple[Any, Any]:
        import pyarrow.parquet as pq

        try:
            handle = pq.ParquetFile(str(path))
        except Exception as error:  # pyarrow raises ArrowInvalid, OSError, ...
            raise BadInput(
                f"{path}: not a readable Parquet file ({first_line(error, 200)})"
            ) from None

        def batches(columns: Columns) -> Iterator[Any]:
            return handle.iter_batches(batch_size=BATCH_ROWS, columns=columns.names())

        return handle.schema_arrow, batches


class ArrowFile(_Table):
    """An Arrow IPC file or stream (``datasets`` writes streams: ``data-00000-of-00001.arrow``)."""

    name = "arrow"
    suffixes = (".arrow", ".feather", ".ipc")

    def open(self, path: Path) -> tuple[Any, Any]:
        import pyarrow as pa

        source = pa.memory_map(str(path))
        reader: Any = None
        for opener in (pa.ipc.open_file, pa.ipc.open_stream):
            try:
                source.seek(0)
                reader = opener(source)
                break
            except Exception as error:  # ArrowInvalid when it is the other kind
                last = error
        if reader is None:
            raise BadInput(f"{path}: not a readable Arrow file ({first_line(last, 200)})")

        def batches(columns: Columns) -> Iterator[Any]:
            if hasattr(reader, "num_record_batches"):
                return (reader.get_batch(i) for i in range(reader.num_record_batches))
            return iter(reader)

        return reader.schema, batches


class SavedDataset(_Table):
    """A folder written by ``datasets.Dataset.save_to_disk`` (one split)."""

    name = "hf-dataset"
    suffixes = ()

    def accepts(self, path: Path) -> bool:
        return path.is_dir() and any((path / marker).is_file() for marker in DATASET_MARKERS)

    def sniff(self, path: Path) -> bool:
        return self.accepts(path)

    def read(self, path: Path, images_dir: Path | None) -> list[CaptionRecord]:
        return super().read(path, images_dir if images_dir is not None else path)

    def open(self, path: Path) -> tuple[Any, Any]:
        import datasets

        datasets.disable_progress_bars()
        try:
            loaded = datasets.load_from_disk(str(path))
        except Exception as error:  # FileNotFoundError, json errors, arrow errors, ...
            raise BadInput(
                f"{path}: not a readable saved dataset ({first_line(error, 200)})"
            ) from None
        if isinstance(loaded, datasets.DatasetDict):
            first = path / next(iter(loaded))
            raise BadInput(
                f"{path}: holds the splits {', '.join(loaded)}; pass one of them, e.g. {first}"
            )
        table = loaded.data.table

        def batches(columns: Columns) -> Iterator[Any]:
            return iter(table.select(columns.names()).to_batches(BATCH_ROWS))

        return table.schema, batches


# -- webdataset shards -------------------------------------------------------------------------


class WebDatasetShards:
    """webdataset / img2dataset shards: a ``.tar``, a brace pattern (``shards/{00000..00009}.tar``)
    or a folder of ``.tar`` files; each sample ``KEY.<image>`` + ``KEY.txt`` or ``KEY.json``."""

    name = "webdataset"
    suffixes = (".tar",)

    def accepts(self, path: Path) -> bool:
        if "{" in str(path):
            return True
        return path.is_dir() and any(path.glob("*.tar"))

    def sniff(self, path: Path) -> bool:
        import tarfile

        return path.is_file() and tarfile.is_tarfile(path)

    def read(self, path: Path, images_dir: Path | None) -> list[CaptionRecord]:
        from polycap.data.embedded import shard_samples

        records: list[CaptionRecord] = []
        for shard in self.shards(path):
            for sample in shard_samples(shard):
                records.extend(_sample_records(shard, sample))
        return records

    @staticmethod
    def shards(path: Path) -> list[Path]:
        """The shard files ``path`` names (pattern expanded, folder listed); all must exist."""
        return shard_files(path)


def _sample_records(shard: Path, sample: dict[str, Any]) -> list[CaptionRecord]:
    key = sample.get("__key__", "?")
    where = f"sample {key!r}"
    suffix = next((s for s in SHARD_IMAGE_SUFFIXES if s in sample), None)
    if suffix is None:
        raise BadInput(
            f"{shard}: {where}: no image member (.{', .'.join(SHARD_IMAGE_SUFFIXES[:4])})"
        )
    caption: Any = None
    if "txt" in sample:
        caption = sample["txt"].decode("utf-8", errors="replace")
    elif "json" in sample:
        try:
            meta = json.loads(sample["json"])
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise BadInput(f"{shard}: {where}: {key}.json is not valid JSON") from None
        caption = next(
            (meta[k] for k in ("caption", "text") if isinstance(meta, dict) and k in meta), None
        )
    if caption is None:
        raise BadInput(f"{shard}: {where}: no caption ({key}.txt, or caption in {key}.json)")
    image = store_image_bytes(sample[suffix])
    return [CaptionRecord(image, check_caption(shard, where, caption), image.stem[:16])]
