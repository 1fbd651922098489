"""``polycap caption --report gallery.html``: one static page to review a captioned collection.

Each image is shown (a relative link to the file beside its caption, or, for an image stored
inside a table or shard, a small thumbnail as a ``data:`` URL) with its caption, the language
and what happened to it: captioned now, skipped as done, description kept, unreadable, no
metadata. While the run goes each process appends its images to its own journal beside the
page (``.NAME.part-RANK.jsonl``); the main process writes the page from them at the end.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from polycap.data.caption_rows import Journal, read_journal
from polycap.data.images import load_image
from polycap.errors import BadInput
from polycap.util.atomic import atomic_file, check_writable_file

if TYPE_CHECKING:
    from polycap.inference.sinks import Outcome
    from polycap.util.distributed import Processes

THUMBNAIL = 256
LABELS = {
    "captioned": "captioned",
    "done": "skipped: done before",
    "kept": "description kept",
    "unreadable": "unreadable",
    "no-metadata": "no metadata",
    "failed": "not written",
}
STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;background:#fafafa;color:#222}
main{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:1rem}
figure{margin:0;background:#fff;border:1px solid #ddd;border-radius:6px;padding:.6rem}
figure img{width:100%;height:200px;object-fit:contain;background:#eee}
figcaption p{margin:.3rem 0}.key{font-size:.75rem;color:#666;word-break:break-all}
.flag{display:inline-block;font-size:.72rem;border-radius:3px;padding:0 .35rem;margin-right:.2rem}
.captioned{background:#d8f5dc}.done{background:#e4e4e4}.kept{background:#fff0c2}
.unreadable,.failed{background:#ffd6d6}.no-metadata{background:#e0e8ff}
"""


class Gallery:
    """Collects each process's images, then writes the page (main process)."""

    def __init__(self, path: Path, language: str, procs: Processes) -> None:
        self.path = check_writable_file(Path(path), "--report")
        self.language = language
        self.rank = procs.rank
        self._journal: Journal | None = None
        if procs.main:  # a killed run's parts; removed before any process starts writing
            for stale in self._parts():
                stale.unlink(missing_ok=True)

    def _parts(self) -> list[Path]:
        prefix = f".{self.path.name}.part-"
        found = list(self.path.parent.glob(f"{prefix}*.jsonl"))
        return sorted(found, key=lambda p: int(p.stem[len(prefix) :] or 0))

    def add(self, outcomes: Iterable[Outcome]) -> None:
        if self._journal is None:
            part = self.path.parent / f".{self.path.name}.part-{self.rank}.jsonl"
            self._journal = Journal(part)
        self._journal.append(
            {
                "key": o.item.key,
                "file": str(o.item.file),
                "writable": o.item.writable,
                "captions": o.captions,
                "flags": o.flags,
                "reason": o.reason,
            }
            for o in outcomes
        )

    def finish(self, procs: Processes) -> None:
        if self._journal is not None:
            self._journal.close()
        procs.barrier("writing the gallery")
        if not procs.main:
            return
        parts = self._parts()
        counts: Counter[str] = Counter()
        for part in parts:
            for row in read_journal(part):
                counts.update(row["flags"])
        with atomic_file(self.path) as temporary, open(temporary, "w", encoding="utf-8") as out:
            out.write(self._head(counts))
            for part in parts:
                for row in read_journal(part):
                    out.write(self._figure(row))
            out.write("</main></body></html>\n")
        for part in parts:
            part.unlink(missing_ok=True)

    def _head(self, counts: Counter[str]) -> str:
        shown = [f"{counts[flag]} {label}" for flag, label in LABELS.items() if counts[flag]]
        summary = ", ".join(shown)
        return (
            f'<!doctype html><html lang="{html.escape(self.language)}"><head><meta charset="utf-8">'
            f"<title>polycap captions</title><style>{STYLE}</style></head><body>"
            f"<h1>Captions ({html.escape(self.language)})</h1><p>{html.escape(summary)}</p><main>\n"
        )

    def _figure(self, row: dict[str, Any]) -> str:
        flags = "".join(
            f'<span class="flag {html.escape(f)}">{html.escape(LABELS.get(f, f))}</span>'
            for f in row["flags"]
        )
        captions = "".join(
            f'<p lang="{html.escape(self.language)}">{html.escape(c)}</p>' for c in row["captions"]
        )
        reason = f"<p><small>{html.escape(row['reason'])}</small></p>" if row.get("reason") else ""
        source = html.escape(self._source(row), quote=True)
        alt = html.escape(row["captions"][0] if row["captions"] else "", quote=True)
        return (
            f'<figure><img loading="lazy" src="{source}" alt="{alt}"><figcaption>{flags}'
            f'{captions}{reason}<p class="key">{html.escape(row["key"])}</p></figcaption>'
            "</figure>\n"
        )

    def _source(self, row: dict[str, Any]) -> str:
        """A link relative to the page for the user's files; a thumbnail for stored images."""
        if row["writable"]:
            relative = os.path.relpath(os.path.abspath(row["file"]), self.path.parent.absolute())
            return quote(Path(relative).as_posix())
        return thumbnail(Path(row["file"]))


def thumbnail(path: Path) -> str:
    """A small JPEG of the image as a ``data:`` URL ("" when it cannot be read)."""

    try:
        image = load_image(path)
    except BadInput:
        return ""
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    data = io.BytesIO()
    image.save(data, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(data.getvalue()).decode("ascii")
