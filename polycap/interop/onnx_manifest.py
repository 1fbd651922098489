"""An ONNX export's manifest checked on open: every key there, of its type, every path inside.

An export downloaded from the Hub is data from someone else: a manifest missing a key, with a
prefix length of ``"12"`` or ``12.5``, or naming a graph ``../../somewhere.onnx`` (or a link
that leads out of the folder) is refused with one line naming the manifest, before anything is
loaded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from polycap.errors import BadInput

COUNTS = ("stop_token_id", "pad_token_id", "prefix_length", "lm_dim", "vocab_size")
PAST = ("layers", "heads", "head_dim")
REQUIRED_GRAPHS = ("mapper", "decoder")


def check_manifest(path: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """``manifest`` (read from ``path``) when complete and confined to its folder; else
    BadInput naming ``path`` and the first problem."""
    folder = path.parent
    for key in ("language", "tokenizer"):
        _need(path, manifest, key, str)
    for key in ("graphs", "encoder", "past", "checkpoint"):
        _need(path, manifest, key, dict)
    for key in COUNTS:
        _count(path, manifest, key, minimum=0 if key.endswith("_id") else 1)
    for key in PAST:
        _count(path, manifest["past"], key, minimum=1, name=f"past.{key}")
    graphs = manifest["graphs"]
    for key in REQUIRED_GRAPHS:
        _need(path, graphs, key, str, name=f"graphs.{key}")
    encoder_graph = graphs.get("image_encoder")
    if encoder_graph is not None:
        _need(path, graphs, "image_encoder", str, name="graphs.image_encoder")
        _need(path, manifest["encoder"], "preprocess", dict, name="encoder.preprocess")
        _need(path, manifest["encoder"], "name", str, name="encoder.name")
    named = [graphs[key] for key in REQUIRED_GRAPHS] + [encoder_graph, manifest["tokenizer"]]
    for relative in named:
        if relative is not None:
            inside(path, folder, relative)
    return manifest


def inside(manifest: Path, folder: Path, relative: str) -> Path:
    """``folder / relative`` when it stays inside ``folder`` (links followed); else BadInput."""
    target = folder / relative
    real_folder = os.path.realpath(folder)
    real = os.path.realpath(target)
    if Path(relative).is_absolute() or os.path.commonpath([real_folder, real]) != real_folder:
        raise BadInput(
            f"{manifest}: names {relative!r}, outside the export's folder; refused (an export "
            "reads only its own files)"
        )
    return target


def _need(path: Path, record: dict[str, Any], key: str, kind: type, name: str = "") -> None:
    name = name or key
    if key not in record:
        raise BadInput(f"{path}: no {name!r}; the ONNX export is incomplete or damaged")
    if not isinstance(record[key], kind):
        raise BadInput(
            f"{path}: {name!r} is {record[key]!r}, not a {kind.__name__}; the export is damaged"
        )


def _count(path: Path, record: dict[str, Any], key: str, minimum: int, name: str = "") -> None:
    name = name or key
    value = record.get(key)
    if key not in record:
        raise BadInput(f"{path}: no {name!r}; the ONNX export is incomplete or damaged")
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise BadInput(
            f"{path}: {name!r} is {value!r}, not a whole number of at least {minimum}; "
            "the export is damaged"
        )
