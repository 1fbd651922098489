"""The compare report in a real browser (headless Chromium, as tests/test_serve_page.py): the
charts render as pictures of real size, the directions and verdicts are visible text."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_reports import comparison  # noqa: F401  (the fixture)
from test_serve_page import browser  # noqa: F401  (the fixture)

pytest.importorskip("matplotlib")


def test_the_compare_report_shows_its_charts(browser, comparison, tmp_path: Path) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By

    marks = {"generation": {"img0.png": {"pair": True}, "img1.png": {"pair": False}}}
    report = comparison.write_report(tmp_path / "report.html", marks=marks)
    browser.get(report.as_uri())
    charts = browser.find_elements(By.CSS_SELECTOR, "figure.chart svg")
    assert len(charts) == 2
    for chart in charts:
        assert chart.size["width"] > 300 and chart.size["height"] > 120
        assert chart.is_displayed()
    page = browser.find_element(By.TAG_NAME, "body").text
    assert "WER (lower is better)" in page and "✓ right" in page and "✗ wrong" in page
    thumbnails = browser.find_elements(By.CSS_SELECTOR, ".row img")
    assert len(thumbnails) == 3
    assert all(
        browser.execute_script("return arguments[0].naturalWidth", t) > 0 for t in thumbnails
    )
    shot = os.environ.get("POLYCAP_REPORT_SCREENSHOT")  # to look at it: a path for a PNG
    if shot:
        browser.save_screenshot(shot)
