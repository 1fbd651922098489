"""Bank search at scale: polycap's numpy scan against each FAISS index type, side by side.

``python -m benchmarks.bank`` (``--rows 20000`` for a quick run; ``--write`` puts the table
into docs/benchmarks.md, as ``make bench`` does through :func:`bench_section` for the plans
in :data:`BENCH_PLANS`). The bank is
``rows`` random unit vectors of ``dim`` dimensions (float32, memory-mapped from a temporary
file), with planted near-duplicates: for each of ``queries`` random unit queries, ``k`` rows
are replaced by the query plus noise (cosine about 0.99 down to 0.96), so every query has one
known exact answer. Each backend is run through polycap's own code (``NumpyBackend`` /
``polycap_faiss.FaissBackend``: ``build`` then ``open(...).search``): build time, the time to
answer all queries, memory (peak RSS growth while building, and the index file), and
recall@k against the numpy scan's exact answer. Timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCHMARKS = ("bank",)
ORDER = 80
FULL_ROWS = 1_000_000
QUICK_ROWS = 20_000
TYPES = ("flat", "ivf", "hnsw")
GOAL_RECALL = 0.95
GOAL_SPEEDUP = 50.0


@dataclass
class Plan:
    """The bank and the query set."""

    rows: int = FULL_ROWS
    dim: int = 512
    queries: int = 1000
    k: int = 5
    types: tuple[str, ...] = TYPES
    options: dict[str, dict[str, str]] = field(default_factory=dict)  # per index type
    seed: int = 0


@dataclass
class Row:
    """One backend's measurements."""

    backend: str
    build_s: float
    query_s: float
    build_peak_mb: float
    index_mb: float
    recall: float
    options: dict[str, Any]


def make_bank(plan: Plan, folder: Path) -> tuple[Any, Any]:
    """(memory-mapped [rows, dim] float32 unit rows with planted near-duplicates, queries)."""
    import numpy as np

    rng = np.random.default_rng(plan.seed)
    matrix = np.lib.format.open_memmap(
        folder / "bank.npy", mode="w+", dtype=np.float32, shape=(plan.rows, plan.dim)
    )
    for start in range(0, plan.rows, 65536):
        block = rng.standard_normal((min(65536, plan.rows - start), plan.dim), dtype=np.float32)
        matrix[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    queries = rng.standard_normal((plan.queries, plan.dim), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    planted = rng.choice(plan.rows, size=(plan.queries, plan.k), replace=False)
    for query, rows in zip(queries, planted, strict=True):
        for rank, row in enumerate(sorted(rows)):
            noise = rng.standard_normal(plan.dim, dtype=np.float32) / np.sqrt(plan.dim)
            near = query + (0.15 + 0.025 * rank) * noise
            matrix[row] = near / np.linalg.norm(near)
    matrix.flush()
    return np.load(folder / "bank.npy", mmap_mode="r"), queries


def measure(backend: Any, index_type: str, matrix: Any, queries: Any, plan: Plan, work: Path):
    """(Row without recall, ids) for one backend and index type."""
    from benchmarks.memory import reset_peak, status_kb
    from polycap.retrieval.search import DEFAULT_CHUNK

    folder = work / f"{backend.name}-{index_type}"
    folder.mkdir()
    options = plan.options.get(index_type, {}) if backend.name != "numpy" else {}
    exact_peak = reset_peak()
    before = status_kb("VmRSS")
    started = time.perf_counter()
    record = backend.build(matrix, folder, "bank", index_type, options)
    build_s = time.perf_counter() - started
    peak_mb = (status_kb("VmHWM") - before) / 1024 if exact_peak else float("nan")
    searcher = backend.open(folder, "bank", record, matrix)
    started = time.perf_counter()
    _, ids = searcher.search(queries, plan.k, DEFAULT_CHUNK)
    query_s = time.perf_counter() - started
    index_mb = sum(p.stat().st_size for p in folder.iterdir()) / 1e6
    if backend.name == "numpy":
        index_mb = matrix.nbytes / 1e6  # the scan reads the bank matrix itself
    label = "numpy scan" if backend.name == "numpy" else f"faiss {index_type}"
    row = Row(label, build_s, query_s, peak_mb, index_mb, 1.0, record.get("options", {}))
    del searcher
    shutil.rmtree(folder, ignore_errors=True)
    return row, ids


def recall_at_k(found: Any, exact: Any) -> float:
    """Mean over queries of |found ∩ exact| / k."""
    k = exact.shape[1]
    return float(sum(len(set(a) & set(b)) for a, b in zip(found, exact, strict=True))) / (
        k * len(exact)
    )


def run(plan: Plan, say: Any = print) -> list[Row]:
    """Build, query and score every backend on one bank; the numpy scan first (the exact
    answer every other is scored against)."""
    import faiss
    from polycap_faiss import FaissBackend

    from polycap.retrieval.backends import NumpyBackend

    work = Path(tempfile.mkdtemp(prefix="polycap-bank-bench-"))
    try:
        say(f"bank: {plan.rows} x {plan.dim} rows, {plan.queries} queries, top-{plan.k}")
        matrix, queries = make_bank(plan, work)
        say("bank: numpy scan (the exact answer)")
        reference, exact = measure(NumpyBackend(), "flat", matrix, queries, plan, work)
        rows = [reference]
        for index_type in plan.types:
            say(f"bank: faiss {index_type} ({faiss.omp_get_max_threads()} threads)")
            row, ids = measure(FaissBackend(), index_type, matrix, queries, plan, work)
            row.recall = recall_at_k(ids, exact)
            rows.append(row)
        return rows
    finally:
        shutil.rmtree(work, ignore_errors=True)


def table_rows(rows: Sequence[Row]) -> list[list[str]]:
    """Cells: backend, options, build, query, speed-up, build peak, index, recall."""
    scan = rows[0].query_s
    cells = []
    for row in rows:
        options = ", ".join(f"{k}={v}" for k, v in row.options.items()) or "-"
        cells.append(
            [
                row.backend,
                options,
                f"{row.build_s:.1f} s",
                f"{row.query_s:.2f} s",
                f"{scan / row.query_s:.0f}x" if row.query_s > 0 else "-",
                f"{row.build_peak_mb:.0f} MB",
                f"{row.index_mb:.0f} MB",
                f"{row.recall:.3f}",
            ]
        )
    return cells


HEADER = [
    "backend",
    "options",
    "build",
    "queries",
    "vs scan",
    "build peak RSS",
    "index",
    "recall@k",
]


def verdict(rows: Sequence[Row]) -> str:
    """Which index types meet the goal (recall >= 0.95 and >= 50x the numpy scan's speed)."""
    scan = rows[0].query_s
    met = [
        r.backend
        for r in rows[1:]
        if r.recall >= GOAL_RECALL and r.query_s > 0 and scan / r.query_s >= GOAL_SPEEDUP
    ]
    goal = f"recall@k >= {GOAL_RECALL} and >= {GOAL_SPEEDUP:.0f}x faster than the numpy scan"
    return f"Goal ({goal}): met by {', '.join(met)}." if met else f"Goal ({goal}): not met."


def markdown(plan: Plan, rows: Sequence[Row]) -> str:
    """The table as Markdown, with what was measured."""
    lines = [
        f"Bank of {plan.rows:,} x {plan.dim} float32 unit rows (random, with {plan.k} planted "
        f"near-duplicates per query), {plan.queries:,} queries, top-{plan.k}; "
        "'queries' is the time to answer all of them in one call, 'build peak RSS' the "
        "process's peak resident growth while building, 'index' the index files (numpy: the "
        "bank matrix it scans). Recall is against the numpy scan's exact answer.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(rows)]
    lines += ["", verdict(rows)]
    return "\n".join(lines)


# what ``make bench`` runs: 1M rows with IVF (FAISS's flat search, exact like the scan, and
# the HNSW build take far longer than the scan on a 2-core machine), then 100k rows with all
# three index types
BENCH_OPTIONS = {"ivf": {"nprobe": "4", "train_rows": "32000"}, "hnsw": {"m": "16"}}
BENCH_PLANS = (
    Plan(
        rows=FULL_ROWS,
        types=("ivf",),
        options={"ivf": {"nlist": "2000", "nprobe": "5", "train_rows": "80000"}},
    ),
    Plan(rows=100_000, types=TYPES, options=BENCH_OPTIONS),
)


def bench_section(options: Any) -> Any:
    """``make bench``'s hook: the tables of :data:`BENCH_PLANS` (20,000 rows with ``--quick``)."""
    from benchmarks.report import Section

    plans = [Plan(rows=QUICK_ROWS, options=BENCH_OPTIONS)] if options.quick else BENCH_PLANS
    sections = []
    for plan in plans:
        rows = run(plan, options.say)
        data = {"plan": plan.__dict__, "rows": [row.__dict__ for row in rows]}
        sections.append(Section(section_name(options, plan), markdown(plan, rows), data))
    return sections


def section_name(options: Any, plan: Plan) -> str:
    base = "bank" if plan.rows == FULL_ROWS else f"bank-{plan.rows}"
    return options.section_name(base) if options is not None else base


def parse_options(values: Sequence[str]) -> dict[str, dict[str, str]]:
    """``["ivf:nprobe=32,nlist=1000", "hnsw:m=16"]`` -> per-type option dicts."""
    from polycap.retrieval.backends import parse_options as parse

    options: dict[str, dict[str, str]] = {}
    for value in values:
        index_type, _, text = value.partition(":")
        options[index_type] = parse(text)
    return options


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bank", description=__doc__)
    parser.add_argument("--rows", type=int, default=FULL_ROWS)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--types", default=",".join(TYPES), help="faiss index types to run")
    parser.add_argument(
        "--index-options",
        action="append",
        default=[],
        metavar="TYPE:K=V,...",
        help="per-type faiss options, e.g. ivf:nprobe=32 (repeatable)",
    )
    parser.add_argument("--write", action="store_true", help="write into docs/benchmarks.md")
    args = parser.parse_args(argv)
    plan = Plan(
        rows=args.rows,
        dim=args.dim,
        queries=args.queries,
        k=args.k,
        types=tuple(t for t in args.types.split(",") if t),
        options=parse_options(args.index_options),
    )
    rows = run(plan, say=lambda message: print(time.strftime("%H:%M:%S"), message, flush=True))
    text = markdown(plan, rows)
    print(text)
    if args.write:
        from benchmarks import report

        data = {"plan": plan.__dict__, "rows": [r.__dict__ for r in rows]}
        section = report.Section(section_name(None, plan), text, data)
        command = "python -m benchmarks.bank " + " ".join(
            argv if argv is not None else sys.argv[1:]
        )
        report.write([section], command.strip())
        print(f"wrote section {section.name} into {report.DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
