"""CLIP image encoding: encoders by name, batched encoding, an on-disk cache per image.

``load_encoder("ViT-B-32", pretrained="openai")`` returns an :class:`ImageEncoder` from a
backend registered through ``register_encoders`` (``open_clip`` built in).
``encode_images(encoder, paths)`` encodes each unique image once, in batches, skipping and
counting unreadable images, and caches each feature on disk under
``<cache_dir>/<encoder cache key>/<sha256 of the image bytes>.npy`` so that a second run over
the same images encodes nothing.

Caching and random weights: an encoder built with ``pretrained=None`` has random weights that
differ between processes, so its ``cache_key`` is ``None`` and nothing is read from or written
to the cache for it.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from polycap.errors import BadInput, warn
from polycap.parts import DEFAULT_BACKEND as DEFAULT_BACKEND  # re-exported: their former home
from polycap.parts import EncoderSpec as EncoderSpec
from polycap.parts import ImageEncoder as ImageEncoder
from polycap.util.atomic import replace_file, write_text
from polycap.util.progress import progress_bar

if TYPE_CHECKING:
    import torch

DEFAULT_ENCODER = "ViT-B-32"
DEFAULT_PRETRAINED = "openai"
CACHE_ENV = "POLYCAP_CACHE_DIR"


def parse_spec(spec: str) -> tuple[str, str]:
    """``"backend:model"`` or a plain model name -> (backend, model).

    A prefix that is not a registered backend stays part of the model name (open_clip's own
    ``hf-hub:`` and ``local-dir:`` schemas).
    """
    from polycap.plugins import get_registries

    backend, sep, model = spec.partition(":")
    if sep and backend in get_registries().encoders:
        return backend, model
    if sep and backend not in ("hf-hub", "local-dir") and "/" not in backend:
        get_registries().encoders.get(backend)  # UnknownName with a did-you-mean
    return DEFAULT_BACKEND, spec


def load_encoder(
    spec: str = DEFAULT_ENCODER,
    pretrained: str | Path | None = DEFAULT_PRETRAINED,
    device: str = "cpu",
) -> ImageEncoder:
    """The encoder ``spec`` ("backend:name" or an open_clip model name) with weights
    ``pretrained`` (a tag such as "openai", a local weights file, or None for random)."""
    from polycap.plugins import get_registries

    backend, model = parse_spec(spec)
    load = get_registries().encoders.get(backend)
    return load(model, None if pretrained is None else str(pretrained), device)


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# -- encoding many images --------------------------------------------------------------------


@dataclass
class EncodedImages:
    """Features of the images that could be read, in input order (duplicates collapsed).

    ``skipped`` lists (path, reason) for unreadable images; ``from_cache`` / ``encoded``
    count how the features were obtained.
    """

    paths: list[Path]
    features: torch.Tensor
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    from_cache: int = 0
    encoded: int = 0

    def __len__(self) -> int:
        return len(self.paths)


def default_cache_dir() -> Path:
    """``$POLYCAP_CACHE_DIR`` or ``~/.cache/polycap/features``."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "polycap" / "features"


class FeatureCache:
    """One ``.npy`` file per image under a folder per encoder; writes are atomic.

    Entries are named with plain strings, not ``Path`` objects: pathlib interns each name it
    parses, so two new names per image (the entry and its temporary file) would grow the
    interpreter's interned-string table over a long run.
    """

    def __init__(self, root: Path, cache_key: str, embed_dim: int) -> None:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", cache_key)[:60]
        key_hash = hashlib.sha256(cache_key.encode()).hexdigest()[:12]
        self.directory = Path(root) / f"{slug}-{key_hash}"
        self.embed_dim = embed_dim
        self.cache_key = cache_key
        self._folder = os.fspath(self.directory)

    def _file(self, digest: str) -> str:
        return os.path.join(self._folder, digest[:2], digest + ".npy")

    def get(self, digest: str) -> torch.Tensor | None:
        """The cached feature, or None (absent or damaged entries count as absent)."""
        import numpy as np
        import torch

        try:
            array = np.load(self._file(digest), allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
        if array.shape != (self.embed_dim,) or array.dtype != np.float32:
            return None
        return torch.from_numpy(array)

    def put(self, digest: str, feature: torch.Tensor) -> None:
        """Store one feature (temp file + rename, so readers never see half a file)."""
        import numpy as np
        import torch

        data = io.BytesIO()
        np.save(data, feature.detach().to("cpu", torch.float32).numpy())
        replace_file(self._file(digest), data.getvalue())

    def write_readme(self) -> None:
        """A note saying which encoder the folder belongs to (for people browsing the cache)."""
        note = self.directory / "encoder.txt"
        if not note.exists():
            write_text(note, f"{self.cache_key}\nembed_dim={self.embed_dim}\n")


def _open_cache(root: Path, encoder: ImageEncoder, explicit: bool) -> FeatureCache | None:
    """The feature cache under ``root``; an unwritable one is BadInput when the user named
    it (``--cache-dir``), else a warning and no cache."""
    cache = FeatureCache(root, encoder.cache_key or "", encoder.embed_dim)
    try:
        cache.write_readme()
    except OSError as error:
        reason = error.strerror or str(error)
        if explicit:
            raise BadInput(
                f"--cache-dir {root}: cannot write the feature cache ({reason})"
            ) from None

        warn(f"{root}: cannot write the feature cache ({reason}); encoding without it")
        return None
    return cache


@dataclass
class _Loaded:
    index: int
    path: Path
    digest: str | None = None
    pixels: torch.Tensor | None = None
    error: str | None = None


def _read_one(
    index: int, path: Path, encoder: ImageEncoder, cache: FeatureCache | None
) -> tuple[_Loaded, torch.Tensor | None]:
    """Read, hash, look up, else decode and preprocess one image (runs in worker threads)."""
    from polycap.data.images import check_header, decode_image, unreadable_reason

    try:
        data = path.read_bytes()
    except OSError as error:
        reason = "no such file" if isinstance(error, FileNotFoundError) else str(error.strerror)
        return _Loaded(index, path, error=reason), None
    digest = hashlib.sha256(data).hexdigest()
    if cache is not None:
        try:
            check_header(data, path)  # --max-pixels holds for cached images too
        except BadInput as error:
            return _Loaded(index, path, digest, error=unreadable_reason(error)), None
        cached = cache.get(digest)
        if cached is not None:
            return _Loaded(index, path, digest), cached
    try:
        image = decode_image(data, path, device=str(encoder.device))
    except BadInput as error:
        return _Loaded(index, path, digest, error=unreadable_reason(error)), None
    return _Loaded(index, path, digest, pixels=encoder.preprocess(image)), None


def _prefetch(
    paths: Sequence[Path], encoder: ImageEncoder, cache: FeatureCache | None, workers: int
) -> Iterator[tuple[_Loaded, torch.Tensor | None]]:
    """:func:`_read_one` over ``paths`` in order, with at most a few images in flight."""
    if workers <= 0:
        for index, path in enumerate(paths):
            yield _read_one(index, path, encoder, cache)
        return
    window: deque[Future[tuple[_Loaded, Any]]] = deque()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for index, path in enumerate(paths):
            window.append(pool.submit(_read_one, index, path, encoder, cache))
            if len(window) >= workers * 4:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()


def _unique(paths: Iterable[str | Path]) -> list[Path]:
    """Each image once, in first-seen order; ``Path`` items are kept as they are (a new
    ``Path`` per image would intern its name again)."""
    seen: set[str] = set()
    result = []
    for item in paths:
        path = item if isinstance(item, Path) else Path(item)
        key = os.path.normpath(os.path.abspath(path))
        if key not in seen:
            seen.add(key)
            result.append(path)
    return result


def encode_images(
    encoder: ImageEncoder,
    paths: Iterable[str | Path],
    batch_size: int = 64,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    use_cache: bool = True,
    workers: int | None = None,
) -> EncodedImages:
    """Encode each unique image of ``paths`` once, in batches of ``batch_size``.

    Unreadable images are skipped and listed in ``skipped`` (never a zero feature). Features
    are looked up in / written to the on-disk cache (``cache_dir``, default
    :func:`default_cache_dir`) as each batch finishes, unless ``use_cache`` is False or the
    encoder has no ``cache_key``. ``workers`` threads read and preprocess images ahead of the
    model (default: up to 4).
    """
    if batch_size < 1:
        raise BadInput(f"batch size must be at least 1, got {batch_size}")
    unique = _unique(paths)
    cache = None
    if use_cache and encoder.cache_key is not None:
        root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        cache = _open_cache(root, encoder, explicit=cache_dir is not None)
    if workers is None:
        workers = min(4, os.cpu_count() or 1)
    skipped: list[tuple[Path, str]] = []
    with progress_bar("encoding images", len(unique), progress) as advance:
        rows = _Rows(encoder, len(unique), cache, advance)
        for loaded, cached in _prefetch(unique, encoder, cache, workers):
            if loaded.error is not None:
                skipped.append((loaded.path, loaded.error))
                advance(1)
            elif cached is not None:
                rows.take(loaded.index, cached)
            else:
                rows.pending.append(loaded)
                if len(rows.pending) >= batch_size:
                    rows.flush()
        rows.flush()
    kept = [index for index, good in enumerate(rows.ok) if good]
    features = rows.features if len(kept) == len(unique) else rows.features[kept]
    return EncodedImages([unique[i] for i in kept], features, skipped, rows.cached, rows.encoded)


class _Rows:
    """The feature matrix of :func:`encode_images` being filled: rows from the cache, or encoded
    a batch of pending images at a time and written to the cache (until a write fails)."""

    def __init__(
        self, encoder: ImageEncoder, n: int, cache: FeatureCache | None, advance: Any
    ) -> None:
        import torch

        self.encoder = encoder
        self.features = torch.empty(n, encoder.embed_dim, dtype=torch.float32)
        self.ok = [False] * n
        self.pending: list[_Loaded] = []
        self.cache = cache  # where features are written; None once a write failed
        self.advance = advance
        self.cached = self.encoded = 0

    def take(self, index: int, row: torch.Tensor) -> None:
        """A row found in the cache."""
        self.features[index] = row
        self.ok[index] = True
        self.cached += 1
        self.advance(1)

    def flush(self) -> None:
        """Encode the pending images as one batch."""
        import torch

        if not self.pending:
            return
        batch = torch.stack([item.pixels for item in self.pending])  # type: ignore[misc]
        output = self.encoder.encode_images(batch)
        for item, row in zip(self.pending, output, strict=True):
            self.features[item.index] = row
            self.ok[item.index] = True
            if self.cache is not None and item.digest is not None:
                self._write(item.digest, row)
        self.encoded += len(self.pending)
        self.advance(len(self.pending))
        self.pending.clear()

    def _write(self, digest: str, row: torch.Tensor) -> None:
        cache = self.cache
        assert cache is not None
        try:
            cache.put(digest, row)
        except OSError as error:  # disk full, read-only: keep encoding, stop caching
            warn(
                f"{cache.directory}: cannot write to the feature cache "
                f"({error.strerror or error}); the rest of this run is not cached"
            )
            self.cache = None
