"""The FAISS index backend: build an index over a bank matrix, save it beside it, search it.

Rows are L2-normalised, so inner product is cosine similarity; every index uses
``METRIC_INNER_PRODUCT``. Index types and their options (``--index-options k=v,...``):

- ``flat``: ``IndexFlatIP``, exact (the same neighbours as the numpy scan); no options.
- ``ivf``: ``IndexIVFFlat`` over ``nlist`` k-means cells (default ``sqrt(rows)``), trained
  on at most ``train_rows`` rows (default ``64 * nlist``) sampled with a fixed seed; a query
  visits ``nprobe`` cells (default 16).
- ``hnsw``: ``IndexHNSWFlat`` with ``m`` links per node (default 32), ``ef_construction``
  (default 40) and ``ef_search`` (default 64).

The matrix is added in blocks of 65,536 rows (float16 banks converted block by block). The
record returned by :meth:`FaissBackend.build` (stored in the bank's ``meta.json``) holds the
index file, the options used and the FAISS version.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polycap.errors import BadInput

BLOCK = 65536
OPTIONS = {
    "flat": {},
    "ivf": {"nlist": None, "nprobe": 16, "train_rows": None},
    "hnsw": {"m": 32, "ef_construction": 40, "ef_search": 64},
}
SEARCH_OPTIONS = {"nprobe", "ef_search"}


def resolve_options(index_type: str, given: Mapping[str, str], rows: int) -> dict[str, int]:
    """The options of ``index_type`` as integers, defaults filled in for ``rows`` rows."""
    allowed = OPTIONS[index_type]
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        known = ", ".join(allowed) or "none"
        raise BadInput(
            f"--index-options: faiss {index_type} has no {unknown[0]!r} (it takes {known})"
        )
    options: dict[str, int] = {}
    for key, default in allowed.items():
        if key in given:
            try:
                options[key] = int(given[key])
            except ValueError:
                raise BadInput(
                    f"--index-options: {key}={given[key]!r} is not a whole number"
                ) from None
            if options[key] < 1:
                raise BadInput(f"--index-options: {key} must be at least 1")
        elif default is not None:
            options[key] = default
    if index_type == "ivf":
        options.setdefault("nlist", max(1, min(int(math.sqrt(rows)), rows)))
        if options["nlist"] > rows:
            raise BadInput(f"--index-options: nlist={options['nlist']} exceeds the {rows} rows")
        options.setdefault("train_rows", 64 * options["nlist"])
        options["nprobe"] = min(options["nprobe"], options["nlist"])
    return options


def _blocks(matrix: Any, size: int = BLOCK) -> Any:
    import numpy as np

    for start in range(0, matrix.shape[0], size):
        yield np.ascontiguousarray(matrix[start : start + size], dtype=np.float32)


def new_index(index_type: str, dim: int, options: Mapping[str, int]) -> Any:
    """An empty FAISS index of this type (inner product)."""
    import faiss

    if index_type == "flat":
        return faiss.IndexFlatIP(dim)
    if index_type == "ivf":
        quantizer = faiss.IndexFlatIP(dim)
        # faiss's Python wrapper keeps the quantizer alive as long as the index
        return faiss.IndexIVFFlat(quantizer, dim, options["nlist"], faiss.METRIC_INNER_PRODUCT)
    index = faiss.IndexHNSWFlat(dim, options["m"], faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = options["ef_construction"]
    return index


def training_sample(matrix: Any, count: int, seed: int = 0) -> Any:
    """``count`` rows of ``matrix`` (all when fewer), sampled without replacement, sorted."""
    import numpy as np

    rows = matrix.shape[0]
    if count >= rows:
        return np.ascontiguousarray(matrix[:], dtype=np.float32)
    chosen = np.sort(np.random.default_rng(seed).choice(rows, size=count, replace=False))
    return np.ascontiguousarray(matrix[chosen], dtype=np.float32)


def apply_search_options(index: Any, index_type: str, options: Mapping[str, int]) -> None:
    """Set the query-time knobs (``nprobe``, ``efSearch``) on an opened index."""
    if index_type == "ivf":
        index.nprobe = int(options["nprobe"])
    elif index_type == "hnsw":
        index.hnsw.efSearch = int(options["ef_search"])


@dataclass
class FaissSearcher:
    """An opened FAISS index: ``search`` returns FAISS's answer (ids -1 where an IVF search
    found fewer than k rows)."""

    index: Any

    def search(self, queries: Any, k: int, chunk_size: int = 0) -> tuple[Any, Any]:
        import numpy as np

        if k < 1:
            raise BadInput(f"k must be at least 1, got {k}")
        if queries.shape[1] != self.index.d:
            raise BadInput(
                f"query embeddings have {queries.shape[1]} dimensions, the bank {self.index.d}: "
                "was it built with another encoder?"
            )
        keep = min(k, int(self.index.ntotal))
        scores, ids = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), keep)
        return scores, ids.astype(np.int64)


class FaissBackend:
    """``register_index_backends`` item: see the module docstring."""

    name = "faiss"
    index_types = ("flat", "ivf", "hnsw")

    def build(
        self, matrix: Any, folder: Path, kind: str, index_type: str, options: Mapping[str, str]
    ) -> dict[str, Any]:
        import faiss

        rows, dim = int(matrix.shape[0]), int(matrix.shape[1])
        resolved = resolve_options(index_type, options, rows)
        index = new_index(index_type, dim, resolved)
        if index_type == "ivf":
            index.train(training_sample(matrix, resolved["train_rows"]))
        for block in _blocks(matrix):
            index.add(block)
        name = f"{kind}.faiss"
        faiss.write_index(index, str(Path(folder) / name))
        return {
            "index_type": index_type,
            "file": name,
            "options": resolved,
            "rows": rows,
            "faiss_version": faiss.__version__,
        }

    def open(
        self, folder: Path, kind: str, record: Mapping[str, Any], matrix: Any
    ) -> FaissSearcher:
        import faiss

        path = Path(folder) / str(record.get("file", f"{kind}.faiss"))
        if not path.is_file():
            raise BadInput(f"{folder}: bank is incomplete ({path.name} is missing)")
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else "unreadable"
            raise BadInput(f"{path}: not a readable FAISS index ({first[:200]})") from None
        if int(index.ntotal) != int(matrix.shape[0]):
            raise BadInput(f"{path}: holds {index.ntotal} rows, the bank {matrix.shape[0]}")
        apply_search_options(index, str(record["index_type"]), record.get("options", {}))
        return FaissSearcher(index)
