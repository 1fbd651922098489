"""Options shared by the commands, spelt once (``typing.Annotated`` types for Typer).

A command declares ``device: Device = "auto"``; names, short flags and help live here. The
output folder or file of every command is ``--output/-o``; older spellings (``--out``,
``--workdir``) stay accepted as hidden aliases (:func:`output_alias`, :func:`chosen_output`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from polycap.data.captions import (
    allow_images_outside,
    set_cache_root,
    set_caption_language,
    set_caption_split,
    set_table_columns,
    table_columns,
)
from polycap.data.images import DEFAULT_MAX_PIXELS, set_max_pixels
from polycap.errors import BadInput
from polycap.util.atomic import check_writable_folder


def none_or_text(value: str | None) -> str | None:
    """``"none"`` (any case) -> None: how options say "no weights" / "nothing"."""
    return None if value is None or value.lower() == "none" else value


def split_names(value: str | None) -> list[str] | None:
    """``"bleu, cider"`` -> ``["bleu", "cider"]``; absent -> None (= all)."""
    return [name.strip() for name in value.split(",") if name.strip()] if value else None


def output_option(help: str) -> typer.models.OptionInfo:
    """``--output/-o`` with this command's ``help``."""
    return typer.Option("--output", "-o", help=help)


def output_alias(spelling: str) -> typer.models.OptionInfo:
    """A hidden old spelling of ``--output`` (e.g. ``--out``), kept for scripts and docs."""
    return typer.Option(spelling, hidden=True, help="Same as --output.")


def chosen_output(output: Path | None, *aliases: Path | None) -> Path:
    """The output folder given as ``--output`` or one of its aliases; BadInput if none."""
    given = [path for path in (output, *aliases) if path is not None]
    if len(given) > 1:
        raise BadInput("--output is given twice (once as an old spelling); give it once")
    if not given:
        raise BadInput("missing option --output/-o")
    return given[0]


def _apply_lang(value: str | None) -> str | None:
    """``--lang`` is also the language multilingual caption files (XM3600, COCO-35L) are read in."""
    set_caption_language(value)
    return value


Lang = Annotated[
    str,
    typer.Option("--lang", "-l", callback=_apply_lang, help="Language pack code, e.g. ja, ru, zh."),
]
OptionalLang = Annotated[
    str | None,
    typer.Option(
        "--lang",
        "-l",
        callback=_apply_lang,
        help="Language pack (default: the model's; needed with -p); also the language "
        "multilingual caption files are read in.",
    ),
]


def _apply_split(value: str | None) -> str | None:
    set_caption_split(value)
    return value


Split = Annotated[
    str | None,
    typer.Option(
        "--split",
        callback=_apply_split,
        help="Split(s) of a split file such as Karpathy's dataset_coco.json: train, restval, "
        "val, test, or several joined by '+' (train+restval: the usual 113,287 training images).",
    ),
]
# train's --lang may come from its --config file instead
TrainLang = Annotated[
    str | None,
    typer.Option(
        "--lang",
        "-l",
        callback=_apply_lang,
        help="Language pack code, e.g. ja, ru, zh (or lang in --config).",
    ),
]
Images = Annotated[
    Path | None,
    typer.Option("--images", help="Folder the caption file's image names are relative to."),
]
DataFormat = Annotated[
    str | None, typer.Option("--format", help="Caption file format (default: by suffix/content).")
]
Encoder = Annotated[str, typer.Option("--encoder", help="open_clip model name (or backend:model).")]
Pretrained = Annotated[
    str | None,
    typer.Option(
        "--pretrained",
        parser=none_or_text,
        help="open_clip pretrained tag, a local weights file, or 'none'.",
    ),
]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1)]
Device = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:1 … (auto: GPU if any).")]


def _check_cache_dir(value: Path | None) -> Path | None:
    if value is not None:
        check_writable_folder(value.expanduser(), "--cache-dir")
    set_cache_root(value)  # images embedded in Parquet/webdataset data are stored there too
    return value


CacheDir = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir",
        callback=_check_cache_dir,
        help="Image feature cache, and where images embedded in Parquet/webdataset data are "
        "stored (default ~/.cache/polycap/features, or $POLYCAP_CACHE_DIR).",
    ),
]
JsonOutput = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
Metrics = Annotated[
    str | None,
    typer.Option(
        "--metrics", help="Comma-separated metric names (default: all; see 'polycap plugins list')."
    ),
]
ClipPretrained = Annotated[
    str | None,
    typer.Option(
        "--clip-pretrained",
        parser=none_or_text,
        help="CLIPScore weights: tag, local file, or 'none'.",
    ),
]
ClipDownload = Annotated[
    bool, typer.Option("--clip-download", help="Download the CLIPScore weights if not cached yet.")
]
Beams = Annotated[int, typer.Option("--beams", min=1, help="Beam width (1 = greedy).")]
MaxLength = Annotated[int, typer.Option("--max-length", min=1, help="Most tokens per caption.")]


def _apply_max_pixels(value: int) -> int:
    set_max_pixels(value)
    return value


MAX_PIXELS = DEFAULT_MAX_PIXELS  # the default of MaxPixels
MaxPixels = Annotated[
    int,
    typer.Option(
        "--max-pixels",
        min=1,
        callback=_apply_max_pixels,
        help="Skip images with more pixels than this (width x height; a decompression-bomb guard).",
    ),
]


def _apply_allow_outside(value: bool) -> bool:
    allow_images_outside(value)
    return value


AllowOutside = Annotated[
    bool,
    typer.Option(
        "--allow-outside-images",
        callback=_apply_allow_outside,
        help="Accept caption records whose image lies outside the image folder "
        "(a '..' or absolute path); refused by default.",
    ),
]


def _apply_image_column(value: str | None) -> str | None:
    set_table_columns(image=value, caption=table_columns()[1])
    return value


def _apply_caption_column(value: str | None) -> str | None:
    set_table_columns(image=table_columns()[0], caption=value)
    return value


ImageColumn = Annotated[
    str | None,
    typer.Option(
        "--image-column",
        callback=_apply_image_column,
        help="Parquet/Arrow/saved-dataset column with the images (bytes or file names); "
        "default: detected.",
    ),
]
CaptionColumn = Annotated[
    str | None,
    typer.Option(
        "--caption-column",
        callback=_apply_caption_column,
        help="Column with the captions (text or list of texts); default: detected.",
    ),
]
DATA_HELP = (
    "Caption data: captions.json, COCO json (STAIR Captions), CSV/TSV, JSONL, Parquet, Arrow, a "
    "datasets.save_to_disk folder, webdataset .tar shards (a file, folder or {00..09} pattern), "
    "or a benchmark's release file: XM3600 captions.jsonl, COCO-35L/CC3M-35L JSONL, Karpathy's "
    "dataset_coco.json (with --split)."
)
