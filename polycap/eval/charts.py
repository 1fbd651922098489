"""Charts for the HTML reports and the run folder, drawn with matplotlib (the ``eval`` extra).

Reports embed each chart as inline SVG whose text stays text (searchable, sharp at any zoom),
so a report stays one file. A run folder gets ``training_curves.png``: train and validation
loss per epoch and, when ``--eval-metrics`` recorded them, the validation scores. matplotlib's
object API (``Figure``, no pyplot) keeps no global state and needs no GUI backend. Without
matplotlib the charts are left out: a report says how to get them, training goes on.
"""

from __future__ import annotations

import io
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CURVES_FILE = "training_curves.png"
INSTALL_HINT = "charts need matplotlib: pip install 'polycap[eval]'"
PALETTE = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3")
MAX_IMAGE_BARS = 40  # more images than this: sorted curves instead of a bar per image
NOT_SCORES = {"epoch", "step", "train_loss", "val_loss"}
LOWER_IS_BETTER = ("WER",)  # the built-in metric columns where lower is better


@dataclass(frozen=True)
class Chart:
    """A chart for a report: its ``title``, the ``svg`` element, and a one-line ``note``."""

    title: str
    svg: str
    note: str = ""


def available() -> bool:
    """Whether matplotlib is installed."""
    from importlib.util import find_spec

    return find_spec("matplotlib") is not None


def direction(measure: str, lower_is_better: Collection[str]) -> str:
    """``"lower is better"`` or ``"higher is better"`` for ``measure``."""
    return "lower is better" if measure in lower_is_better else "higher is better"


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _svg(figure: Any) -> str:
    """The figure as an ``<svg>`` element (no XML prolog), text kept as text."""
    from matplotlib import rc_context

    buffer = io.StringIO()
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": "polycap"}):
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _colours(names: Sequence[str]) -> dict[str, str]:
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def _legend(figure: Any, colours: Mapping[str, str]) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(color=colour, label=name) for name, colour in colours.items()]
    figure.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4))


def _plain(axes: Any) -> None:
    axes.spines[["top", "right"]].set_visible(False)
    axes.tick_params(labelsize=8)


def score_bars(
    measures: Sequence[str],
    methods: Mapping[str, Sequence[float | None]],
    lower_is_better: Collection[str] = (),
    title: str = "Scores by method",
) -> Chart | None:
    """One small panel per measure, a bar per method (``methods``: name -> one value per
    measure, None where it does not apply), each panel titled with its direction."""
    if not available() or not measures or not methods:
        return None
    columns = min(len(measures), 4)
    rows = math.ceil(len(measures) / columns)
    figure = _figure(2.3 * columns + 0.3, 2.1 * rows + 0.5)
    grid = figure.subplots(rows, columns, squeeze=False)
    colours = _colours(list(methods))
    for index, axes in enumerate(grid.flat):
        if index >= len(measures):
            axes.set_visible(False)
            continue
        measure = measures[index]
        values = [methods[name][index] for name in methods]
        bars = axes.bar(
            range(len(values)),
            [0.0 if v is None else v for v in values],
            color=list(colours.values()),
        )
        for bar, value in zip(bars, values):
            label = "n/a" if value is None else f"{value:.1f}"
            where = (bar.get_x() + bar.get_width() / 2, bar.get_height())
            axes.annotate(label, where, ha="center", va="bottom", fontsize=7)
        axes.set_title(f"{measure}\n({direction(measure, lower_is_better)})", fontsize=9)
        axes.set_xticks([])
        axes.margins(y=0.18)
        _plain(axes)
    _legend(figure, colours)
    lower = [m for m in measures if m in lower_is_better]
    note = ", ".join(f"{m}: lower is better" for m in lower)
    return Chart(title, _svg(figure), note)


def per_image_scores(
    measure: str,
    keys: Sequence[str],
    methods: Mapping[str, Sequence[float | None]],
    lower: bool = False,
) -> Chart | None:
    """Each method's ``measure`` on each image: a bar per method and image for up to
    :data:`MAX_IMAGE_BARS` images, else each method's scores sorted (best first)."""
    if not available() or not keys or not methods:
        return None
    colours = _colours(list(methods))
    many = len(keys) > MAX_IMAGE_BARS
    figure = _figure(min(11.0, max(5.0, 2.5 + 0.22 * len(keys) * max(1, len(methods) / 2))), 3.2)
    axes = figure.subplots()
    width = 0.8 / len(methods)
    for offset, (name, values) in enumerate(methods.items()):
        scores = [math.nan if v is None else float(v) for v in values]
        if many:
            ranked = sorted((s for s in scores if not math.isnan(s)), reverse=not lower)
            axes.plot(range(1, len(ranked) + 1), ranked, color=colours[name])
        else:
            where = [i + (offset - (len(methods) - 1) / 2) * width for i in range(len(keys))]
            axes.bar(where, scores, width=width, color=colours[name])
    if many:
        axes.set_xlabel("images, best first", fontsize=8)
    else:
        axes.set_xticks(range(len(keys)), list(keys), rotation=90, fontsize=7)
    better = "lower is better" if lower else "higher is better"
    axes.set_ylabel(f"{measure} ({better})", fontsize=8)
    _plain(axes)
    _legend(figure, colours)
    return Chart(f"{measure} per image", _svg(figure), f"{measure}: {better}")


def training_curves(
    history: Sequence[Mapping[str, Any]], lower_is_better: Collection[str] = LOWER_IS_BETTER
) -> Any:
    """A figure of the loss per epoch (train, validation) and, beside it, the validation
    scores the history holds (``val_<column>``, each labelled with its direction); None
    without matplotlib or history."""
    if not available() or not history:
        return None
    epochs = [record["epoch"] for record in history]
    losses = {
        label: [_number(r.get(key)) for r in history]
        for key, label in (("train_loss", "train"), ("val_loss", "validation"))
    }
    scores = _score_series(history)
    figure = _figure(9.0 if scores else 5.0, 3.4)
    panels = figure.subplots(1, 2 if scores else 1, squeeze=False, sharex=True)[0]
    _curves(panels[0], epochs, losses, "loss (lower is better)")
    if scores:
        named = {f"{k} ({direction(k, lower_is_better)})": v for k, v in scores.items()}
        _curves(panels[1], epochs, named, "validation scores")
    return figure


def _curves(axes: Any, epochs: list[Any], series: Mapping[str, list[float]], title: str) -> None:
    from matplotlib.ticker import MaxNLocator

    for (label, values), colour in zip(series.items(), PALETTE):
        if not all(math.isnan(v) for v in values):
            axes.plot(epochs, values, marker="o", label=label, color=colour)
    axes.set_title(title, fontsize=9)
    axes.set_xlabel("epoch", fontsize=8)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.legend(fontsize=8)
    _plain(axes)


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else math.nan


def _score_series(history: Sequence[Mapping[str, Any]]) -> dict[str, list[float]]:
    """``val_<column>`` -> its value per epoch (NaN where missing), for columns with a value."""
    names: list[str] = []
    for record in history:
        names += [k for k in record if k not in NOT_SCORES and k not in names]
    series = {name: [_number(r.get(name)) for r in history] for name in names}
    return {
        name.removeprefix("val_"): values
        for name, values in series.items()
        if not all(math.isnan(v) for v in values)
    }


def write_training_curves(run_dir: str | Path, history: Sequence[Mapping[str, Any]]) -> Path | None:
    """``run_dir/training_curves.png`` from the trainer's per-epoch ``history`` (atomically);
    None (nothing written) without matplotlib or history."""
    from polycap.util.atomic import write_bytes

    figure = training_curves(history)
    if figure is None:
        return None
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, metadata={"Software": "polycap"})
    return write_bytes(Path(run_dir) / CURVES_FILE, buffer.getvalue())
