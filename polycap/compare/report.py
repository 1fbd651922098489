"""The compare report: the table, a bar chart of the methods' scores, a chart of one score per
image, then each image with its references and every method's captions, each caption with its
per-image scores and, where the comparison knows it (``marks``), marked right or wrong."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from polycap.eval import charts
from polycap.eval.report import Report, ReportRow

if TYPE_CHECKING:
    from polycap.compare.comparison import Comparison, MethodResult
    from polycap.eval.charts import Chart

# the score drawn per image: the first of these every method has per image
PER_IMAGE_PREFERENCE = ("CIDEr-D", "chrF", "BLEU-4", "ROUGE-L", "METEOR", "WER", "CLIPScore")
Marks = dict[str, dict[str, dict[str, bool]]]  # method -> image key -> badge -> ok


def comparison_report(comparison: Comparison, title: str, marks: Marks | None = None) -> Report:
    """The :class:`~polycap.eval.report.Report` of ``comparison``."""
    lower = sorted({c for m in comparison.methods for c in m.evaluation.lower_is_better})
    header, table = comparison.table()
    summary = [[f"{row[0]} (lower is better)" if row[0] in lower else row[0], *row[1:]]
               for row in table]  # fmt: skip
    rows = [_row(comparison, i, marks or {}) for i in range(len(comparison.images))]
    return Report(
        title,
        rows,
        summary,
        header,
        _charts(comparison, lower),
        lower,
        comparison.language,
    )


def _row(comparison: Comparison, i: int, marks: Marks) -> ReportRow:
    """Image ``i``: its references, then each method's captions with scores and verdicts."""
    key = comparison.keys[i]
    row = ReportRow(comparison.images[i], {"references": comparison.references[i]})
    texts = dict(row.texts)
    for method in comparison.methods:
        label = method.name
        if method.novel is not None:
            label += " (novel)" if method.novel[i] else " (seen in training)"
        texts[label] = method.alternatives[i] if method.alternatives else [method.captions[i]]
        row.scores[label] = _image_scores(method, i)
        badges = marks.get(method.name, {}).get(key, {})
        if badges:
            row.verdicts[label] = all(badges.values())
        if method.retrieved is not None:
            texts[f"{method.name}: retrieved captions in its prompt"] = method.retrieved[i]
        for badge, ok in badges.items():
            row.marks[f"{method.name} {badge}"] = ok
    row.texts = texts
    return row


def _image_scores(method: MethodResult, i: int) -> dict[str, float | None]:
    """The method's scores of image ``i`` (the metric columns that have per-image values)."""
    record = method.evaluation.per_image[i]
    return {c: record[c] for c in method.evaluation.scores if c in record}


def _charts(comparison: Comparison, lower: Sequence[str]) -> list[Chart] | None:
    """The score bars and the per-image chart; None when matplotlib is missing."""
    if not charts.available():
        return None
    methods = comparison.methods
    measures = [
        column
        for column in comparison.columns()
        if any(m.evaluation.scores.get(column) is not None for m in methods)
    ]
    measures += [name for m in methods for name in m.extra if name not in measures]
    values = {
        m.label: [m.evaluation.scores.get(c, m.extra.get(c)) for c in measures] for m in methods
    }
    drawn = [charts.score_bars(measures, values, lower)]
    column = _per_image_column(methods)
    if column is not None:
        per_image = {m.label: [r.get(column) for r in m.evaluation.per_image] for m in methods}
        drawn.append(charts.per_image_scores(column, comparison.keys, per_image, column in lower))
    return [chart for chart in drawn if chart is not None]


def _per_image_column(methods: Sequence[MethodResult]) -> str | None:
    for column in PER_IMAGE_PREFERENCE:
        if all(
            any(record.get(column) is not None for record in m.evaluation.per_image)
            for m in methods
        ):
            return column
    return None
