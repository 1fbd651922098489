"""Line files: many rows of text, one read by seeking, never by loading the whole file; and
the ``meta.json`` record of the folders that hold them.

A line file is ``<name>.txt`` (one UTF-8 line per row) plus ``<name>.offsets.npy`` (int64
[N+1] byte offsets), so one line is read by seeking, never by loading the file. Caption banks
and feature stores keep their captions and image paths this way, and describe themselves in a
``meta.json`` with their ``format`` and ``version`` (:func:`read_meta`).
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from polycap.errors import BadInput


def read_meta(meta_file: Path, kind: str, format_name: str, version: int) -> dict[str, Any]:
    """The record in ``meta_file`` of a folder of ``kind`` ("bank", "feature store"); BadInput
    when it is unreadable or of another format or version."""
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise BadInput(f"{meta_file}: unreadable {kind} metadata ({error})") from None
    if meta.get("format") != format_name or meta.get("version") != version:
        raise BadInput(f"{meta_file}: not a polycap {kind} of version {version}")
    return meta


def _offsets_path(path: Path) -> Path:
    return path.with_name(path.stem + ".offsets.npy")


class LineWriter:
    """Append lines one at a time; :meth:`close` writes the offsets file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.handle = open(self.path, "wb")  # noqa: SIM115 (closed by close())
        self.offsets = array("q", [0])

    def add(self, line: str) -> None:
        data = line.replace("\n", " ").encode("utf-8") + b"\n"
        self.handle.write(data)
        self.offsets.append(self.offsets[-1] + len(data))

    def close(self) -> int:
        """Finish both files; returns the number of lines."""
        import numpy as np

        self.handle.close()
        np.save(_offsets_path(self.path), np.frombuffer(self.offsets, dtype=np.int64))
        return len(self.offsets) - 1


def write_lines(path: Path, lines: Iterable[str]) -> int:
    """Write ``lines`` (no newlines inside) and ``<path stem>.offsets.npy``; returns the count."""
    writer = LineWriter(path)
    try:
        for line in lines:
            writer.add(line)
    finally:
        count = writer.close()
    return count


class LineFile:
    """Random access to the lines of a file written by :func:`write_lines`."""

    def __init__(self, path: Path) -> None:
        from polycap.util.safe_load import load_array

        self.path = path
        self.offsets = load_array(_offsets_path(path))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def get(self, ids: Sequence[int]) -> list[str]:
        """The lines with these indices, in the order asked."""
        result = []
        with open(self.path, "rb") as handle:
            for index in ids:
                start, end = int(self.offsets[index]), int(self.offsets[index + 1])
                handle.seek(start)
                result.append(handle.read(end - start - 1).decode("utf-8"))
        return result

    def __iter__(self) -> Any:
        with open(self.path, encoding="utf-8") as handle:
            for line in handle:
                yield line.rstrip("\n")
