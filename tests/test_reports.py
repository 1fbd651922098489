"""HTML reports (jinja2 templates, autoescaped) with matplotlib charts, and the run folder's
training curves: what a reader sees, built from real comparison records and a real tiny run."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image
from test_training import config_for, tiny_setup  # noqa: F401  (the module's fixture)

from polycap.compare.comparison import Comparison, MethodResult
from polycap.eval import charts
from polycap.eval.report import Report, ReportRow
from polycap.eval.runner import EvalResult

pytest.importorskip("matplotlib")


def images(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"img{i}.png"
        Image.new("RGB", (32, 24), (40 * i % 255, 90, 160)).save(path)
        paths.append(path)
    return paths


def evaluation(scores: dict, per_image: list[dict]) -> EvalResult:
    return EvalResult(
        "en", "whitespace", len(per_image), len(per_image), scores, {"SPICE": "needs Java"},
        per_image, {}, {}, lower_is_better=["WER"],
    )  # fmt: skip


def method(name: str, label: str, captions: list[str], bleu: list[float], wer: list[float]):
    per_image = [
        {"image": f"img{i}.png", "prediction": c, "BLEU-4": b, "WER": w}
        for i, (c, b, w) in enumerate(zip(captions, bleu, wer))
    ]
    scores = {"BLEU-4": sum(bleu) / len(bleu), "WER": sum(wer) / len(wer), "SPICE": None}
    return MethodResult(
        name, label, captions, [[c] for c in captions], 0.5, evaluation(scores, per_image),
        None, None, 0.5, 0.5, 1.0,
    )  # fmt: skip


@pytest.fixture
def comparison(tmp_path: Path) -> Comparison:
    paths = images(tmp_path / "images", 3)
    keys = [p.name for p in paths]
    references = [["a red circle"], ["two blue squares"], ["a <b>green</b> & triangle"]]
    methods = [
        method(
            "retrieval",
            "retrieval (image)",
            ["a red circle", "a red square", "x"],
            [100.0, 20.0, 0.0],
            [0.0, 33.3, 100.0],
        ),  # fmt: skip
        method(
            "generation",
            "generation (greedy)",
            ["a red circle", "two blue squares", "<script>alert(1)</script>"],
            [100.0, 100.0, 0.0],
            [0.0, 0.0, 100.0],
        ),  # fmt: skip
    ]
    return Comparison("en", "whitespace", paths, keys, references, methods, {}, 0.1, {})


class Tags(HTMLParser):
    """The tags and the visible text of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        self.tags.append(tag)

    def handle_data(self, data) -> None:
        self.text.append(data)


def parsed(html: str) -> Tags:
    page = Tags()
    page.feed(html)
    return page


def svgs(html: str) -> list[ET.Element]:
    return [ET.fromstring(s) for s in re.findall(r"<svg\b.*?</svg>", html, flags=re.S)]


def svg_text(svg: ET.Element) -> str:
    return " ".join(t for t in svg.itertext() if t.strip())


def test_compare_report_has_charts_scores_and_verdicts(comparison, tmp_path: Path) -> None:
    marks = {
        "retrieval": {"img0.png": {"pair": True}, "img1.png": {"pair": False}},
        "generation": {"img0.png": {"pair": True}, "img1.png": {"pair": True}},
    }
    html = comparison.write_report(tmp_path / "r.html", marks=marks).read_text("utf-8")
    assert html.count("<img") == len(comparison.images)  # the thumbnails; charts are inline
    drawn = svgs(html)
    assert len(drawn) == 2  # the methods' scores, and one score per image
    bars = svg_text(drawn[0])
    assert "WER" in bars and "lower is better" in bars and "BLEU-4" in bars
    assert "SPICE" not in bars  # n/a for every method: no empty panel
    assert "retrieval (image)" in bars and "generation (greedy)" in bars
    per_image = svg_text(drawn[1])
    assert "BLEU-4 (higher is better)" in per_image and "img2.png" in per_image
    text = " ".join(parsed(html).text)
    assert "WER (lower is better)" in text  # the table's row, the per-image scores
    assert text.count("✓ right") == 3 and text.count("✗ wrong") == 1  # img2 not known
    assert "BLEU-4 20.00 · WER 33.30 (lower is better)" in text
    # autoescaping: captions and references are text, never markup
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<b>green</b>" not in html and "&lt;b&gt;green&lt;/b&gt; &amp; triangle" in html
    assert "&amp;lt;" not in html  # escaped once, not twice
    assert "<script>alert(1)</script>" in text


def test_reports_without_matplotlib_say_how_to_get_charts(comparison, tmp_path, monkeypatch):
    monkeypatch.setattr(charts, "available", lambda: False)
    html = comparison.write_report(tmp_path / "r.html").read_text("utf-8")
    assert "<svg" not in html and charts.INSTALL_HINT.replace("'", "&#39;") in html
    assert charts.write_training_curves(tmp_path, [{"epoch": 1, "train_loss": 1.0}]) is None
    assert not (tmp_path / charts.CURVES_FILE).exists()


def test_report_template_is_package_data_and_escapes_everything(tmp_path: Path) -> None:
    from importlib import resources

    template = resources.files("polycap").joinpath("templates", "reports", "report.html.j2")
    assert template.is_file()
    [path] = images(tmp_path, 1)
    evil = "<img src=x onerror=alert(1)>"
    report = Report(evil, [ReportRow(path, {evil: [evil]}, {evil: True})], [[evil]], [evil])
    html = report.render()
    assert evil not in html and html.count("<img") == 1
    assert parsed(html).text.count(evil) >= 5  # title, heading, header, cell, label, text...


def test_score_bars_mark_direction_and_missing_values() -> None:
    chart = charts.score_bars(["CIDEr-D", "WER"], {"a": [10.0, None], "b": [5.0, 40.0]}, {"WER"})
    assert chart is not None and chart.note == "WER: lower is better"
    text = svg_text(ET.fromstring(chart.svg))
    assert "CIDEr-D" in text and "(higher is better)" in text and "(lower is better)" in text
    assert "n/a" in text and "40.0" in text


def test_many_images_are_drawn_as_sorted_curves() -> None:
    keys = [f"{i}.png" for i in range(charts.MAX_IMAGE_BARS + 1)]
    chart = charts.per_image_scores("WER", keys, {"a": list(range(len(keys)))}, lower=True)
    text = svg_text(ET.fromstring(chart.svg))
    assert "images, best first" in text and "WER (lower is better)" in text
    assert "0.png" not in text


def test_training_writes_its_loss_curves_to_the_run_folder(tiny_setup, tmp_path):  # noqa: F811
    from polycap.train.trainer import train

    result = train(config_for(tiny_setup, tmp_path / "run", eval_metrics=["bleu"]))
    picture = tmp_path / "run" / charts.CURVES_FILE
    assert picture.is_file() and len(result.history) == 2
    with Image.open(picture) as image:
        assert image.format == "PNG" and image.width > 400 and image.height > 200
    figure = charts.training_curves(result.history)
    text = " ".join(t.get_text() for ax in figure.axes for t in ax.get_legend().get_texts())
    assert "train" in text and "validation" in text and "BLEU-4 (higher is better)" in text
