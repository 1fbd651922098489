"""Self-contained HTML reports: the scores (table and charts), then each image (embedded,
thumbnailed) beside its texts, right and wrong captions marked where the report knows them.

The page is the jinja2 template ``polycap/templates/reports/report.html.j2`` with autoescaping
on: every caption, file name and label is escaped; only the charts' SVG (drawn by matplotlib,
:mod:`polycap.eval.charts`) goes in as markup. The report is one file: images are data: URIs,
charts inline SVG.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from polycap.eval.charts import INSTALL_HINT
from polycap.util.atomic import write_text

if TYPE_CHECKING:
    from polycap.eval.charts import Chart

TEMPLATE = "report.html.j2"


@dataclass
class ReportRow:
    """One image and the named texts shown beside it (caption, references, retrieved, ...).

    ``marks``: badges on the image (``{"colour": True}``: ✓ / ✗); ``verdicts``: text label ->
    whether that caption is right (✓ right / ✗ wrong); ``scores``: text label -> that
    caption's per-image scores (column -> value, None where a metric does not apply)."""

    image: Path
    texts: Mapping[str, Sequence[str]]
    marks: dict[str, bool] = field(default_factory=dict)
    verdicts: dict[str, bool] = field(default_factory=dict)
    scores: dict[str, dict[str, float | None]] = field(default_factory=dict)


@dataclass
class Report:
    """A whole report: ``summary`` rows under ``summary_header``, ``charts`` (None: charts
    were wanted but matplotlib is missing, the report says so), rows, and the metric columns
    where lower is better (their per-image scores say so)."""

    title: str
    rows: Sequence[ReportRow]
    summary: Sequence[Sequence[Any]] = ()
    summary_header: Sequence[str] = ()
    charts: Sequence[Chart] | None = ()
    lower_is_better: Collection[str] = ()
    language: str = ""

    def render(self) -> str:
        """The HTML text."""
        return (
            _environment()
            .get_template(TEMPLATE)
            .render(
                title=self.title,
                language=self.language,
                summary=[[str(c) for c in row] for row in self.summary],
                summary_header=[str(c) for c in self.summary_header],
                charts=list(self.charts or ()),
                charts_missing=INSTALL_HINT if self.charts is None else "",
                rows=[_row_view(row, self.lower_is_better) for row in self.rows],
            )
        )

    def write(self, path: Path) -> Path:
        """Write the report atomically (temp file, then rename)."""
        return write_text(path, self.render())


@lru_cache(maxsize=1)
def _environment() -> Any:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("polycap", "templates/reports"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _row_view(row: ReportRow, lower_is_better: Collection[str]) -> dict[str, Any]:
    blocks = [
        {
            "label": label,
            "lines": list(lines),
            "verdict": row.verdicts.get(label),
            "scores": [
                (column, _score_text(value, column in lower_is_better))
                for column, value in row.scores.get(label, {}).items()
            ],
        }
        for label, lines in row.texts.items()
    ]
    return {
        "name": row.image.name,
        "thumbnail": thumbnail_data_uri(row.image),
        "marks": row.marks,
        "blocks": blocks,
    }


def _score_text(value: float | None, lower: bool) -> str:
    text = "n/a" if value is None else f"{value:.2f}"
    return f"{text} (lower is better)" if lower else text


def thumbnail_data_uri(path: Path, size: int = 160) -> str:
    """A small JPEG of the image as a data: URI, so the report is one portable file."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        image.thumbnail((size, size))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def render_report(
    title: str,
    rows: Sequence[ReportRow],
    summary: Sequence[Sequence[Any]] = (),
    summary_header: Sequence[str] = (),
    charts: Sequence[Chart] | None = (),
) -> str:
    """The HTML text of a report (see :class:`Report`)."""
    return Report(title, rows, summary, summary_header, charts).render()


def write_report(
    path: Path,
    title: str,
    rows: Sequence[ReportRow],
    summary: Sequence[Sequence[Any]] = (),
    summary_header: Sequence[str] = (),
    charts: Sequence[Chart] | None = (),
) -> Path:
    """Write the report atomically (temp file, then rename)."""
    return Report(title, rows, summary, summary_header, charts).write(path)
