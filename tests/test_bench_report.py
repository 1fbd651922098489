"""benchmarks/report.py: generated sections replace only their own markers; JSON keeps each
section's latest run with its provenance. No timing."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # benchmarks/ lives beside polycap/, not installed
    sys.path.insert(0, str(ROOT))
report = importlib.import_module("benchmarks.report")
run = importlib.import_module("benchmarks.run")


def test_a_section_replaces_only_the_text_between_its_markers() -> None:
    doc = "# B\n\nprose 1\n<!-- bench:a -->\nold a\n<!-- /bench:a -->\nprose 2\n"
    doc += "<!-- bench:b -->\nold b\n<!-- /bench:b -->\n"
    new = report.replace_section(doc, "a", "| x |\n|---|\n| 1 |")
    assert "old a" not in new and "| 1 |" in new and "old b" in new
    assert new.index("prose 1") < new.index("| 1 |") < new.index("prose 2")
    again = report.replace_section(new, "a", "second")
    assert again.count("<!-- bench:a -->") == 1 and "| 1 |" not in again
    appended = report.replace_section(doc, "c", "c body")
    assert appended.startswith(doc.rstrip("\n")) and appended.endswith("<!-- /bench:c -->\n")


def test_write_records_provenance_in_the_doc_and_the_json(tmp_path: Path) -> None:
    doc, data = tmp_path / "bench.md", tmp_path / "bench.json"
    doc.write_text("# B\n<!-- bench:one -->\n<!-- /bench:one -->\nkept\n", encoding="utf-8")
    report.write([report.Section("one", "body 1", {"x": 1})], "cmd", doc, data)
    report.write([report.Section("two", "body 2", {"y": 2})], "cmd2", doc, data)
    text = doc.read_text(encoding="utf-8")
    assert "body 1" in text and "body 2" in text and "kept" in text
    assert "`cmd`" in text and "commit `" in text and "torch" in text
    stored = json.loads(data.read_text(encoding="utf-8"))
    assert stored["one"]["data"] == {"x": 1} and stored["two"]["data"] == {"y": 2}
    assert stored["one"]["provenance"]["command"] == "cmd"


def test_section_names_and_options() -> None:
    with pytest.raises(ValueError):
        report.Section("Bad Name", "")
    options = run.Options(device="cuda:1", quick=False)
    assert options.section_name("decoding") == "decoding-cuda"
    assert run.Options(quick=True).section_name("decoding") == "decoding-quick"
    assert run.Options(only={"greedy"}).wants("greedy") and not run.Options(only=set()).wants("x")
    assert {"greedy", "beam", "sample", "pipeline", "features", "train", "memory"} <= set(
        run.names(run.modules())
    )


def test_a_section_run_in_part_is_not_written(tmp_path: Path, monkeypatch) -> None:
    import types

    fake = types.ModuleType("benchmarks.fake")
    fake.BENCHMARKS = ("a", "b")
    fake.bench_section = lambda options: report.Section(
        "fake", "ran: " + ",".join(sorted(n for n in fake.BENCHMARKS if options.wants(n)))
    )
    monkeypatch.setattr(run, "modules", lambda: [fake])
    doc = tmp_path / "bench.md"
    out = tmp_path / "out.json"
    common = ["--doc", str(doc), "--json", str(out)]
    assert run.main(["--only", "a", *common]) == 0
    assert not doc.exists()  # part of the section: not written
    assert run.main(["--only", "a", "b", *common]) == 0
    assert "ran: a,b" in doc.read_text(encoding="utf-8")
    assert run.main(["--only", "a", "--write", *common]) == 0  # asked for explicitly
    assert "ran: a\n" in doc.read_text(encoding="utf-8")
    assert run.main(["--only", "nope", *common]) == 2


def test_the_step_cost_bound_of_rows_leaving() -> None:
    """benchmarks/decoding.py's bound: equal steps when no row leaves; with a step cost
    proportional to the rows, the rows x steps ratio; with a flat cost, nothing."""
    decoding = importlib.import_module("benchmarks.decoding")
    lengths = [3, 5, 5, 9]
    linear = {"prefill": 0.0, "steps": {1: 1.0, 2: 2.0, 4: 4.0}}
    assert decoding.cost_bound([6] * 4, linear) == pytest.approx(1.0)
    rows_steps = (4 * (max(lengths) - 1)) / sum(length - 1 for length in lengths)
    assert decoding.cost_bound(lengths, linear) == pytest.approx(rows_steps)
    flat = {"prefill": 5.0, "steps": {1: 2.0, 4: 2.0}}
    assert decoding.cost_bound(lengths, flat) == pytest.approx(1.0)


def test_each_section_states_its_own_load_average(tmp_path: Path) -> None:
    doc, data = tmp_path / "bench.md", tmp_path / "bench.json"
    sections = [
        report.Section("early", "body 1", {"load_average": 0.4}),
        report.Section("late", "body 2", {"load_average": 7.5}),
    ]
    report.write(sections, "cmd", doc, data)
    text = doc.read_text(encoding="utf-8")
    early = text[text.index("<!-- bench:early -->") : text.index("<!-- /bench:early -->")]
    late = text[text.index("<!-- bench:late -->") : text.index("<!-- /bench:late -->")]
    assert "load average 0.4;" in early and "load average 7.5;" in late
    stored = json.loads(data.read_text(encoding="utf-8"))
    assert stored["late"]["provenance"]["load_average"] == 7.5


def test_a_busy_machine_is_warned_about(monkeypatch) -> None:
    machine = importlib.import_module("benchmarks.machine")
    monkeypatch.setattr(machine.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(machine.os, "getloadavg", lambda: (5.0, 4.0, 3.0))
    warning = machine.overloaded()
    assert warning is not None and "5.0 on 2 core(s)" in warning
    monkeypatch.setattr(machine.os, "getloadavg", lambda: (1.5, 1.0, 1.0))
    assert machine.overloaded() is None


def test_the_clustered_bank_is_as_hard_as_clip_search(tmp_path: Path) -> None:
    """Top-1 cosine about 0.3, and IVF with few probes misses (unlike planted duplicates)."""
    import numpy as np

    bank = importlib.import_module("benchmarks.bank")
    plan = bank.Plan(rows=20_000, queries=100, distribution="clustered")
    matrix, queries = bank.make_clustered(plan, tmp_path)
    scores = queries @ np.asarray(matrix).T
    exact = np.argsort(-scores, axis=1)[:, : plan.k]
    top1 = bank.top1_cosine(matrix, queries, exact)
    assert 0.25 < top1 < 0.35
    assert abs(top1 - float(scores.max(axis=1).mean())) < 1e-5
