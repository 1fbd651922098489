"""Prediction files for ``polycap eval -p``: reading them, and matching them to references."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from polycap.errors import BadInput

if TYPE_CHECKING:
    from polycap.data.captions import CaptionSet

PREDICTION_KEYS = ("image", "image_name", "file_name", "image_id", "id")
PREDICTIONS_HELP = (
    'Predictions file: a JSON list of {"image" (or "image_name"/"file_name"/"image_id"), '
    '"caption"} objects (COCO results format works), the same objects one per line (.jsonl), '
    "a CSV/TSV with columns image and caption, or the --json output of 'polycap caption' or "
    "'polycap retrieve' (first caption). "
    "Images are matched to the references by path, file name or image id."
)


@dataclass
class Prediction:
    """One predicted caption for the image named ``key`` (line/index ``where`` in the file)."""

    key: str
    caption: str
    where: str


def load_predictions(path: Path) -> list[Prediction]:
    """Read a predictions file (see :data:`PREDICTIONS_HELP`); BadInput names file and line."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path}: no such predictions file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise BadInput(f"{path}: cannot read predictions ({error})") from None
    return _reader_for(path)(path, text)


def _reader_for(path: Path) -> Callable[[Path, str], list[Prediction]]:
    """The reader for the caption format the registry recognises (``load_captions``'s
    choice): a format's own ``read_predictions(path)`` if it has one, CSV/TSV by its
    delimiter, JSON lines; JSON for everything else (and when no format fits)."""
    from polycap.data.captions import choose_format

    try:
        found = choose_format(path)
    except BadInput:
        return _predictions_from_json
    own = getattr(found, "read_predictions", None)
    if own is not None:
        return lambda path, _text: list(own(path))
    delimiter = getattr(found, "delimiter", None)
    if isinstance(delimiter, str):
        return lambda path, text: _predictions_from_table(path, text, delimiter)
    if found.name == "jsonl":
        return _predictions_from_lines
    return _predictions_from_json


def _predictions_from_json(path: Path, text: str) -> list[Prediction]:
    """A JSON list of predictions, or the objects one per line (JSON lines with .json)."""
    stripped = text.lstrip()
    if stripped.startswith("{") and "\n{" in stripped.rstrip():
        return _predictions_from_lines(path, text)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise BadInput(f"{path}: line {error.lineno}: not JSON ({error.msg})") from None
    data = _as_prediction_list(data)
    if not isinstance(data, list):
        raise BadInput(f"{path}: expected a JSON list of {{image, caption}} objects")
    return [_prediction(path, f"item {index}", item) for index, item in enumerate(data)]


def _predictions_from_lines(path: Path, text: str) -> list[Prediction]:
    items = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            items.append((f"line {number}", json.loads(line)))
        except json.JSONDecodeError as error:
            raise BadInput(f"{path}: line {number}: not JSON ({error.msg})") from None
    return [_prediction(path, where, item) for where, item in items]


def _as_prediction_list(data: Any) -> Any:
    """The ``--json`` output of ``polycap caption`` / ``retrieve`` and ``{image: caption}``
    objects as a list of ``{image, caption}``; anything else as it is."""
    if isinstance(data, dict) and isinstance(data.get("captions"), list):  # polycap caption --json
        data = [
            {"image": item.get("image"), "caption": (item.get("captions") or [None])[0]}
            if isinstance(item, dict)
            else item
            for item in data["captions"]
        ]
    elif isinstance(data, dict) and isinstance(data.get("results"), list):  # polycap retrieve
        data = [
            {
                "image": item.get("image"),
                "caption": ((item.get("captions") or [{}])[0] or {}).get("caption"),
            }
            if isinstance(item, dict)
            else item
            for item in data["results"]
        ]
    elif isinstance(data, dict) and all(isinstance(v, str) for v in data.values()):
        data = [{"image": key, "caption": value} for key, value in data.items()]
    return data


def _prediction(path: Path, where: str, item: Any) -> Prediction:
    if not isinstance(item, dict):
        raise BadInput(f"{path}: {where}: expected an object with image and caption")
    key = next((item[k] for k in PREDICTION_KEYS if item.get(k) not in (None, "")), None)
    if key is None or isinstance(key, bool) or not isinstance(key, (str, int)):
        raise BadInput(f"{path}: {where}: no image name (keys: {', '.join(PREDICTION_KEYS)})")
    caption = item.get("caption")
    if not isinstance(caption, str):
        raise BadInput(f"{path}: {where}: 'caption' must be text")
    return Prediction(str(key).strip(), caption, where)


def _predictions_from_table(path: Path, text: str, delimiter: str) -> list[Prediction]:
    import csv
    import io

    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    fields = [name.strip().lower() for name in reader.fieldnames or []]
    image_field = next((k for k in PREDICTION_KEYS if k in fields), None)
    if image_field is None or "caption" not in fields:
        raise BadInput(f"{path}: line 1: need columns 'image' and 'caption' (found: {fields})")
    result = []
    for number, row in enumerate(reader, 2):
        row = {(k or "").strip().lower(): v for k, v in row.items()}
        result.append(
            _prediction(
                path,
                f"line {number}",
                {
                    image_field: (row.get(image_field) or "").strip(),
                    "caption": row.get("caption") or "",
                },
            )
        )
    return result


@dataclass
class Matched:
    """Predictions aligned with reference images."""

    images: list[Path]
    predictions: list[str]
    references: list[list[str]]
    unmatched_references: list[Path] = field(default_factory=list)


def match_predictions(
    references: CaptionSet,
    predictions: Sequence[Prediction],
    source: Path | None = None,
    partial: bool = False,
) -> Matched:
    """Align ``predictions`` with the images of a :class:`~polycap.data.captions.CaptionSet`.

    A prediction's image is found by path (absolute, or relative to the predictions file's
    folder or the reference file's folder), else by file name (when unique among the
    references), else by the references' image id. Predictions for unknown images, two
    predictions for one image, or reference images without a prediction (unless ``partial``)
    are BadInput with counts and the first example.
    """
    label = str(source) if source is not None else "predictions"
    by_image = references.by_image()
    lookup = _reference_lookup(references, source)
    chosen: dict[Path, Prediction] = {}
    unknown: list[Prediction] = []
    duplicates: list[Prediction] = []
    for prediction in predictions:
        image = lookup.get(prediction.key) or lookup.get(_normal(prediction.key))
        if image is None:
            unknown.append(prediction)
        elif image in chosen:
            duplicates.append(prediction)
        else:
            chosen[image] = prediction
    if unknown:
        first = unknown[0]
        raise BadInput(
            f"{label}: {len(unknown)} of {len(predictions)} predictions name images that are not "
            f"in the references (first: {first.key!r} at {first.where})"
        )
    if duplicates:
        first = duplicates[0]
        raise BadInput(
            f"{label}: {len(duplicates)} images have more than one prediction "
            f"(first: {first.key!r} at {first.where})"
        )
    missing = [image for image in by_image if image not in chosen]
    if missing and not partial:
        raise BadInput(
            f"{label}: no prediction for {len(missing)} of {len(by_image)} reference images "
            f"(first: {missing[0].name}); pass --partial to score only the predicted images"
        )
    images = [image for image in by_image if image in chosen]
    return Matched(
        images, [chosen[i].caption for i in images], [by_image[i] for i in images], missing
    )


def _normal(key: str) -> str:
    return os.path.normpath(key)


def _reference_lookup(references: CaptionSet, source: Path | None) -> dict[str, Path]:
    lookup: dict[str, Path] = {}
    names: dict[str, list[Path]] = {}
    bases = [p.parent.resolve() for p in (source, references.source) if p is not None]
    for record in references.records:
        image = record.image
        lookup.setdefault(str(image), image)
        for base in bases:
            try:
                lookup.setdefault(os.path.relpath(image, base), image)
            except ValueError:
                continue
        names.setdefault(image.name, [])
        if image not in names[image.name]:
            names[image.name].append(image)
    for record in references.records:
        lookup.setdefault(str(record.image_id), record.image)
    for name, images in names.items():
        if len(images) == 1:
            lookup.setdefault(name, images[0])
    return lookup
