"""The feature store: image features streamed to disk in chunks, read back by rows.

A store is a folder::

    meta.json       format, version, the encoder's identity, dim, rows, counts, processes
    features.f32    [rows, dim] float32, little-endian, row-major, no header:
                    ``np.memmap(path, "<f4", "r", shape=(rows, dim))`` maps it
    images.txt      row i's image path, one per line (+ images.offsets.npy)
    skipped.tsv     image <TAB> reason, one line per unreadable image

:func:`encode_to_store` encodes the images chunk by chunk (through :func:`encode_images` and
its per-image cache) and appends each chunk's rows to ``features.f32`` as it finishes: the
features of a run are never one tensor in memory. Under ``accelerate launch`` / ``torchrun``
each process encodes its share of every chunk (Accelerate's ``split_between_processes``); the
shares are gathered (Accelerate's ``gather_object``) and one process per machine appends them
in input order, so each image is encoded exactly once and the store equals a one-process
run's. The folder is built beside ``out`` and renamed into place when complete. Nor is the
image list copied: duplicates are found by sorting 16-byte path hashes, and the unique images
are kept as positions into the caller's list (8 bytes each).

:class:`Features` reads rows with ``os.pread`` (a batch costs its rows, not the file; nothing
stays mapped into the process), blocks for sequential passes, or the whole matrix as a
read-only memmap for libraries that want one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from polycap.errors import BadInput
from polycap.util.atomic import remove_leftovers, swap_into_place, temporary_folder
from polycap.util.files import LineFile, LineWriter, read_meta
from polycap.util.run_lock import writing

if TYPE_CHECKING:
    import numpy as np
    import torch

    from polycap.parts import ImageEncoder
    from polycap.util.distributed import Processes

STORE_FORMAT = "polycap-features"
STORE_VERSION = 1
META = "meta.json"
MATRIX = "features.f32"
IMAGES = "images.txt"
SKIPPED = "skipped.tsv"
DEFAULT_CHUNK = 1024  # images per process per round: features of one round stay in memory
# rows per block of a sequential pass: 4 MB of 512-dim rows, so that a pass's copies (the
# statistics pass takes float64 ones) stay small; 8,192 rows peaked at 200-270 MB in training
BLOCK_ROWS = 2048
ROW_DTYPE = "<f4"


def images_digest(paths: Iterable[str | Path]) -> str:
    """sha256 of the image list (as given, in order): tells whether a store is for these."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(os.fspath(path).encode("utf-8", "surrogateescape") + b"\n")
    return digest.hexdigest()


class Features:
    """An opened feature store: ``len(store)`` rows of ``store.dim`` float32 features.

    ``store[i]`` is one row, ``store[rows]`` (ints, numpy or torch indices, a slice) a
    ``torch.Tensor [len(rows), dim]`` read from disk.
    """

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path = Path(path)
        self.meta = meta
        self.dim = int(meta["dim"])
        self.rows = int(meta["rows"])
        self._row_bytes = 4 * self.dim
        self._fd: int | None = None

    @classmethod
    def open(cls, path: str | Path) -> Features:
        """Open a store folder; BadInput if it is not one or is damaged."""
        path = Path(path)
        meta_file = path / META
        if not meta_file.is_file():
            raise BadInput(f"{path}: not a feature store (no {META}; 'polycap encode --output')")
        meta = read_meta(meta_file, "feature store", STORE_FORMAT, STORE_VERSION)
        store = cls(path, meta)
        expected = store.rows * store._row_bytes
        matrix = path / MATRIX
        if not matrix.is_file() or matrix.stat().st_size != expected:
            raise BadInput(f"{matrix}: feature store is damaged (expected {expected} bytes)")
        if not (path / IMAGES).is_file():
            raise BadInput(f"{path}: feature store is incomplete ({IMAGES} is missing)")
        return store

    # -- identity
    @property
    def encoder(self) -> dict[str, Any]:
        """The encoder's record (``EncoderSpec.to_json()``) as written with the store."""
        return dict(self.meta["encoder"])

    def matches(self, encoder: ImageEncoder, digest: str) -> bool:
        """True when this store holds ``encoder``'s features of the image list ``digest``
        (never for an encoder without a cache key: random weights differ between runs)."""
        key = self.meta["encoder"].get("cache_key")
        return key is not None and key == encoder.cache_key and self.meta["images_digest"] == digest

    # -- rows
    def __len__(self) -> int:
        return self.rows

    def paths(self) -> list[Path]:
        """Row i's image path, for every row."""
        return [Path(line) for line in LineFile(self.path / IMAGES)]

    def skipped(self) -> list[tuple[Path, str]]:
        """(image, reason) of each image that could not be read."""
        skipped_file = self.path / SKIPPED
        if not skipped_file.is_file():
            return []
        result = []
        for line in skipped_file.read_text(encoding="utf-8").splitlines():
            image, _, reason = line.partition("\t")
            result.append((Path(image), reason))
        return result

    def __getitem__(self, index: Any) -> torch.Tensor:
        import numpy as np
        import torch

        if isinstance(index, int | np.integer):
            return torch.from_numpy(self.take(np.asarray([int(index)]))[0])
        if isinstance(index, slice):
            start, stop, step = index.indices(self.rows)
            if step == 1:
                return torch.from_numpy(self.read(start, stop))
            index = range(start, stop, step)
        if isinstance(index, torch.Tensor):
            index = index.detach().cpu().numpy()
        return torch.from_numpy(self.take(np.asarray(index, dtype=np.int64).reshape(-1)))

    def take(self, ids: np.ndarray) -> np.ndarray:
        """The rows ``ids`` (any order, repeats allowed) as float32 ``[len(ids), dim]``."""
        import numpy as np

        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < -self.rows or ids.max() >= self.rows):
            raise IndexError(f"row index out of range for a store of {self.rows} rows")
        ids = np.where(ids < 0, ids + self.rows, ids)
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        if not len(ids):
            return out
        order = np.argsort(ids, kind="stable")
        ordered = ids[order]
        breaks = np.nonzero(np.diff(ordered) != 1)[0] + 1  # runs of consecutive rows
        for positions in np.split(np.arange(len(ids)), breaks):
            first = int(ordered[positions[0]])
            out[order[positions]] = self.read(first, first + len(positions))
        return out

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as float32 ``[stop - start, dim]`` (one read)."""
        import numpy as np

        start, stop = max(0, start), min(self.rows, stop)
        if stop <= start:
            return np.empty((0, self.dim), dtype=np.float32)
        if self._fd is None:
            self._fd = os.open(self.path / MATRIX, os.O_RDONLY)
        size = (stop - start) * self._row_bytes
        data = os.pread(self._fd, size, start * self._row_bytes)
        if len(data) != size:
            raise BadInput(f"{self.path / MATRIX}: feature store is truncated")
        return np.frombuffer(data, dtype=ROW_DTYPE).astype(np.float32).reshape(-1, self.dim)

    def blocks(self, size: int = BLOCK_ROWS, rows: Sequence[int] | None = None) -> Iterator[Any]:
        """``torch.Tensor`` blocks of at most ``size`` rows: all rows in order, or ``rows``."""
        import numpy as np
        import torch

        if rows is None:
            for start in range(0, self.rows, size):
                yield torch.from_numpy(self.read(start, start + size))
            return
        ids = np.asarray(rows, dtype=np.int64)
        for start in range(0, len(ids), size):
            yield torch.from_numpy(self.take(ids[start : start + size]))

    def matrix(self) -> np.memmap:
        """The whole ``[rows, dim]`` matrix, memory-mapped read-only."""
        import numpy as np

        return np.memmap(self.path / MATRIX, ROW_DTYPE, "r", shape=(self.rows, self.dim))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers open their own descriptor
        return {**self.__dict__, "_fd": None}

    def __repr__(self) -> str:
        return f"<Features {self.path} rows={self.rows} dim={self.dim}>"


# -- writing ----------------------------------------------------------------------------------


@dataclass
class EncodeStats:
    """What :func:`encode_to_store` did (over all processes)."""

    requested: int = 0
    rows: int = 0
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    from_cache: int = 0
    encoded: int = 0
    processes: int = 1
    reused: bool = False
    seconds: float = 0.0


@dataclass
class StoreResult:
    """The opened store (None when encoding only filled the cache) and the counts."""

    store: Features | None
    stats: EncodeStats


class _Writer:
    """Appends rows, paths and skips to a work folder; :meth:`finish` writes the metadata."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.matrix = open(work / MATRIX, "wb")  # noqa: SIM115 (closed by finish/abort)
        self.images = LineWriter(work / IMAGES)
        self.skips = open(work / SKIPPED, "w", encoding="utf-8")  # noqa: SIM115
        self.rows = 0

    def add(self, paths: Sequence[str], rows: np.ndarray, skipped: Sequence[tuple[str, str]]):
        import numpy as np

        self.matrix.write(np.ascontiguousarray(rows, dtype=ROW_DTYPE).tobytes())
        for path in paths:
            self.images.add(path)
        for path, reason in skipped:
            self.skips.write(f"{path}\t{' '.join(reason.split())}\n")
        self.rows += len(paths)

    def finish(self, meta: dict[str, Any]) -> None:
        for handle in (self.matrix, self.skips):
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
        self.images.close()
        (self.work / META).write_text(json.dumps(meta, indent=2), encoding="utf-8")

    def abort(self) -> None:
        for handle in (self.matrix, self.skips, self.images.handle):
            handle.close()
        shutil.rmtree(self.work, ignore_errors=True)


def create_store(
    out: str | Path,
    blocks: Iterable[np.ndarray],
    paths: Iterable[str | Path],
    encoder: dict[str, Any],
) -> Features:
    """A store at ``out`` from features computed elsewhere: ``blocks`` of rows (in order) and
    one image path per row; ``encoder`` is the record to keep (``EncoderSpec.to_json()``)."""
    from polycap.version import __version__

    out = Path(out)
    names = [os.fspath(path) for path in paths]
    writer = _Writer(temporary_folder(out))
    try:
        start = 0
        for block in blocks:
            writer.add(names[start : start + len(block)], block, [])
            start += len(block)
        if start != len(names):
            raise BadInput(f"{out}: {start} feature rows for {len(names)} image paths")
        dim = int(encoder.get("embed_dim") or 0)
        writer.finish(
            {
                "format": STORE_FORMAT,
                "version": STORE_VERSION,
                "encoder": encoder,
                "dim": dim,
                "dtype": "float32",
                "rows": start,
                "images_requested": start,
                "skipped_images": 0,
                "images_digest": images_digest(names),
                "processes": 1,
                "polycap_version": __version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
        )
        swap_into_place(writer.work, out)
    except BaseException:
        writer.abort()
        raise
    return Features.open(out)


def _as_path(item: str | Path) -> Path:
    return item if isinstance(item, Path) else Path(item)


def _path_hash(item: str | Path) -> bytes:
    """16 bytes naming one image file: a hash of its normalised absolute path."""
    name = os.path.normpath(os.path.abspath(item))
    return hashlib.blake2b(name.encode("utf-8", "surrogateescape"), digest_size=16).digest()


def _sorted_hashes(items: Sequence[str | Path]) -> tuple[np.ndarray, np.ndarray]:
    """The path hashes of ``items`` as ``[n, 2]`` uint64, sorted, and the order that sorts
    them (stable: equal hashes keep their input order)."""
    import numpy as np

    hashes = bytearray()
    for item in items:
        hashes += _path_hash(item)
    keys = np.frombuffer(hashes, dtype="<u8").reshape(-1, 2)
    order = np.lexsort((keys[:, 1], keys[:, 0]))
    return order, keys[order]


def _first_occurrences(items: Sequence[str | Path]) -> np.ndarray:
    """The position of each image's first occurrence in ``items``, in order.

    Duplicates are found by sorting 16-byte path hashes, the first occurrence leading its
    group: about 40 bytes per image while this runs, not a set of path strings.
    """
    import numpy as np

    order, ranked = _sorted_hashes(items)
    first = np.ones(len(order), dtype=bool)
    first[1:] = (ranked[1:] != ranked[:-1]).any(axis=1)
    del ranked
    return np.sort(order[first])


@dataclass(frozen=True, eq=False)
class _ImageList:
    """The caller's image list without its duplicates, kept as positions into it (8 bytes per
    image), not as a second list of paths."""

    items: Sequence[str | Path]
    firsts: np.ndarray
    digest: str

    @classmethod
    def of(cls, paths: Iterable[str | Path]) -> _ImageList:
        items = paths if isinstance(paths, Sequence) else list(paths)
        firsts = _first_occurrences(items)
        return cls(items, firsts, images_digest(_as_path(items[i]) for i in firsts))

    def __len__(self) -> int:
        return len(self.firsts)

    def part(self, start: int, stop: int) -> list[Path]:
        """The unique images ``start:stop``."""
        return [_as_path(self.items[i]) for i in self.firsts[start:stop]]


@dataclass(frozen=True)
class EncodeOptions:
    """How :func:`encode_to_store` encodes (see its docstring)."""

    batch_size: int = 64
    chunk: int = DEFAULT_CHUNK
    cache_dir: str | Path | None = None
    use_cache: bool = True
    progress: bool = True
    workers: int | None = None
    reuse: bool = True

    def __post_init__(self) -> None:
        if self.chunk < 1:
            raise BadInput(f"chunk size must be at least 1, got {self.chunk}")


def encode_to_store(
    encoder: ImageEncoder,
    paths: Iterable[str | Path],
    out: str | Path | None,
    options: EncodeOptions | None = None,
    procs: Processes | None = None,
    **fields: Any,
) -> StoreResult:
    """Encode each unique image of ``paths`` once into a feature store at ``out``.

    ``out=None`` only fills the per-image cache. With ``reuse``, a complete store at ``out``
    for the same images and encoder is opened instead of encoded again. Across processes
    (``procs``, default: the launcher's, see :mod:`polycap.util.distributed`) every process must
    call this with the same ``paths``; each gets the same result. ``fields``:
    :class:`EncodeOptions` fields by keyword (``batch_size=...``), over ``options``.
    """
    from polycap.util.distributed import processes

    started = time.perf_counter()
    opts = replace(options or EncodeOptions(), **fields)
    procs = procs or processes()
    images = _ImageList.of(paths)
    out = Path(out) if out is not None else None
    if out is not None and out.exists() and not (out / META).is_file() and any(out.iterdir()):
        raise BadInput(f"{out}: exists and is not a feature store; refusing to replace it")
    if out is not None and not procs.distributed:
        with writing(out):  # one writer; a killed one's temporary folders go
            remove_leftovers(out)
            return _encode_into(encoder, images, out, opts, procs, started)
    return _encode_into(encoder, images, out, opts, procs, started)


def _encode_into(
    encoder: ImageEncoder,
    images: _ImageList,
    out: Path | None,
    opts: EncodeOptions,
    procs: Processes,
    started: float,
) -> StoreResult:
    """:func:`encode_to_store` once ``out`` is checked: reuse, or encode and swap in."""
    from polycap.data.encoding import encode_images

    reused = _reused(out, encoder, images, procs) if out is not None and opts.reuse else None
    if reused is not None:
        return reused
    writer = None
    if out is not None and procs.local_main:
        out.parent.mkdir(parents=True, exist_ok=True)
        writer = _Writer(temporary_folder(out))
    try:
        encode_chunk = partial(
            encode_images,
            encoder,
            batch_size=opts.batch_size,
            cache_dir=opts.cache_dir,
            progress=False,
            use_cache=opts.use_cache,
            workers=opts.workers,
        )
        stats = _encode_rounds(encode_chunk, images, writer, procs, opts.chunk, opts.progress)
        stats.seconds = time.perf_counter() - started
        if writer is not None and out is not None:
            writer.finish(_meta(encoder, images.digest, stats))
            _put_in_place(writer.work, out, images.digest)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if out is None:
        return StoreResult(None, stats)
    procs.barrier("encoding: waiting for the feature store to be written")
    return StoreResult(Features.open(out), stats)


def _reused(
    out: Path, encoder: ImageEncoder, images: _ImageList, procs: Processes
) -> StoreResult | None:
    """The complete store at ``out`` for these images and encoder, when every process finds it."""
    found = _reusable(out, encoder, images.digest)
    if not all(procs.all_gather(found is not None, "encoding: checking the feature store")):
        return None
    assert found is not None
    stats = EncodeStats(len(images), len(found), found.skipped(), reused=True)
    stats.processes = procs.world_size
    return StoreResult(found, stats)


def _reusable(out: Path, encoder: ImageEncoder, digest: str) -> Features | None:
    try:
        store = Features.open(out)
    except BadInput:
        return None
    return store if store.matches(encoder, digest) else None


def _encode_rounds(
    encode_chunk: Callable[[list[Path]], Any],
    images: _ImageList,
    writer: _Writer | None,
    procs: Processes,
    chunk: int,
    progress: bool,
) -> EncodeStats:
    """Rounds of ``chunk`` images per process; each round's shares gathered and appended."""
    from polycap.util.progress import progress_bar

    stats = EncodeStats(len(images), processes=procs.world_size)
    block = chunk * procs.world_size
    with progress_bar("encoding images", len(images), progress and procs.main) as advance:
        for begin in range(0, len(images), block):
            part = images.part(begin, begin + block)
            mine = [part[i] for i in procs.share(len(part))]
            encoded = encode_chunk(mine)
            share = (
                [str(p) for p in encoded.paths],
                encoded.features.numpy(),
                [(str(p), reason) for p, reason in encoded.skipped],
                encoded.from_cache,
                encoded.encoded,
                len(mine),
            )
            for paths, rows, skipped, cached, fresh, count in procs.all_gather(
                share, f"encoding images {begin}-{begin + len(part)}"
            ):
                if writer is not None:
                    writer.add(paths, rows, skipped)
                stats.rows += len(paths)
                stats.skipped += [(Path(p), reason) for p, reason in skipped]
                stats.from_cache += cached
                stats.encoded += fresh
                advance(count)
    return stats


def _meta(encoder: ImageEncoder, digest: str, stats: EncodeStats) -> dict[str, Any]:
    from polycap.version import __version__

    return {
        "format": STORE_FORMAT,
        "version": STORE_VERSION,
        "encoder": encoder.encoder_spec.to_json(),
        "dim": int(encoder.embed_dim),
        "dtype": "float32",
        "rows": stats.rows,
        "images_requested": stats.requested,
        "skipped_images": len(stats.skipped),
        "images_digest": digest,
        "processes": stats.processes,
        "polycap_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _put_in_place(work: Path, out: Path, digest: str) -> None:
    """Rename the finished store to ``out``; when another machine's process sharing this
    filesystem got there first with the same images, keep theirs."""
    try:
        swap_into_place(work, out)
    except OSError:
        existing = _meta_digest(out)
        shutil.rmtree(work, ignore_errors=True)
        if existing != digest:
            raise


def _meta_digest(out: Path) -> str | None:
    try:
        return json.loads((out / META).read_text(encoding="utf-8")).get("images_digest")
    except (OSError, json.JSONDecodeError):
        return None
