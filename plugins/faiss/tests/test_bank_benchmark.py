"""benchmarks/bank.py on a small bank: every backend runs through polycap's code, the exact
ones find every planted neighbour, and the table is written."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:  # benchmarks/ lives beside polycap/, not installed
    sys.path.insert(0, str(ROOT))
bank = importlib.import_module("benchmarks.bank")
HEADER, Plan, markdown, run = bank.HEADER, bank.Plan, bank.markdown, bank.run


def test_the_bank_benchmark_runs_and_scores_exact_backends_at_one() -> None:
    plan = Plan(rows=3000, dim=32, queries=20, options={"ivf": {"nlist": "16", "nprobe": "16"}})
    rows = run(plan, say=lambda message: None)
    assert [row.backend for row in rows] == ["numpy scan", "faiss flat", "faiss ivf", "faiss hnsw"]
    assert rows[1].recall == 1.0 and rows[2].recall == 1.0  # flat, and ivf visiting every cell
    assert all(row.query_s > 0 and row.index_mb > 0 for row in rows)
    text = markdown(plan, rows)
    assert "| " + " | ".join(HEADER) + " |" in text and "Goal (" in text
