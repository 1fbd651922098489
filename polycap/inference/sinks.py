"""Where a collection's captions go: a caption table (``-o``), sidecar text files
(``--sidecar``) and the images' own metadata (``--write-metadata``).

Each sink answers, for one image, whether it still needs a caption (:meth:`Sink.state`): an
image is captioned when any sink needs it, and each sink writes only the images it needed. A
sink's own content says what is done, so a rerun (or a run killed and started again) skips
what is there and touches nothing of it:

- the table: a row for the image in the table or in a journal of an unfinished run;
- a sidecar: the file exists (``photo.jpg`` -> ``photo.txt``);
- metadata: polycap's mark (``Xmp.polycap.model``) is in the file. A description without
  the mark is someone else's, kept unless ``overwrite`` (counted as kept).
"""

from __future__ import annotations

import datetime
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from polycap.data import metadata
from polycap.data.caption_rows import Journal, read_journal, read_rows, table_format
from polycap.data.metadata import read_description, write_description
from polycap.data.sources import Item
from polycap.errors import BadInput, first_line
from polycap.util.atomic import check_writable_file, replace_beside

if TYPE_CHECKING:
    from polycap.data.metadata import WriteOptions
    from polycap.util.distributed import Processes

Kind = Literal["todo", "done", "kept", "unsupported"]


@dataclass
class Outcome:
    """What happened to one image: its captions (new, or what a sink already held) and flags
    (captioned, done, kept, unreadable, no-metadata, failed), with a reason where one applies."""

    item: Item
    captions: list[str]
    flags: list[str]
    reason: str | None = None


@dataclass(frozen=True)
class State:
    """What a sink holds for an image: ``todo`` (needs a caption), ``done`` (has polycap's),
    ``kept`` (has someone else's description, left alone) or ``unsupported`` (``reason``)."""

    kind: Kind
    text: str | None = None  # what the sink holds now (shown in the gallery)
    reason: str | None = None


TODO = State("todo")


@dataclass(frozen=True)
class Captioned:
    item: Item
    captions: list[str]
    time: str


def now() -> str:
    """The time a caption was made, ISO 8601 in UTC to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class Sink:
    """The protocol of a sink (and a no-op base)."""

    name = ""

    def state(self, item: Item) -> State:
        raise NotImplementedError

    def write(self, done: list[Captioned]) -> list[tuple[Item, str]]:
        """Write captions; the (item, reason) of each that could not be written."""
        raise NotImplementedError

    def finish(self, procs: Processes) -> None:
        """After every process has captioned its share."""


# -- the caption table -------------------------------------------------------------------------


def journal_prefix(path: Path) -> str:
    return f".{path.name}.part-"


class TableSink(Sink):
    """Rows in a JSONL, CSV or Parquet file. While the run goes, each process appends its rows
    to its own journal (``.NAME.part-RANK.jsonl`` beside the table); at the end the main process
    writes the table from the old one and every journal, and removes the journals."""

    name = "output"

    def __init__(self, path: Path, language: str, model: str, procs: Processes) -> None:

        table_format(path)
        self.path = check_writable_file(Path(path), "--output")
        self.language, self.model = language, model
        self.done: dict[str, str] = {}
        if self.path.is_file():
            for row in read_rows(self.path):
                self._remember(row)
        for journal in self.journals():
            for row in _journal_rows(journal):
                self._remember(row)
        self.journal = Journal(self.path.parent / f"{journal_prefix(self.path)}{procs.rank}.jsonl")

    def _remember(self, row: dict[str, Any]) -> None:
        captions = row.get("captions") or [""]
        self.done[os.path.normpath(str(row["path"]))] = str(captions[0])

    def journals(self) -> list[Path]:
        prefix = journal_prefix(self.path)
        found = [p for p in self.path.parent.glob(f"{prefix}*.jsonl")]
        return sorted(found, key=lambda p: int(p.stem[len(prefix) :] or 0))

    def state(self, item: Item) -> State:
        text = self.done.get(os.path.normpath(item.key))
        return TODO if text is None else State("done", text)

    def write(self, done: list[Captioned]) -> list[tuple[Item, str]]:
        self.journal.append(
            {
                "path": c.item.key,
                "captions": c.captions,
                "language": self.language,
                "model": self.model,
                "time": c.time,
            }
            for c in done
        )
        return []

    def finish(self, procs: Processes) -> None:
        self.journal.close()
        procs.barrier("writing the caption table")
        if not procs.main:
            return
        journals = [j for j in self.journals() if j.stat().st_size]
        if journals:
            from polycap.data.caption_rows import write_rows

            write_rows(self.path, _merged(self.path, journals))
        for journal in self.journals():
            journal.unlink(missing_ok=True)


def _journal_rows(path: Path) -> Any:

    try:
        yield from read_journal(path)
    except (OSError, UnicodeDecodeError) as error:
        reason = first_line(error)
        raise BadInput(f"{path}: unreadable journal of an earlier run ({reason})") from None


def _merged(table: Path, journals: list[Path]) -> Any:
    """The old table's rows, then each journal's, each image once."""

    seen: set[str] = set()
    sources = [read_rows(table)] if table.is_file() else []
    for rows in [*sources, *(_journal_rows(j) for j in journals)]:
        for row in rows:
            key = os.path.normpath(str(row["path"]))
            if key not in seen:
                seen.add(key)
                yield row


# -- sidecars ----------------------------------------------------------------------------------


class SidecarSink(Sink):
    """``photo.jpg`` -> ``photo.txt`` (``ext``), UTF-8, one caption per line; an existing
    sidecar counts as done and is never replaced."""

    name = "sidecar"

    def __init__(self, items: list[Item], ext: str = ".txt") -> None:
        self.ext = ext if ext.startswith(".") else f".{ext}"
        _writable_items(items, "--sidecar")
        itself = next((i for i in items if self.path(i) == Path(i.file)), None)
        if itself is not None:
            raise BadInput(f"--sidecar-ext {ext}: the sidecar of {itself.key} would be the image")
        clashes = Counter(self.path(i) for i in items)
        twice = [path for path, count in clashes.items() if count > 1]
        if twice:
            same = [i.key for i in items if self.path(i) == twice[0]]
            raise BadInput(
                f"--sidecar: {same[0]} and {same[1]} would share the sidecar {twice[0]}; "
                "rename one, leave one out with --exclude, or choose --sidecar-ext"
            )

    def path(self, item: Item) -> Path:
        return Path(item.file).with_suffix(self.ext)

    def state(self, item: Item) -> State:
        sidecar = self.path(item)
        if not sidecar.is_file():
            return TODO
        try:
            text = sidecar.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            text = None
        return State("done", text)

    def write(self, done: list[Captioned]) -> list[tuple[Item, str]]:

        failed = []
        for captioned in done:
            text = "\n".join(c.replace("\n", " ") for c in captioned.captions) + "\n"
            try:
                replace_beside(self.path(captioned.item), text.encode("utf-8"), durable=False)
            except OSError as error:
                failed.append((captioned.item, f"sidecar not written ({error.strerror or error})"))
        return failed


def _writable_items(items: list[Item], option: str) -> None:
    inside = next((i for i in items if not i.writable), None)
    if inside is not None:
        source = inside.key.rsplit("#", 1)[0]
        raise BadInput(
            f"{option}: the images of {source} are stored inside it, not files of their own; "
            "write their captions with -o/--output"
        )


# -- metadata ----------------------------------------------------------------------------------


class MetadataSink(Sink):
    """The caption in the image file (EXIF, XMP, IPTC; ``data/metadata.py``)."""

    name = "metadata"

    def __init__(self, items: list[Item], options: WriteOptions, overwrite: bool) -> None:

        _writable_items(items, "--write-metadata")
        metadata._exiv2()  # pyexiv2 missing: one line before any work
        self.options = options
        self.overwrite = overwrite

    def state(self, item: Item) -> State:

        try:
            described = read_description(Path(item.file))
        except BadInput as error:
            return State("unsupported", reason=_short(error, item))
        if described.by_polycap:
            return State("done", described.description)
        if described.description and not self.overwrite:
            return State("kept", described.description)
        return TODO

    def write(self, done: list[Captioned]) -> list[tuple[Item, str]]:

        failed = []
        for captioned in done:
            try:
                write_description(Path(captioned.item.file), captioned.captions[0], self.options)
            except BadInput as error:
                failed.append((captioned.item, _short(error, captioned.item)))
            except OSError as error:
                failed.append((captioned.item, f"not replaced ({error.strerror or error})"))
        return failed


def _short(error: Exception, item: Item) -> str:
    """The message without the file's name in front (the summary names the file)."""
    text = first_line(error)
    return text.split(": ", 1)[1] if text.startswith(str(item.file)) and ": " in text else text
