"""Caption banks on disk: texts, text embeddings, image embeddings, image -> caption ids.

A bank is a folder::

    meta.json                 format, language, encoder, dims, counts, dtype, source
    captions.txt              unique normalised captions, one per line (UTF-8)
    captions.offsets.npy      int64 [T+1] byte offsets of each line (read one caption by seeking)
    captions.hashes.npy       sorted int64 hashes of the captions (novelty checks)
    text.npy                  [T, D] float16/float32, L2-normalised (when the encoder has a
                              text tower)
    images.txt                image paths, one per line, + images.offsets.npy
    image.npy                 [M, D] L2-normalised image embeddings
    image_captions.ptr.npy    int64 [M+1]: image j's captions are ids[ptr[j]:ptr[j+1]]
    image_captions.ids.npy    int64 caption ids

Embeddings are written in chunks into ``np.lib.format.open_memmap`` files and read back with
``np.load(mmap_mode="r", allow_pickle=False)`` (:mod:`polycap.util.safe_load`), after
:mod:`polycap.retrieval.bank_check` has checked every file against ``meta.json``: a bank
of millions of captions is never a Python list of rows.
The folder is built next to its destination and renamed into place when complete.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from polycap.errors import BadInput, UnknownName
from polycap.parts import EncoderSpec, Searcher
from polycap.retrieval.backends import IndexChoice, get_backend
from polycap.retrieval.bank_check import check_bank_files, check_meta
from polycap.util.atomic import atomic_folder, remove_leftovers
from polycap.util.files import LineFile, read_meta, write_lines
from polycap.util.run_lock import writing
from polycap.util.safe_load import load_array

if TYPE_CHECKING:
    from polycap.data.captions import CaptionSet
    from polycap.language import LanguagePack
    from polycap.parts import ImageEncoder

BANK_FORMAT = "polycap-bank"
BANK_VERSION = 1
DTYPES = ("float16", "float32")
META = "meta.json"


# -- reading -------------------------------------------------------------------------------------


@dataclass
class Bank:
    """An opened bank: metadata, memory-mapped matrices and caption lookups."""

    path: Path
    meta: dict[str, Any]
    _searchers: dict[str, Searcher] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def open(cls, path: str | Path) -> Bank:
        """Open a bank folder; BadInput if it is not one or is damaged."""
        path = Path(path)
        meta_file = path / META
        if not path.exists():
            raise BadInput(f"{path}: no such bank")
        if not meta_file.is_file():
            raise BadInput(
                f"{path}: not a caption bank (no {META}; build one with 'polycap index')"
            )
        meta = read_meta(meta_file, "bank", BANK_FORMAT, BANK_VERSION)
        check_meta(path, meta)
        bank = cls(path, meta)
        if bank.n_captions == 0:
            raise BadInput(f"{path}: the bank is empty (0 captions); index a caption set into it")
        bank._check_files()
        return bank

    def _check_files(self) -> None:
        needed = ["captions.txt", "captions.offsets.npy", "captions.hashes.npy"]
        if self.has_text:
            needed.append("text.npy")
        if self.n_images:
            needed += [
                "image.npy",
                "images.txt",
                "images.offsets.npy",
                "image_captions.ptr.npy",
                "image_captions.ids.npy",
            ]
        for name in needed:
            if not (self.path / name).is_file():
                raise BadInput(f"{self.path}: bank is incomplete ({name} is missing)")
        check_bank_files(self.path, self.meta, self.has_text)

    # -- sizes and identity
    @property
    def n_captions(self) -> int:
        return int(self.meta["captions"])

    @property
    def n_images(self) -> int:
        return int(self.meta["images"])

    @property
    def has_text(self) -> bool:
        return bool(self.meta.get("has_text")) and self.n_captions > 0

    @property
    def language(self) -> str:
        return str(self.meta["language"])

    @property
    def encoder(self) -> dict[str, Any]:
        return dict(self.meta["encoder"])

    # -- data
    def text_matrix(self) -> Any:
        """[T, D] memory-mapped, L2-normalised caption embeddings."""

        if not self.has_text:
            raise BadInput(
                f"{self.path}: bank has no text embeddings "
                f"({self.meta.get('text_note') or 'none were built'}); use --mode image"
            )
        return load_array(self.path / "text.npy")

    def image_matrix(self) -> Any:
        """[M, D] memory-mapped, L2-normalised image embeddings."""

        if not self.n_images:
            raise BadInput(f"{self.path}: bank has no image embeddings; use --mode text")
        return load_array(self.path / "image.npy")

    def captions(self, ids: Sequence[int]) -> list[str]:
        """Caption texts by id."""
        return LineFile(self.path / "captions.txt").get([int(i) for i in ids])

    def image_names(self, ids: Sequence[int]) -> list[str]:
        """Image paths (as indexed) by row."""
        return LineFile(self.path / "images.txt").get([int(i) for i in ids])

    def image_caption_ids(self) -> tuple[Any, Any]:
        """(ptr [M+1], ids): image j's caption ids are ``ids[ptr[j]:ptr[j+1]]``."""

        return (
            load_array(self.path / "image_captions.ptr.npy"),
            load_array(self.path / "image_captions.ids.npy"),
        )

    def caption_hashes(self) -> Any:
        """Sorted int64 hashes of every caption (see ``polycap.eval.metrics.diversity``)."""

        return load_array(self.path / "captions.hashes.npy", mmap=False)

    def iter_captions(self) -> Iterable[str]:
        """All captions, streamed from disk."""
        return iter(LineFile(self.path / "captions.txt"))

    def index_backend(self) -> str:
        """The backend that built the bank's index (banks without a record: numpy)."""
        return str(self.meta.get("index", {}).get("backend", "numpy"))

    def searcher(self, kind: str) -> Searcher:
        """The index over the ``kind`` ("text" or "image") matrix, opened with the backend that
        built it (an uninstalled backend is a one-line error naming it)."""
        matrix = self.text_matrix() if kind == "text" else self.image_matrix()
        if kind not in self._searchers:
            name = self.index_backend()
            record = self.meta.get("index", {}).get(kind, {"index_type": "flat"})
            try:
                backend = get_backend(name)
            except UnknownName as error:
                raise UnknownName(
                    f"{self.path}: the bank was built with the {name!r} index backend: {error}"
                ) from None
            self._searchers[kind] = backend.open(self.path, kind, record, matrix)
        return self._searchers[kind]

    @property
    def encoder_spec(self) -> EncoderSpec:
        return EncoderSpec.from_json(self.meta["encoder"])

    def load_encoder(self, device: str = "cpu") -> Any:
        """The encoder the bank was built with, from its recorded backend."""
        from polycap.plugins import get_registries

        return self.encoder_spec.load(get_registries(), device)


# -- building ------------------------------------------------------------------------------------


@dataclass
class BankStats:
    """What :func:`build_bank` wrote."""

    path: Path
    captions: int
    caption_records: int
    images: int
    skipped: list[tuple[Path, str]]
    has_text: bool
    seconds: float


@dataclass
class BankOptions:
    """How a bank is built: embedding ``dtype`` (float16 or float32), image and text batch
    sizes, images encoded per chunk, the feature cache, whether to embed the captions
    (``text``), whether to replace an existing bank (``force``), progress bars, and the
    index backend and type to search it with (``index``)."""

    dtype: str = "float16"
    batch_size: int = 64
    text_batch_size: int = 256
    image_block: int = 4096
    cache_dir: str | Path | None = None
    text: bool = True
    force: bool = False
    progress: bool = True
    index: IndexChoice = field(default_factory=IndexChoice)


def build_bank(
    captions: CaptionSet,
    encoder: ImageEncoder,
    out: str | Path,
    pack: LanguagePack,
    options: BankOptions | None = None,
    **overrides: Any,
) -> BankStats:
    """Index a :class:`~polycap.data.captions.CaptionSet` into a bank folder at ``out``.

    Captions are normalised by ``pack`` and de-duplicated; text embeddings are built when
    ``options.text`` and the encoder has a text tower; images are encoded in chunks of
    ``options.image_block`` (unreadable ones skipped and counted) and written as they come.
    ``overrides`` are :class:`BankOptions` fields (``build_bank(..., dtype="float32")``).
    """
    from polycap.util.distributed import processes

    started = time.perf_counter()
    options = replace(options or BankOptions(), **overrides)
    out = Path(out)
    _check_target(out, options)
    index = options.index.resolve()
    contents = _contents(captions, pack)
    procs = processes()
    if procs.distributed:  # the processes share the work; leftovers stay (see run_lock)
        return _build(encoder, out, (contents, index, procs), options, started)
    with writing(out):  # one writer; a killed one's temporary folders go
        remove_leftovers(out)
        return _build(encoder, out, (contents, index, procs), options, started)


def _build(
    encoder: ImageEncoder,
    out: Path,
    plan: tuple[_Contents, Any, Any],
    options: BankOptions,
    started: float,
) -> BankStats:
    """:func:`build_bank` once the target is checked: encode, write, swap into place."""
    contents, index, procs = plan
    # images first, by every process (each encodes its share); the rest by one per machine
    store_dir = out.parent / f".{out.name}.features"
    encoded = _encode_images(encoder, contents.images, store_dir, options, procs)
    store, skipped = encoded.store, encoded.stats.skipped
    assert store is not None
    if not procs.local_main:
        return contents.stats(out, len(store), skipped, False, started)
    with atomic_folder(out) as work:
        n_images, has_text = _write_bank(
            work, contents, encoder, store, options, index, len(skipped)
        )
    store.close()
    shutil.rmtree(store_dir, ignore_errors=True)  # kept only while the bank is unfinished
    return contents.stats(out, n_images, skipped, has_text, started)


@dataclass
class _Contents:
    """What a bank will hold: the ``captions`` it indexes, normalised by ``pack`` into the
    distinct ``texts``; the ``images`` and, for each, the ids of its captions."""

    captions: CaptionSet
    pack: LanguagePack
    texts: list[str]
    images: list[Path]
    caption_lists: list[list[int]]

    def stats(
        self,
        out: Path,
        images: int,
        skipped: list[tuple[Path, str]],
        has_text: bool,
        started: float,
    ) -> BankStats:
        """What was written to ``out``, timed from ``started``."""
        elapsed = time.perf_counter() - started
        return BankStats(
            out, len(self.texts), len(self.captions), images, skipped, has_text, elapsed
        )


def _contents(captions: CaptionSet, pack: LanguagePack) -> _Contents:
    """``captions`` grouped by image and normalised; BadInput when there are none."""
    grouped = captions.by_image()
    if not grouped:
        raise BadInput(f"{captions.source or 'captions'}: no captions to index")
    texts, caption_lists = _unique_captions(captions, grouped, pack)
    return _Contents(captions, pack, texts, list(grouped), caption_lists)


def _write_bank(
    work: Path,
    contents: _Contents,
    encoder: ImageEncoder,
    store: Any,
    options: BankOptions,
    index: tuple[Any, str],
    skipped: int,
) -> tuple[int, bool]:
    """The bank's files in ``work``: image and caption embeddings, the indexes over them,
    meta.json last; returns (images written, whether captions have embeddings)."""
    source = contents.captions.source
    n_images = _write_image_embeddings(
        work, store, contents.images, contents.caption_lists, options.dtype
    )
    has_text, text_note = _write_captions(work, encoder, contents.texts, options)
    if not has_text and not n_images:
        raise BadInput(
            f"{source or 'captions'}: nothing to index: no image could be read "
            f"and there are no text embeddings ({text_note})"
        )
    kinds = [kind for kind, present in (("text", has_text), ("image", n_images)) if present]
    backend, index_type = index
    meta = _bank_meta(
        contents.pack,
        encoder,
        options,
        source,
        captions=len(contents.texts),
        caption_records=len(contents.captions),
        images=n_images,
        skipped_images=skipped,
        has_text=has_text,
        text_note=text_note,
        index=_build_indexes(work, kinds, backend, index_type, options),
    )
    (work / META).write_text(json.dumps(meta, ensure_ascii=False, indent=2), encoding="utf-8")
    return n_images, has_text


def _encode_images(
    encoder: ImageEncoder, images: list[Path], store_dir: Path, options: BankOptions, procs: Any
) -> Any:
    """``images`` encoded into the feature store at ``store_dir`` (each process its share)."""
    from polycap.data.features import encode_to_store

    return encode_to_store(
        encoder,
        images,
        store_dir,
        batch_size=options.batch_size,
        chunk=options.image_block,
        cache_dir=options.cache_dir,
        progress=options.progress,
        procs=procs,
    )


def _build_indexes(
    work: Path, kinds: list[str], backend: Any, index_type: str, options: BankOptions
) -> dict[str, Any]:
    """The backend's index over each written matrix (``text``, ``image``): meta's ``index``."""

    records: dict[str, Any] = {"backend": backend.name}
    for kind in kinds:
        matrix = load_array(work / f"{kind}.npy")
        records[kind] = backend.build(matrix, work, kind, index_type, options.index.options)
        del matrix
    return records


def _bank_meta(
    pack: LanguagePack,
    encoder: ImageEncoder,
    options: BankOptions,
    source: str | Path | None,
    **contents: Any,
) -> dict[str, Any]:
    """meta.json: format, language, encoder and dtype, then ``contents`` (counts, index)
    in the order given, then where the captions came from and when."""
    return {
        "format": BANK_FORMAT,
        "version": BANK_VERSION,
        "language": pack.code,
        "encoder": encoder.encoder_spec.to_json(),
        "embed_dim": int(encoder.embed_dim),
        "dtype": options.dtype,
        **contents,
        "normalised_by": f"language pack {pack.code!r}",
        "source": str(source) if source else None,
        "polycap_version": _polycap_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _check_target(out: Path, options: BankOptions) -> None:
    """BadInput for an unknown dtype, or an ``out`` that must not be replaced."""
    if options.dtype not in DTYPES:
        raise BadInput(f"unknown bank dtype {options.dtype!r}; choose one of {', '.join(DTYPES)}")
    if out.exists() and not options.force:
        raise BadInput(f"{out}: already exists (pass --force to replace it)")
    if out.exists() and not (out / META).is_file():
        raise BadInput(f"{out}: exists and is not a bank; refusing to replace it")


def _unique_captions(
    captions: CaptionSet, grouped: dict[Path, list[str]], pack: LanguagePack
) -> tuple[list[str], list[list[int]]]:
    """The distinct normalised captions, and for each image the ids of its captions."""
    ids: dict[str, int] = {}
    image_caption_lists: list[list[int]] = []
    for texts in grouped.values():
        row = []
        for caption in texts:
            normal = pack.normalize(caption)
            if normal:
                row.append(ids.setdefault(normal, len(ids)))
        image_caption_lists.append(list(dict.fromkeys(row)))
    if not ids:
        raise BadInput(f"{captions.source or 'captions'}: every caption is empty")
    return list(ids), image_caption_lists


def _write_captions(
    work: Path, encoder: ImageEncoder, texts: list[str], options: BankOptions
) -> tuple[bool, str | None]:
    """captions.txt (+ offsets), their hashes, and their embeddings when asked and possible."""
    import numpy as np

    from polycap.eval.metrics.diversity import hash_array

    write_lines(work / "captions.txt", texts)
    np.save(work / "captions.hashes.npy", hash_array(texts))
    if not options.text:
        return False, "built with --no-text"
    return _write_text_embeddings(
        work / "text.npy", encoder, texts, options.dtype, options.text_batch_size
    )


def _normalised_rows(features: Any) -> Any:
    import numpy as np

    array = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return array / np.maximum(norms, 1e-12)


def _write_text_embeddings(
    path: Path, encoder: Any, texts: Sequence[str], dtype: str, batch_size: int
) -> tuple[bool, str | None]:
    import numpy as np

    try:
        first = encoder.encode_texts(list(texts[:batch_size]))
    except BadInput as error:
        return False, str(error)
    matrix = np.lib.format.open_memmap(
        path, mode="w+", dtype=dtype, shape=(len(texts), int(encoder.embed_dim))
    )
    matrix[: len(first)] = _normalised_rows(first.numpy())
    for start in range(batch_size, len(texts), batch_size):
        block = encoder.encode_texts(list(texts[start : start + batch_size]))
        matrix[start : start + len(block)] = _normalised_rows(block.numpy())
    matrix.flush()
    del matrix
    return True, None


def _write_image_embeddings(
    work: Path, store: Any, images: list[Path], caption_lists: list[list[int]], dtype: str
) -> int:
    """L2-normalised rows of the feature ``store`` into ``image.npy`` (block by block), with
    the image list and each image's caption ids; returns the number of images."""
    import numpy as np

    rows = len(store)
    matrix = np.lib.format.open_memmap(
        work / "image.npy", mode="w+", dtype=dtype, shape=(rows, store.dim)
    )
    start = 0
    for block in store.blocks(size=65536):
        matrix[start : start + len(block)] = _normalised_rows(block.numpy())
        start += len(block)
    matrix.flush()
    del matrix
    position = {str(path): index for index, path in enumerate(images)}
    kept = [position[str(path)] for path in store.paths()]
    write_lines(work / "images.txt", (str(images[i]) for i in kept))
    pointer = np.zeros(rows + 1, dtype=np.int64)
    for row, index in enumerate(kept):
        pointer[row + 1] = pointer[row] + len(caption_lists[index])
    ids = np.fromiter(
        (cid for index in kept for cid in caption_lists[index]),
        dtype=np.int64,
        count=int(pointer[-1]),
    )
    np.save(work / "image_captions.ptr.npy", pointer)
    np.save(work / "image_captions.ids.npy", ids)
    return rows


def _polycap_version() -> str:
    from polycap.version import __version__

    return __version__
