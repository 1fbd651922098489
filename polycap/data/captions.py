"""Caption datasets: records, loading through registered formats, splitting by image.

Formats (``captions-json``, ``coco``, ``csv``, ``tsv``, ``jsonl``, and ``parquet``,
``arrow``, ``hf-dataset``, ``webdataset`` from :mod:`polycap.builtin.tables`) are objects
registered through the ``register_caption_formats`` hook; see :class:`CaptionFormat`.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polycap.errors import BadInput, warn
from polycap.parts import CaptionFormat as CaptionFormat  # re-exported: their former home
from polycap.parts import CaptionRecord as CaptionRecord

SNIFF_BYTES = 4096


@dataclass
class CaptionSet:
    """Caption records read from ``source``; ``missing`` lists images that did not exist."""

    records: list[CaptionRecord]
    source: Path | None = None
    missing: list[Path] = field(default_factory=list)

    def images(self) -> list[Path]:
        """Unique image paths, in first-seen order."""
        return list(self.by_image())

    def by_image(self) -> dict[Path, list[str]]:
        """Image path -> its captions, images in first-seen order."""
        grouped: dict[Path, list[str]] = {}
        for record in self.records:
            grouped.setdefault(record.image, []).append(record.caption)
        return grouped

    def captions(self) -> list[str]:
        """All captions, in record order."""
        return [record.caption for record in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[CaptionRecord]:
        return iter(self.records)


# -- loading -----------------------------------------------------------------------------


_outside = {"allowed": False}


def allow_images_outside(allowed: bool) -> None:
    """Whether records may name images outside their image folder, for this process (the
    CLI's ``--allow-outside-images``); :func:`load_captions` refuses them by default."""
    _outside["allowed"] = bool(allowed)


def load_captions(
    path: str | Path,
    images_dir: str | Path | None = None,
    format: str | None = None,
    allow_outside: bool | None = None,
    selection: CaptionSelection | None = None,
) -> CaptionSet:
    """Read a caption file; images that do not exist are skipped, counted and warned about.

    ``format`` is a registered format name; without it the format is chosen by suffix and,
    where several formats share a suffix, by sniffing the file's start. A record whose image
    resolves outside the image folder (``images_dir``, else the caption file's folder), by
    ``..`` or an absolute path, is BadInput naming the record, unless ``allow_outside``
    (default: the process setting, see :func:`allow_images_outside`). ``selection`` picks
    the language and split of multilingual or split files (default: the process setting,
    see :func:`set_caption_language`,
    :func:`set_caption_split`).
    """
    path = Path(path)
    chosen = selection if selection is not None else caption_selection()
    reader = None if path.is_file() else _source_format(path, format)
    if not path.is_file() and reader is None:
        what = "is a folder, not a caption file" if path.is_dir() else "no such caption file"
        raise BadInput(f"{path}: {what}")
    directory = Path(images_dir) if images_dir is not None else None
    if directory is not None and not directory.is_dir():
        raise BadInput(f"{directory}: images folder does not exist")
    reader = reader or choose_format(path, format)
    if chosen.split and not getattr(reader, "has_splits", False):
        raise BadInput(
            f"{path}: --split {'+'.join(chosen.split)} given, but format {reader.name!r} "
            "has no splits (the Karpathy file 'dataset_coco.json' has)"
        )
    with _selected(chosen):
        records = reader.read(path, directory)
    if not records:
        raise BadInput(f"{path}: no captions found{chosen.describe()}")
    if not (_outside["allowed"] if allow_outside is None else allow_outside):
        _refuse_outside(path, records, directory if directory is not None else path.parent)
    return _drop_missing_images(path, records)


def _refuse_outside(path: Path, records: list[CaptionRecord], root: Path) -> None:
    """BadInput naming the first record whose image is not inside ``root`` (images a format
    stored from bytes, in :func:`embedded_images_dir`, are inside by construction), by its
    name or, through a symbolic link inside the folder, by where it really is."""
    root = Path(os.path.normpath(os.path.abspath(root)))
    embedded = embedded_images_dir().absolute()
    real_root = Path(os.path.realpath(root))
    real_embedded = Path(os.path.realpath(embedded))
    folders: dict[Path, Path] = {}
    for record in records:
        image = record.image
        if image.is_relative_to(embedded):
            continue
        inside = image.is_relative_to(root)
        if inside:
            real = _real_path(image, folders)
            inside = real.is_relative_to(real_root) or real.is_relative_to(real_embedded)
            if not inside:
                image = Path(f"{record.image} -> {real}")
        if not inside:
            raise BadInput(
                f"{path}: record {record.image_id!r} names an image outside the image folder "
                f"{root} ({image}); pass --allow-outside-images if that is intended"
            )


def _real_path(image: Path, folders: dict[Path, Path]) -> Path:
    """Where ``image`` really is (symbolic links followed); each folder resolved once."""
    if os.path.islink(image):
        return Path(os.path.realpath(image))
    parent = image.parent
    if parent not in folders:
        folders[parent] = Path(os.path.realpath(parent))
    return folders[parent] / image.name


def _source_format(path: Path, name: str | None) -> CaptionFormat | None:
    """The format that reads ``path`` when it is no file (a folder, a shard pattern): the one
    named, or the first whose ``accepts(path)`` (an optional method of formats) says so."""
    from polycap.plugins import get_registries

    registry = get_registries().caption_formats
    formats = [registry.get(name)] if name is not None else [f for _, f in registry.items()]
    for fmt in formats:
        accepts = getattr(fmt, "accepts", None)
        if accepts is not None and accepts(path):
            return fmt
    return None


def choose_format(path: Path, name: str | None = None) -> CaptionFormat:
    """The registered format called ``name``, else the one the file's suffix and start
    (sniffing, where suffixes are shared or unknown) say it is; BadInput when none fits."""
    from polycap.plugins import get_registries

    registry = get_registries().caption_formats
    if name is not None:
        return _named_format(path, name, registry)
    formats = [item for _, item in registry.items()]
    suffix = path.suffix.lower()
    by_suffix = [fmt for fmt in formats if suffix in fmt.suffixes]
    if len(by_suffix) == 1:
        return by_suffix[0]
    others = [fmt for fmt in formats if fmt not in by_suffix]
    for fmt in by_suffix + others:
        try:
            if fmt.sniff(path):
                return fmt
        except OSError as error:
            raise BadInput(f"{path}: cannot read ({error.strerror or error})") from None
    if by_suffix:
        return by_suffix[0]  # its reader explains what is wrong with the file
    raise BadInput(
        f"{path}: unknown caption file format (suffix {suffix or 'none'!r}); "
        f"pass a format: {', '.join(registry.names())}"
    )


def _named_format(path: Path, name: str, registry: Any) -> CaptionFormat:
    """The format ``--format name``; BadInput naming the mismatch when the file is plainly
    another registered format (that one's sniff says so, the named one's does not)."""
    chosen = registry.get(name)
    if not path.is_file() or _sniffs(chosen, path):
        return chosen
    for other_name, other in registry.items():
        if other is not chosen and _sniffs(other, path):
            raise BadInput(
                f"{path}: --format {name} given, but the file is {other_name} "
                f"(by its content); drop --format or pass --format {other_name}"
            )
    return chosen


def _sniffs(fmt: CaptionFormat, path: Path) -> bool:
    try:
        return bool(fmt.sniff(path))
    except Exception:  # noqa: BLE001 - a plugin's sniff failing says "not mine"
        return False


def _drop_missing_images(path: Path, records: list[CaptionRecord]) -> CaptionSet:
    exists: dict[Path, bool] = {}
    for record in records:
        if record.image not in exists:
            exists[record.image] = record.image.is_file()
    missing = [image for image, ok in exists.items() if not ok]
    if missing and len(missing) == len(exists):
        raise BadInput(
            f"{path}: none of the {len(exists)} images it lists exist "
            f"(first: {missing[0]}); is the images folder right?"
        )
    if missing:
        warn(
            f"{len(missing)} of {len(exists)} images listed in {path} are missing; "
            f"skipped (first: {missing[0]})"
        )
        records = [record for record in records if exists[record.image]]
    return CaptionSet(records, path, missing)


# -- which part of a file: language and split -------------------------------------------------


@dataclass(frozen=True)
class CaptionSelection:
    """Which captions of a multilingual or multi-split file to read: ``language`` (a code such
    as ``ja``: the CLI's ``--lang``) and ``split`` (split names such as ``("train",
    "restval")``: the CLI's ``--split train+restval``). None: not chosen."""

    language: str | None = None
    split: tuple[str, ...] | None = None

    def describe(self) -> str:
        """`` for language 'ja', split 'test'`` (empty when nothing is chosen)."""
        parts = []
        if self.language:
            parts.append(f"language {self.language!r}")
        if self.split:
            parts.append(f"split {'+'.join(self.split)!r}")
        return f" for {', '.join(parts)}" if parts else ""


_process_selection = {"value": CaptionSelection()}
_current: contextvars.ContextVar[CaptionSelection | None] = contextvars.ContextVar(
    "polycap_caption_selection", default=None
)


def set_caption_language(language: str | None) -> None:
    """The language multilingual formats read, for this process (the CLI's ``--lang``)."""
    old = _process_selection["value"]
    _process_selection["value"] = CaptionSelection(language, old.split)


def set_caption_split(split: str | Sequence[str] | None) -> None:
    """The split(s) split formats read, for this process (the CLI's ``--split``):
    ``"train+restval"`` or a list of names; None: no split chosen."""
    old = _process_selection["value"]
    _process_selection["value"] = CaptionSelection(old.language, parse_split(split))


def parse_split(value: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``"train+restval"`` / ``"train,restval"`` / ``["train", "restval"]`` -> a tuple."""
    if value is None:
        return None
    names = value.replace(",", "+").split("+") if isinstance(value, str) else list(value)
    cleaned = tuple(name.strip().lower() for name in names if name.strip())
    return cleaned or None


def caption_selection() -> CaptionSelection:
    """The selection in force: the one :func:`load_captions` was given while it reads, else
    the process setting (:func:`set_caption_language`, :func:`set_caption_split`)."""
    return _current.get() or _process_selection["value"]


@contextlib.contextmanager
def _selected(selection: CaptionSelection) -> Iterator[None]:
    token = _current.set(selection)
    try:
        yield
    finally:
        _current.reset(token)


def require_language(path: Path, available: Sequence[str]) -> str:
    """The selected language if ``available`` has it, else BadInput naming the choices (a
    multilingual format cannot guess which language is meant)."""
    language = caption_selection().language
    shown = ", ".join(sorted(available)[:40]) + (", ..." if len(available) > 40 else "")
    if language is None:
        raise BadInput(
            f"{path}: holds captions in {len(available)} languages; pick one with --lang ({shown})"
        )
    if language not in available:
        raise BadInput(f"{path}: no captions in language {language!r}; it has: {shown}")
    return language


# -- helpers for format readers ------------------------------------------------------------

_columns: dict[str, str | None] = {"image": None, "caption": None}


def set_table_columns(image: str | None = None, caption: str | None = None) -> None:
    """The image / caption columns table formats read, for this process (the CLI's
    ``--image-column`` / ``--caption-column``); None: detected."""
    _columns.update(image=image, caption=caption)


def table_columns() -> tuple[str | None, str | None]:
    """(image column, caption column) chosen by :func:`set_table_columns` (None: detect)."""
    return _columns["image"], _columns["caption"]


_cache_root: dict[str, Path | None] = {"root": None}


def set_cache_root(cache_dir: Path | None) -> None:
    """The cache folder chosen for this process (the CLI's ``--cache-dir``); None: the default
    (:func:`polycap.data.encoding.default_cache_dir`). Images embedded in data go there too."""
    _cache_root["root"] = Path(cache_dir).expanduser() if cache_dir is not None else None


def embedded_images_dir() -> Path:
    """Where images stored inside data (bytes columns, tar members) are written once, by
    content hash: ``<cache dir>/embedded-images``, the cache dir being ``--cache-dir`` when
    given (:func:`set_cache_root`), else the default feature cache."""
    from polycap.data.encoding import default_cache_dir

    root = _cache_root["root"]
    return (root if root is not None else default_cache_dir()) / "embedded-images"


def resolve_image(name: str, base: Path) -> Path:
    """``name`` as an absolute path; relative names are taken against ``base``."""
    image = Path(name).expanduser()
    if not image.is_absolute():
        image = base / image
    return Path(os.path.normpath(os.path.abspath(image)))


def read_head(path: Path, size: int = SNIFF_BYTES) -> str:
    """The first ``size`` bytes of a file as text (for sniffing), BOM and spaces stripped."""
    with open(path, "rb") as handle:
        head = handle.read(size)
    return head.decode("utf-8", errors="replace").lstrip("\ufeff").lstrip()


def check_caption(path: Path, where: str, caption: object) -> str:
    """A caption value as a stripped non-empty string, or BadInput naming ``where``."""
    if not isinstance(caption, str):
        raise BadInput(f"{path}: {where}: caption is {type(caption).__name__}, not text")
    caption = caption.strip()
    if not caption:
        raise BadInput(f"{path}: {where}: empty caption")
    return caption


def check_image_name(path: Path, where: str, key: str, value: object) -> str:
    """An image name/path value as a non-empty string, or BadInput naming ``where``."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise BadInput(f"{path}: {where}: {key!r} must be a non-empty file name")
    return value.strip()


# -- splitting ------------------------------------------------------------------------------


def split_by_image(
    captions: CaptionSet, val_fraction: float, seed: int = 0
) -> tuple[CaptionSet, CaptionSet]:
    """(train, val): every image with all its captions goes to exactly one side.

    Images are ranked by a hash of (seed, image id, path), so the split does not depend on
    record order and mostly survives adding images. With 0 < val_fraction < 1 and at least
    two images, each side gets at least one image.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise BadInput(f"validation fraction must be in [0, 1), got {val_fraction}")
    first_id: dict[Path, str] = {}
    for record in captions.records:
        first_id.setdefault(record.image, record.image_id)
    images = list(first_id)
    n_val = round(len(images) * val_fraction)
    if val_fraction > 0 and len(images) >= 2:
        n_val = min(max(n_val, 1), len(images) - 1)
    elif len(images) < 2:
        n_val = 0

    def rank(image: Path) -> tuple[str, str]:
        digest = hashlib.sha256(f"{seed}\0{first_id[image]}".encode()).hexdigest()
        return digest, str(image)

    val_images = set(sorted(images, key=rank)[:n_val])
    train = [record for record in captions.records if record.image not in val_images]
    val = [record for record in captions.records if record.image in val_images]
    return (
        CaptionSet(train, captions.source, list(captions.missing)),
        CaptionSet(val, captions.source, []),
    )
