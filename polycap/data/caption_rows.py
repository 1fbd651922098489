"""Caption tables of a collection: one row per image (path, captions, language, model, time) in
JSONL, CSV or Parquet by the file's suffix, and the journals a run appends its rows to.

A journal is a JSON-lines file that one process appends a batch of rows to at a time (one
``write`` of whole lines, flushed to disk): a run killed midway loses at most the rows it had
not yet appended, and a torn last line is ignored when the journal is read back. The finished
table is written from the old table and the journals in one pass (:func:`write_rows`, temp
file + rename), a batch of rows at a time.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from polycap.errors import BadInput, first_line
from polycap.util.atomic import atomic_file

COLUMNS = ("path", "captions", "language", "model", "time")
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}
CSV_SEPARATOR = "\n"  # several captions in one CSV cell, one per line
ROWS_PER_BATCH = 1024


def table_format(path: Path) -> str:
    """ "jsonl", "csv" or "parquet" by ``path``'s suffix; BadInput for any other."""
    kind = FORMATS.get(Path(path).suffix.lower())
    if kind is None:
        raise BadInput(f"--output {path}: write .jsonl, .csv or .parquet (by the file's suffix)")
    return kind


def read_rows(path: Path) -> Iterator[dict[str, Any]]:
    """The rows of a caption table written by :func:`write_rows` (BadInput when the file is not
    one: the run stops before it captions anything)."""
    kind = table_format(path)
    try:
        if kind == "parquet":
            yield from _parquet_rows(path)
        elif kind == "csv":
            yield from _csv_rows(path)
        else:
            yield from read_journal(path, strict=True)
    except BadInput:
        raise
    except Exception as error:  # ArrowInvalid, csv.Error, UnicodeDecodeError, ...
        raise BadInput(
            f"--output {path}: exists but cannot be read as a caption table "
            f"({first_line(error, 200)}); choose another file or remove it"
        ) from None


def _parquet_rows(path: Path) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    handle = pq.ParquetFile(str(path))
    _check_columns(path, handle.schema_arrow.names)
    for batch in handle.iter_batches(batch_size=ROWS_PER_BATCH):
        yield from batch.to_pylist()


def _csv_rows(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        _check_columns(path, reader.fieldnames or [])
        for row in reader:
            yield {**row, "captions": row["captions"].split(CSV_SEPARATOR)}


def _check_columns(path: Path, names: Iterable[str]) -> None:
    if "path" not in names or "captions" not in names:
        raise BadInput(
            f"--output {path}: exists but is not a polycap caption table (no 'path' and "
            "'captions' columns); choose another file or remove it"
        )


def read_journal(path: Path, strict: bool = False) -> Iterator[dict[str, Any]]:
    """The rows of a JSON-lines file; a torn last line (a run killed while appending) is
    skipped unless ``strict``."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                if strict or line.endswith("\n"):
                    raise BadInput(f"{path}: line {number} is not JSON") from None
                return  # the torn end of an interrupted append
            if strict and "path" not in row:
                raise BadInput(f"{path}: line {number} has no 'path'")
            yield row


class Journal:
    """Append rows to a JSON-lines file, a batch at a time, each batch on disk when
    :meth:`append` returns."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def append(self, rows: Iterable[dict[str, Any]]) -> None:
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        if text:
            os.write(self._fd, text.encode("utf-8"))
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def write_rows(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write ``rows`` (dicts with :data:`COLUMNS`) to ``path`` atomically in its format; the
    number of rows written."""
    kind = table_format(path)
    with atomic_file(path) as temporary:
        if kind == "parquet":
            count = _write_parquet(temporary, rows)
        elif kind == "csv":
            count = _write_csv(temporary, rows)
        else:
            count = _write_jsonl(temporary, rows)
    return count


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    count = 0
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps({c: row.get(c) for c in COLUMNS}, ensure_ascii=False) + "\n")
            count += 1
    return count


def _write_csv(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    count = 0
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for row in rows:
            captions = CSV_SEPARATOR.join(c.replace("\n", " ") for c in row["captions"])
            writer.writerow([row["path"], captions, row["language"], row["model"], row["time"]])
            count += 1
    return count


def _write_parquet(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("path", pa.string()),
            ("captions", pa.list_(pa.string())),
            ("language", pa.string()),
            ("model", pa.string()),
            ("time", pa.string()),
        ]
    )
    count = 0
    with pq.ParquetWriter(str(path), schema) as writer:
        batch: list[dict[str, Any]] = []
        for row in rows:
            batch.append({c: row.get(c) for c in COLUMNS})
            if len(batch) >= ROWS_PER_BATCH:
                writer.write_batch(pa.RecordBatch.from_pylist(batch, schema=schema))
                count, batch = count + len(batch), []
        if batch:
            writer.write_batch(pa.RecordBatch.from_pylist(batch, schema=schema))
            count += len(batch)
    return count
