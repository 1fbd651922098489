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
    # "planted": random rows + k near-duplicates per query; "clustered": CLIP-like clusters,
    # queries from another distribution whose top-1 cosine is about 0.3 (make_clustered)
    distribution: str = "planted"
    nprobes: tuple[int, ...] = ()  # IVF: one build per nprobe (the sweep); () = options'


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
    top1: float | None = None  # the numpy scan's row: mean cosine of each query's best row


CLUSTER_ROWS = 2000  # rows per cluster on average: broad clusters, each over many IVF cells
ROW_NOISE, QUERY_NOISE = 1.5, 3.0  # noise norms around a unit cluster centre


def make_clustered(plan: Plan, folder: Path) -> tuple[Any, Any]:
    """(memory-mapped unit rows, queries) shaped like CLIP image-to-caption search: rows lie
    in broad clusters (a unit centre plus noise of norm 1.5: cosine about 0.55 to their
    centre; IVF cuts each cluster into many cells);
    each query is a cluster's centre plus noise of norm 3, so it is far from every row (the
    modality gap): its best row has cosine about 0.3 and many rows come close to that, which
    is what makes approximate search miss."""
    import numpy as np

    rng = np.random.default_rng(plan.seed)
    clusters = max(1, plan.rows // CLUSTER_ROWS)
    centres = rng.standard_normal((clusters, plan.dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    matrix = np.lib.format.open_memmap(
        folder / "bank.npy", mode="w+", dtype=np.float32, shape=(plan.rows, plan.dim)
    )
    scale = np.float32(1 / np.sqrt(plan.dim))
    for start in range(0, plan.rows, 65536):
        n = min(65536, plan.rows - start)
        noise = rng.standard_normal((n, plan.dim), dtype=np.float32) * scale * ROW_NOISE
        block = centres[rng.integers(0, clusters, n)] + noise
        matrix[start : start + n] = block / np.linalg.norm(block, axis=1, keepdims=True)
    matrix.flush()
    noise = rng.standard_normal((plan.queries, plan.dim), dtype=np.float32) * scale
    queries = centres[rng.integers(0, clusters, plan.queries)] + QUERY_NOISE * noise
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return np.load(folder / "bank.npy", mmap_mode="r"), queries


def make_bank(plan: Plan, folder: Path) -> tuple[Any, Any]:
    """(memory-mapped [rows, dim] float32 unit rows, queries): :func:`make_clustered`, or
    random rows with planted near-duplicates of each query."""
    import numpy as np

    if plan.distribution == "clustered":
        return make_clustered(plan, folder)

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


def variants(plan: Plan) -> list[tuple[str, Plan]]:
    """(index type, the plan with that run's options): one per type, and for IVF one per
    ``plan.nprobes`` value when a sweep is asked for."""
    import dataclasses

    made = []
    for index_type in plan.types:
        if index_type == "ivf" and plan.nprobes:
            for nprobe in plan.nprobes:
                options = {
                    **plan.options,
                    "ivf": {**plan.options.get("ivf", {}), "nprobe": str(nprobe)},
                }
                made.append((index_type, dataclasses.replace(plan, options=options)))
        else:
            made.append((index_type, plan))
    return made


def top1_cosine(matrix: Any, queries: Any, exact: Any) -> float:
    """Mean cosine of each query's best row (rows and queries are unit vectors)."""
    import numpy as np

    best = np.asarray(matrix[np.asarray(exact)[:, 0]])
    return float(np.mean(np.sum(best * queries, axis=1)))


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
        reference.top1 = top1_cosine(matrix, queries, exact)
        rows = [reference]
        for index_type, variant in variants(plan):
            shown = variant.options.get(index_type, {})
            say(f"bank: faiss {index_type} {shown} ({faiss.omp_get_max_threads()} threads)")
            row, ids = measure(FaissBackend(), index_type, matrix, queries, variant, work)
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
        r.backend + (f" (nprobe={r.options['nprobe']})" if "nprobe" in r.options else "")
        for r in rows[1:]
        if r.recall >= GOAL_RECALL and r.query_s > 0 and scan / r.query_s >= GOAL_SPEEDUP
    ]
    goal = f"recall@k >= {GOAL_RECALL} and >= {GOAL_SPEEDUP:.0f}x faster than the numpy scan"
    line = f"Goal ({goal}): met by {', '.join(met)}." if met else f"Goal ({goal}): not met."
    return line + chosen(rows)


def chosen(rows: Sequence[Row]) -> str:
    """The IVF setting an nprobe sweep recommends: the fewest cells probed that reach the
    recall goal, with its speed-up over the scan."""
    scan = rows[0].query_s
    ivf = [r for r in rows[1:] if r.backend == "faiss ivf" and "nprobe" in r.options]
    if len(ivf) < 2:
        return ""
    good = [r for r in ivf if r.recall >= GOAL_RECALL]
    if not good:
        best = max(ivf, key=lambda r: r.recall)
        return (
            f" No nprobe swept reaches recall@k {GOAL_RECALL} (best {best.recall:.3f} at "
            f"nprobe={best.options['nprobe']})."
        )
    pick = min(good, key=lambda r: int(r.options["nprobe"]))
    return (
        f" Chosen IVF setting: nlist={pick.options.get('nlist')}, "
        f"nprobe={pick.options['nprobe']} (the fewest probes reaching recall@k "
        f"{GOAL_RECALL}): recall {pick.recall:.3f}, {scan / pick.query_s:.0f}x the scan."
    )


def markdown(plan: Plan, rows: Sequence[Row]) -> str:
    """The table as Markdown, with what was measured."""
    if plan.distribution == "clustered":
        shape = (
            f"in clusters of about {CLUSTER_ROWS:,} (cosine about 0.55 to their centre); queries "
            "from another distribution, as CLIP's caption embeddings are from its image "
            f"embeddings: mean top-1 cosine {rows[0].top1:.2f}"
        )
    else:
        shape = f"random, with {plan.k} planted near-duplicates per query"
    lines = [
        f"Bank of {plan.rows:,} x {plan.dim} float32 unit rows ({shape}), "
        f"{plan.queries:,} queries, top-{plan.k}; "
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
    Plan(
        rows=200_000,
        types=("ivf",),
        options={"ivf": {"nlist": "2000", "train_rows": "80000"}},
        distribution="clustered",
        nprobes=(5, 16, 32, 64, 128, 256),
    ),
    Plan(
        rows=FULL_ROWS,
        types=("ivf",),
        options={"ivf": {"nlist": "2000", "train_rows": "80000"}},
        distribution="clustered",
        nprobes=(32, 64, 128, 256),
    ),
)
QUICK_CLUSTERED = Plan(
    rows=QUICK_ROWS,
    queries=200,
    types=("ivf",),
    options={"ivf": {"nlist": "200", "train_rows": "20000"}},
    distribution="clustered",
    nprobes=(4, 16, 64),
)


def bench_section(options: Any) -> Any:
    """``make bench``'s hook: the tables of :data:`BENCH_PLANS` (20,000 rows with ``--quick``)."""
    from benchmarks.report import Section

    quick = [Plan(rows=QUICK_ROWS, options=BENCH_OPTIONS), QUICK_CLUSTERED]
    plans = quick if options.quick else BENCH_PLANS
    sections = []
    for plan in plans:
        rows = run(plan, options.say)
        data = {"plan": plan.__dict__, "rows": [row.__dict__ for row in rows]}
        sections.append(Section(section_name(options, plan), markdown(plan, rows), data))
    return sections


def section_name(options: Any, plan: Plan) -> str:
    base = "bank" if plan.rows == FULL_ROWS else f"bank-{plan.rows}"
    if plan.distribution != "planted":
        base += f"-{plan.distribution}"
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
    parser.add_argument(
        "--distribution",
        choices=("planted", "clustered"),
        default="planted",
        help="planted near-duplicates (default) or CLIP-like clusters (top-1 cosine ~0.3)",
    )
    parser.add_argument(
        "--nprobes", default="", help="IVF: comma-separated nprobe values to sweep, e.g. 16,64"
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
        distribution=args.distribution,
        nprobes=tuple(int(n) for n in args.nprobes.split(",") if n),
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
