"""Retrieval captioning: nearest captions (text mode) or nearest images' captions (image mode).

Text mode ranks the bank's caption embeddings by cosine similarity to the image embedding
(needs an encoder with an aligned text tower). Image mode ranks the bank's images and returns
their captions; with ``consensus`` it takes the captions of the ``neighbours`` nearest images
and re-ranks them by how much each agrees with the others (Devlin et al., 2015): the mean,
over the other neighbour captions (counted with multiplicity), of the n-gram F1 (n = 1, 2,
averaged) on the language pack's evaluation tokens.

Search reads the memory-mapped matrices ``chunk_size`` rows at a time and keeps a running
top-k. Dot products are taken in float64 (BLAS sums in an order that depends on the block
shape; in float64 that noise is far below float32 resolution) and ties are broken by the lower
row id, so the answer does not depend on the chunk size.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from polycap.errors import BadInput

if TYPE_CHECKING:
    from polycap.language import LanguagePack

MODES = ("text", "image")
DEFAULT_CHUNK = 16384
DEFAULT_NEIGHBOURS = 10
QUERY_BATCH = 256  # queries scored against one chunk at a time


@dataclass
class Retrieved:
    """One retrieved caption: its text, score, caption id and, in image mode, the neighbour
    image it came from (the nearest one that has it)."""

    caption: str
    score: float
    caption_id: int
    image: str | None = None


@dataclass
class RetrievalOptions:
    """How to retrieve: ``mode`` image (kNN images' captions) or text; ``k`` captions kept;
    ``consensus`` re-ranking over ``neighbours`` images; bank rows per search chunk."""

    mode: str = "image"
    k: int = 5
    consensus: bool = False
    neighbours: int | None = None
    chunk_size: int | None = None

    def settings(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "k": self.k,
            "consensus": self.consensus,
            "neighbours": self.neighbours,
        }

    def search(self, bank: Any, features: Any, pack: LanguagePack | None = None) -> Any:
        """:func:`retrieve` with these options: top-``k`` captions per row of ``features``."""
        chunk = self.chunk_size or DEFAULT_CHUNK
        return retrieve(
            bank, features, self.mode, self.k, self.consensus, self.neighbours, chunk, pack
        )


@dataclass
class RetrievedImages:
    """Results per readable query image, the unreadable ones, and the time spent searching."""

    paths: list[Path]
    results: list[list[Retrieved]]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    search_seconds: float = 0.0


def normalise_queries(features: Any) -> Any:
    """Query features (torch or numpy, [B, D]) as L2-normalised float32 numpy rows."""
    import numpy as np

    if hasattr(features, "detach"):
        features = features.detach().cpu().float().numpy()
    array = np.asarray(features, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"query features must be [B, D], got shape {array.shape}")
    return array / np.maximum(np.linalg.norm(array, axis=1, keepdims=True), 1e-12)


def top_k(matrix: Any, queries: Any, k: int, chunk_size: int = DEFAULT_CHUNK) -> tuple[Any, Any]:
    """(scores [B, k'], ids [B, k']) of the rows of ``matrix`` with the largest dot product with
    each query, best first, k' = min(k, rows); ``matrix`` is read ``chunk_size`` rows at a time."""
    import numpy as np

    if k < 1:
        raise BadInput(f"k must be at least 1, got {k}")
    if chunk_size < 1:
        raise BadInput(f"chunk size must be at least 1, got {chunk_size}")
    rows = int(matrix.shape[0])
    if rows == 0:
        raise BadInput("the bank is empty")
    if queries.shape[1] != matrix.shape[1]:
        raise BadInput(
            f"query embeddings have {queries.shape[1]} dimensions, the bank {matrix.shape[1]}: "
            "was it built with another encoder?"
        )
    keep = min(k, rows)
    queries = np.asarray(queries, dtype=np.float64)
    starts = range(0, queries.shape[0], QUERY_BATCH)
    best = [  # running (scores, ids) per batch of queries, [batch, <= keep]
        (np.empty((len(queries[i : i + QUERY_BATCH]), 0)), np.empty((0, 0), np.int64))
        for i in starts
    ]
    for start in range(0, rows, chunk_size):  # each chunk is read once for all queries
        block = np.asarray(matrix[start : start + chunk_size], dtype=np.float64)
        ids = np.arange(start, start + block.shape[0], dtype=np.int64)
        for index, first in enumerate(starts):
            scores = queries[first : first + QUERY_BATCH] @ block.T  # bounded: batch x chunk
            best_scores, best_ids = best[index]
            merged_scores = np.concatenate([best_scores, scores], axis=1)
            merged_ids = np.concatenate(
                [best_ids.reshape(len(scores), -1), np.broadcast_to(ids, scores.shape)], axis=1
            )
            best[index] = _select(merged_scores, merged_ids, keep)
    scores_out = np.concatenate([s for s, _ in best]) if best else np.empty((0, keep))
    ids_out = np.concatenate([i for _, i in best]) if best else np.empty((0, keep), np.int64)
    return scores_out.astype(np.float32), ids_out


def _select(scores: Any, ids: Any, keep: int) -> tuple[Any, Any]:
    """Per row, the ``keep`` best (score desc, id asc), ties resolved exactly."""
    import numpy as np

    width = scores.shape[1]
    keep = min(keep, width)
    out_scores = np.empty((scores.shape[0], keep), dtype=np.float64)
    out_ids = np.empty((scores.shape[0], keep), dtype=np.int64)
    for row in range(scores.shape[0]):
        values, labels = scores[row], ids[row]
        if width > keep:
            threshold = np.partition(values, width - keep)[width - keep]
            candidates = np.nonzero(values >= threshold)[0]  # every tie at the threshold
            values, labels = values[candidates], labels[candidates]
        order = np.lexsort((labels, -values))[:keep]
        out_scores[row], out_ids[row] = values[order], labels[order]
    return out_scores, out_ids


# -- consensus -------------------------------------------------------------------------------------


def _ngrams(tokens: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def ngram_f1(a: Sequence[str], b: Sequence[str], max_n: int = 2) -> float:
    """Mean over n = 1..max_n of the F1 of clipped n-gram overlap between two token lists."""
    total = 0.0
    for n in range(1, max_n + 1):
        left, right = _ngrams(a, n), _ngrams(b, n)
        overlap = sum((left & right).values())
        size = sum(left.values()) + sum(right.values())
        total += 2 * overlap / size if size else 0.0
    return total / max_n


def consensus_order(tokens: Sequence[Sequence[str]]) -> list[float]:
    """For each candidate (with repeats), its mean n-gram F1 against all the other candidates."""
    count = len(tokens)
    if count < 2:
        return [0.0] * count
    scores = []
    for i, mine in enumerate(tokens):
        scores.append(
            sum(ngram_f1(mine, other) for j, other in enumerate(tokens) if j != i) / (count - 1)
        )
    return scores


# -- retrieving ----------------------------------------------------------------------------------


def retrieve(
    bank: Any,
    features: Any,
    mode: str = "text",
    k: int = 5,
    consensus: bool = False,
    neighbours: int | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    pack: LanguagePack | None = None,
) -> list[list[Retrieved]]:
    """Top-``k`` captions for each row of ``features`` (raw image embeddings, [B, D])."""
    if mode not in MODES:
        raise BadInput(f"unknown retrieval mode {mode!r}; choose one of {', '.join(MODES)}")
    if consensus and mode != "image":
        raise BadInput("--consensus re-ranks image neighbours; use it with --mode image")
    queries = normalise_queries(features)
    if mode == "text":
        scores, ids = bank.searcher("text").search(queries, k, chunk_size)
        results = []
        for row_scores, row_ids in zip(scores, ids, strict=True):
            found = row_ids >= 0  # an approximate index may find fewer than k (id -1)
            row_scores, row_ids = row_scores[found], row_ids[found]
            texts = bank.captions(row_ids)
            results.append(
                [
                    Retrieved(t, float(s), int(i))
                    for t, s, i in zip(texts, row_scores, row_ids, strict=True)
                ]
            )
        return results
    near = max(k, neighbours or (DEFAULT_NEIGHBOURS if consensus else k))
    scores, ids = bank.searcher("image").search(queries, near, chunk_size)
    pointer, caption_ids = bank.image_caption_ids()
    neighbour_ids = sorted({int(i) for i in ids.ravel() if i >= 0})  # -1: not found
    name_of = dict(zip(neighbour_ids, bank.image_names(neighbour_ids), strict=True))
    if consensus and pack is None:
        from polycap.plugins import get_registries

        pack = get_registries().languages.get(bank.language)
    results = []
    for row_scores, row_ids in zip(scores, ids, strict=True):
        candidates: list[tuple[int, float, str]] = []  # (caption id, image score, image), repeats
        for score, image in zip(row_scores, row_ids, strict=True):
            if image < 0:
                continue
            for cid in caption_ids[int(pointer[image]) : int(pointer[image + 1])]:
                candidates.append((int(cid), float(score), name_of[int(image)]))
        results.append(_rank_candidates(bank, candidates, k, consensus, pack))
    return results


def _rank_candidates(
    bank: Any, candidates: list[tuple[int, float, str]], k: int, consensus: bool, pack: LanguagePack
) -> list[Retrieved]:
    first: dict[int, tuple[float, str]] = {}
    for cid, score, image in candidates:
        first.setdefault(cid, (score, image))
    unique = list(first)
    texts = dict(zip(unique, bank.captions(unique), strict=True))
    if not consensus:
        chosen = unique[:k]
        return [Retrieved(texts[c], first[c][0], c, first[c][1]) for c in chosen]
    tokens = [pack.eval_tokenize(texts[cid]) for cid, _, _ in candidates]
    agreement = consensus_order(tokens)
    best: dict[int, float] = {}
    for (cid, _, _), value in zip(candidates, agreement, strict=True):
        best[cid] = max(best.get(cid, 0.0), value)
    ranked = sorted(unique, key=lambda c: (-best[c], -first[c][0], c))[:k]
    return [Retrieved(texts[c], best[c], c, first[c][1]) for c in ranked]


@dataclass(frozen=True)
class QueryOptions:
    """How :func:`retrieve_images` encodes its query images: with ``encoder`` (default: the
    bank's, loaded on ``device``), ``batch_size`` at a time, features cached under
    ``cache_dir``, with a ``progress`` bar; ``pack`` re-ranks by consensus (default: the
    bank's language)."""

    encoder: Any = None
    batch_size: int = 64
    device: str = "cpu"
    cache_dir: Path | None = None
    progress: bool = True
    pack: LanguagePack | None = None


def retrieve_images(
    bank: Any,
    paths: Sequence[Path],
    options: RetrievalOptions | None = None,
    query: QueryOptions | None = None,
    **fields: Any,
) -> RetrievedImages:
    """Encode ``paths`` with the bank's encoder (or ``query.encoder``) and retrieve for each
    (``options``: text mode, k 5 by default). ``fields``: :class:`QueryOptions` fields by
    keyword (``batch_size=...``), over ``query``."""
    from polycap.data.encoding import encode_images

    options = options or RetrievalOptions(mode="text")
    query = replace(query or QueryOptions(), **fields)
    encoder = query.encoder
    if encoder is None:
        encoder = bank.load_encoder(device=query.device)
    check_encoder(bank, encoder)
    encoded = encode_images(
        encoder,
        paths,
        batch_size=query.batch_size,
        cache_dir=query.cache_dir,
        progress=query.progress,
    )
    if not encoded.paths:
        return RetrievedImages([], [], encoded.skipped)
    started = time.perf_counter()
    results = options.search(bank, encoded.features, query.pack)
    return RetrievedImages(encoded.paths, results, encoded.skipped, time.perf_counter() - started)


def check_encoder(bank: Any, encoder: Any) -> None:
    """BadInput when ``encoder`` is not the bank's (different size or weights)."""
    recorded = bank.encoder
    if int(encoder.embed_dim) != int(bank.meta["embed_dim"]):
        raise BadInput(
            f"{bank.path}: bank was built with {recorded.get('name')!r} "
            f"({bank.meta['embed_dim']} dims), not {encoder.name!r} ({encoder.embed_dim} dims)"
        )
    key = recorded.get("cache_key")
    if key and encoder.cache_key and key != encoder.cache_key:
        raise BadInput(
            f"{bank.path}: bank was built with encoder {key!r}, not {encoder.cache_key!r}"
        )
