"""Self-contained HTML reports: each image (embedded, thumbnailed) beside its text."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from polycap.util.atomic import write_text


@dataclass
class ReportRow:
    """One image and the named texts shown beside it (caption, references, retrieved, ...)."""

    image: Path
    texts: dict[str, Sequence[str]]
    marks: dict[str, bool] = field(default_factory=dict)  # e.g. {"colour": True}: ✓ / ✗ badges


def thumbnail_data_uri(path: Path, size: int = 160) -> str:
    """A small JPEG of the image as a data: URI, so the report is one portable file."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        image.thumbnail((size, size))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#222}
table.summary{border-collapse:collapse;margin-bottom:1.5rem}
table.summary td,table.summary th{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}
.row{display:flex;gap:1rem;align-items:flex-start;border-bottom:1px solid #eee;padding:.6rem 0}
.row img{width:160px;border-radius:4px}
.label{color:#777;font-size:.8rem;text-transform:uppercase;margin-top:.3rem}
.ok{color:#1a7f37}.bad{color:#cf222e}
"""


def render_report(
    title: str,
    rows: Sequence[ReportRow],
    summary: Sequence[Sequence[str]] = (),
    summary_header: Sequence[str] = (),
) -> str:
    """The HTML text of a report."""
    escape = html.escape
    parts = [
        f"<!doctype html><meta charset='utf-8'><title>{escape(title)}</title>",
        f"<style>{STYLE}</style><h1>{escape(title)}</h1>",
    ]
    if summary:
        head = "".join(f"<th>{escape(str(c))}</th>" for c in summary_header)
        body = "".join(
            "<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in summary
        )
        parts.append(f"<table class='summary'><tr>{head}</tr>{body}</table>")
    for row in rows:
        texts = []
        for label, values in row.texts.items():
            items = "".join(f"<div>{escape(v)}</div>" for v in values)
            texts.append(f"<div class='label'>{escape(label)}</div>{items}")
        marks = " ".join(
            f"<span class='{'ok' if good else 'bad'}'>{'✓' if good else '✗'} {escape(name)}</span>"
            for name, good in row.marks.items()
        )
        parts.append(
            f"<div class='row'><img src='{thumbnail_data_uri(row.image)}' "
            f"alt='{escape(row.image.name)}'>"
            f"<div><b>{escape(row.image.name)}</b> {marks}{''.join(texts)}</div></div>"
        )
    return "\n".join(parts) + "\n"


def write_report(
    path: Path,
    title: str,
    rows: Sequence[ReportRow],
    summary: Sequence[Sequence[str]] = (),
    summary_header: Sequence[str] = (),
) -> Path:
    """Write the report atomically (temp file, then rename)."""
    return write_text(path, render_report(title, rows, summary, summary_header))
