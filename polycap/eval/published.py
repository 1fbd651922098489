"""Published scores beside polycap's own (``polycap eval --benchmark xm3600``).

The numbers are data, not code: ``polycap/eval/data/published.json`` holds, per benchmark, rows of
``system``, ``language`` (a code, or ``avgN`` for a mean over N languages), scores (``CIDEr``,
``Fidelity``), ``setting`` and ``source``. :func:`benchmark_table` picks the rows of the language
scored, plus the multilingual means for context, and puts this run's row first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from polycap.errors import BadInput

SCORE_COLUMNS = ("CIDEr", "Fidelity")
# this run's column for each published one (polycap's CIDEr is pycocoevalcap's, i.e. CIDEr-D)
OURS = {"CIDEr": "CIDEr-D", "Fidelity": "Fidelity"}


@dataclass(frozen=True)
class PublishedRow:
    system: str
    language: str
    scores: dict[str, float] = field(default_factory=dict)
    setting: str = ""
    source: str = ""


@cache
def _data() -> dict[str, Any]:
    text = resources.files("polycap.eval").joinpath("data/published.json").read_text("utf-8")
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def benchmarks() -> list[str]:
    """The benchmark names that have published rows."""
    return sorted(_data())


def published_rows(benchmark: str, language: str) -> list[PublishedRow]:
    """The rows of ``benchmark`` for ``language``, then its multilingual means (``avgN``)."""
    data = _data()
    if benchmark not in data:
        raise BadInput(f"--benchmark {benchmark}: unknown; known: {', '.join(benchmarks())}")
    rows = [
        PublishedRow(
            system=row["system"],
            language=row["language"],
            scores={k: float(row[k]) for k in SCORE_COLUMNS if k in row},
            setting=row.get("setting", ""),
            source=row.get("source", ""),
        )
        for row in data[benchmark]["rows"]
    ]
    own = [row for row in rows if row.language == language]
    means = [row for row in rows if row.language.startswith("avg")]
    return own + means


@dataclass
class BenchmarkTable:
    """This run beside the published rows: ``rows`` (system, language, CIDEr, Fidelity, note
    number) and ``notes`` (``[n] setting; source``), the long texts kept out of the table."""

    title: str
    header: list[str]
    rows: list[list[str]]
    notes: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "rows": [dict(zip(self.header, row)) for row in self.rows],
            "notes": self.notes,
        }


def benchmark_table(
    benchmark: str, language: str, scores: dict[str, float | None], setting: str
) -> BenchmarkTable:
    """This run (``scores`` by polycap column, ``setting`` e.g. its segmenter) above the
    published rows of ``benchmark`` for ``language`` and the multilingual means."""

    def cell(value: float | None) -> str:
        return "–" if value is None else f"{value:.1f}"

    notes: list[str] = []

    def note(text: str) -> str:
        if text not in notes:
            notes.append(text)
        return f"[{notes.index(text) + 1}]"

    header = ["system", "language", *SCORE_COLUMNS, "see"]
    ours = [cell(scores.get(OURS[column])) for column in SCORE_COLUMNS]
    rows = [["polycap (this run)", language, *ours, note(f"{setting}; this evaluation")]]
    for row in published_rows(benchmark, language):
        values = [cell(row.scores.get(column)) for column in SCORE_COLUMNS]
        rows.append([row.system, row.language, *values, note(f"{row.setting}; {row.source}")])
    numbered = [f"[{i}] {text}" for i, text in enumerate(notes, start=1)]
    title = f"{_data()[benchmark]['title']}: this run beside published numbers"
    return BenchmarkTable(title, header, rows, numbered)
