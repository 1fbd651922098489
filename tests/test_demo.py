"""The embedded demo learns: held-out colour and shape named in the generated captions."""

from __future__ import annotations

import pytest

from polycap.demo.runner import DemoOptions, run_demo


@pytest.mark.slow
@pytest.mark.parametrize("language", ["ja", "en"])
def test_demo_pipeline_learns_colour_and_shape(language, tmp_path):
    result = run_demo(
        DemoOptions(language=language, workdir=tmp_path, progress=False, compare=False)
    )
    scores = result.scores
    assert scores["n"] >= 100
    assert scores["colour_accuracy"] >= 0.95, scores
    assert scores["shape_accuracy"] >= 0.70, scores
    assert result.unseen_scores is not None and result.unseen_scores["n"] > 0
    report = result.report.read_text(encoding="utf-8")
    assert report.count("<img") == len(result.captions)
    some_caption = next(iter(result.captions.values()))
    assert some_caption and some_caption in report
