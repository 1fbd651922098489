"""What the registries hold: the parts plugins register and polycap passes between layers.

A leaf (it imports nothing of polycap but :mod:`polycap.errors`), so that the plugin host
(:mod:`polycap.plugins`) and every layer can name these types without an import circle:
:class:`CaptionRecord` and :class:`CaptionFormat` (``register_caption_formats``),
:class:`EncoderSpec` and :class:`ImageEncoder` (``register_encoders``), :class:`Metric` and
:class:`MetricScores` (``register_metrics``), :class:`IndexBackend` and :class:`Searcher`
(``register_index_backends``). Language packs (``register_languages``) are
:class:`polycap.language.LanguagePack`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from polycap.errors import BadInput

if TYPE_CHECKING:
    import torch
    from PIL import Image

DEFAULT_BACKEND = "open_clip"


@dataclass(frozen=True)
class CaptionRecord:
    """One caption of one image; ``image`` is an absolute path."""

    image: Path
    caption: str
    image_id: str


@runtime_checkable
class CaptionFormat(Protocol):
    """A caption-file format, registered with ``register(name, CaptionFormat)``.

    ``suffixes`` are lower-case file suffixes (".json") the format claims; ``sniff`` looks at
    the start of a file and says whether it is this format (used when suffixes are shared or
    unknown); ``read`` returns records with absolute image paths (existence is checked by
    :func:`load_captions`) and raises ``BadInput`` naming the file and line/key on bad input.
    A format that reads sources other than one file (a folder, a pattern of shards) also has
    ``accepts(path) -> bool``. A format may also define ``read_predictions(path)`` returning
    :class:`polycap.eval.predictions.Prediction` objects, so ``polycap eval -p`` reads it too.
    """

    name: str
    suffixes: tuple[str, ...]

    def sniff(self, path: Path) -> bool: ...

    def read(self, path: Path, images_dir: Path | None) -> list[CaptionRecord]: ...


@dataclass(frozen=True)
class EncoderSpec:
    """Which image encoder: the one record of it that checkpoints and banks save and reopen.

    ``backend`` (a ``register_encoders`` name, "open_clip" built in), ``name`` (the backend's
    model name, e.g. "ViT-B-32"), ``pretrained`` (weights tag, file, or None for random),
    ``embed_dim``, ``cache_key`` (the feature-cache key; None: do not cache).
    """

    name: str
    pretrained: str | None = None
    backend: str = DEFAULT_BACKEND
    embed_dim: int | None = None
    cache_key: str | None = None

    @property
    def spec(self) -> str:
        """What :func:`load_encoder` takes: the name for open_clip, ``backend:name`` else."""
        return self.name if self.backend == DEFAULT_BACKEND else f"{self.backend}:{self.name}"

    def to_json(self, cache_key: bool = True) -> dict[str, Any]:
        """The record (a checkpoint's leaves out ``cache_key``: it is machine-specific)."""
        record: dict[str, Any] = {
            "backend": self.backend,
            "name": self.name,
            "pretrained": self.pretrained,
            "embed_dim": self.embed_dim,
        }
        if cache_key:
            record["cache_key"] = self.cache_key
        return record

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> EncoderSpec:
        """Read a record written by :meth:`to_json` (``backend`` defaults to open_clip)."""
        if not record.get("name"):
            raise BadInput(f"encoder record without a 'name': {dict(record)}")
        embed_dim = record.get("embed_dim")
        return cls(
            name=str(record["name"]),
            pretrained=record.get("pretrained"),
            backend=str(record.get("backend") or DEFAULT_BACKEND),
            embed_dim=None if embed_dim is None else int(embed_dim),
            cache_key=record.get("cache_key"),
        )

    def load(self, registries: Any, device: str = "cpu") -> ImageEncoder:
        """The encoder itself, from its own backend in ``registries`` (never silently another
        one)."""
        load = registries.encoders.get(self.backend)
        return load(self.name, self.pretrained, device)


class ImageEncoder:
    """An image (and, where it has one, text) encoder; backends subclass this.

    Attributes: ``backend`` ("open_clip"), ``name`` (the backend's model name, e.g.
    "ViT-B-32"), ``pretrained`` (weights tag, file, or None for random weights), ``embed_dim``,
    ``device``, ``cache_key`` (None: do not cache). :attr:`encoder_spec` is the record of it.
    """

    backend: str = DEFAULT_BACKEND
    name: str = ""
    pretrained: str | None = None
    embed_dim: int = 0
    device: str = "cpu"
    cache_key: str | None = None

    @property
    def encoder_spec(self) -> EncoderSpec:
        """The record of this encoder, to save and :meth:`EncoderSpec.load` back."""
        return EncoderSpec(
            self.name, self.pretrained, self.backend, int(self.embed_dim), self.cache_key
        )

    @property
    def spec(self) -> str:
        """What :func:`load_encoder` takes back (see :attr:`EncoderSpec.spec`)."""
        return self.encoder_spec.spec

    def info(self) -> dict[str, Any]:
        """The record as JSON (:meth:`EncoderSpec.to_json`)."""
        return self.encoder_spec.to_json()

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """An RGB PIL image -> Tensor[3, H, W] ready for :meth:`encode_images`."""
        raise NotImplementedError

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Tensor[B, 3, H, W] -> Tensor[B, D] float32 on the CPU (raw, not normalised)."""
        raise NotImplementedError

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Texts -> Tensor[B, D] float32 on the CPU (raw); BadInput if there is no text tower."""
        raise BadInput(f"encoder {self.name!r} has no text encoder")

    def __repr__(self) -> str:
        kind = type(self).__name__
        return f"<{kind} {self.name} pretrained={self.pretrained!r} dim={self.embed_dim}>"


@dataclass
class MetricScores:
    """Corpus scores by column (e.g. ``BLEU-4``), optional per-image scores, and details."""

    corpus: dict[str, float]
    per_image: dict[str, list[float]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Metric(Protocol):
    """A caption metric, registered with ``register(name, metric)``.

    ``columns`` are the score names it fills; ``unavailable(ctx)`` returns None when it
    applies, else the reason shown as ``n/a (reason)``; ``compute(ctx)`` scores. ``ctx`` is
    a :class:`polycap.eval.runner.EvalContext`.
    """

    name: str
    columns: tuple[str, ...]
    lower_is_better: bool

    def unavailable(self, ctx: Any) -> str | None: ...

    def compute(self, ctx: Any) -> MetricScores: ...


class Searcher(Protocol):
    """An opened index over one matrix of a bank."""

    def search(self, queries: Any, k: int, chunk_size: int) -> tuple[Any, Any]: ...


class IndexBackend(Protocol):
    """What ``register_index_backends`` registers (see the module docstring)."""

    name: str
    index_types: tuple[str, ...]

    def build(
        self, matrix: Any, folder: Path, kind: str, index_type: str, options: Mapping[str, str]
    ) -> dict[str, Any]: ...

    def open(self, folder: Path, kind: str, record: Mapping[str, Any], matrix: Any) -> Searcher: ...
