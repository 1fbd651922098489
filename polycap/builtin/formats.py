"""Built-in caption-file formats: captions.json, COCO-style json, CSV, TSV, JSON Lines."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polycap.data.captions import check_caption, check_image_name, read_head, resolve_image
from polycap.errors import BadInput
from polycap.hookspecs import Register, hookimpl
from polycap.parts import CaptionRecord

IMAGE_KEYS = (
    "image",
    "image_name",
    "image_path",
    "file",
    "file_name",
    "filename",
    "filepath",
    "path",
)
CAPTION_KEYS = ("caption", "text", "sentence")


@hookimpl
def register_caption_formats(register: Register) -> None:
    """The five built-in formats."""
    register("captions-json", CaptionsJson())
    register("coco", CocoJson())
    register("csv", Delimited("csv", (".csv",), ","))
    register("tsv", Delimited("tsv", (".tsv", ".tab"), "\t"))
    register("jsonl", JsonLines())


def _load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8-sig") as handle:
            return json.load(handle)
    except UnicodeDecodeError:
        raise BadInput(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as error:
        hint = " (one object per line? use format 'jsonl')" if error.msg == "Extra data" else ""
        raise BadInput(
            f"{path}: invalid JSON at line {error.lineno}, column {error.colno}: {error.msg}{hint}"
        ) from None


def _check_object(path: Path, where: str, item: Any, keys: tuple[str, ...]) -> None:
    """BadInput naming ``path`` and ``where`` unless ``item`` is an object with ``keys``."""
    if not isinstance(item, dict):
        raise BadInput(f"{path}: {where}: expected an object, found {_type_name(item)}")
    for key in keys:
        if key not in item:
            raise BadInput(f"{path}: {where}: missing key {key!r}")


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string"}.get(
        type(value), type(value).__name__
    )


def _first_key(item: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    return next((key for key in keys if key in item), None)


class CaptionsJson:
    """The Japanese ClipCap ``captions.json``: a list of ``{"caption", "id", "image_name"}``.

    Images are looked up in ``images_dir``, else in a folder ``images`` next to the file if
    there is one, else next to the file.
    """

    name = "captions-json"
    suffixes = (".json",)

    def sniff(self, path: Path) -> bool:
        return read_head(path).startswith("[")

    def read(self, path: Path, images_dir: Path | None) -> list[CaptionRecord]:
        data = _load_json(path)
        if not isinstance(data, list):
            raise BadInput(
                f"{path}: expected a JSON list of {{caption, image_name}} objects, "
                f"found {_type_name(data)}"
            )
        if images_dir is None:
            images_dir = path.parent / "images"
            if not images_dir.is_dir():
                images_dir = path.parent
        records = []
        for index, item in enumerate(data):
            where = f"item [{index}]"
            _check_object(path, where, item, ("caption",))
            key = _first_key(item, IMAGE_KEYS)
            if key is None:
                raise BadInput(f"{path}: {where}: missing key 'image_name'")
            name = check_image_name(path, where, key, item[key])
            caption = check_caption(path, where, item["caption"])
            records.append(CaptionRecord(resolve_image(name, images_dir), caption, name))
        return records


class CocoJson:
    """COCO-style captions (also STAIR Captions, YJ Captions): an object with
    ``images: [{id, file_name}]`` and ``annotations: [{image_id, caption}]``."""

    name = "coco"
    suffixes = (".json",)

    def sniff(self, path: Path) -> bool:
        head = read_head(path)
        if not head.startswith("{"):
            return False
        if '"sentences"' in head and '"annotations"' not in head:
            return False  # Karpathy's split file (format 'karpathy') also has 'images'
        return '"annotations"' in head or '"images"' in head

    def read(self, path: Path, images_dir: Path | None) -> list[CaptionRecord]:
        data = _load_json(path)
        if not isinstance(data, dict):
            raise BadInput(
                f"{path}: expected a JSON object with 'images' and 'annotations', "
                f"found {_type_name(data)}"
            )
        for key in ("images", "annotations"):
            if key not in data:
                raise BadInput(f"{path}: missing key {key!r}")
            if not isinstance(data[key], list):
                raise BadInput(f"{path}: {key!r} must be a list, found {_type_name(data[key])}")
        base = images_dir if images_dir is not None else path.parent
        files: dict[str, Path] = {}
        first: dict[str, int] = {}
        for index, image in enumerate(data["images"]):
            where = f"images[{index}]"
            _check_object(path, where, image, ("id", "file_name"))
            name = check_image_name(path, where, "file_name", image["file_name"])
            key = str(image["id"])
            if key in first:
                earlier = data["images"][first[key]]["file_name"]
                raise BadInput(
                    f"{path}: images[{first[key]}] ({earlier!r}) and {where} ({name!r}) "
                    f"have the same id {image['id']!r}"
                )
            first[key] = index
            files[key] = resolve_image(name, base)
        records = []
        for index, note in enumerate(data["annotations"]):
            where = f"annotations[{index}]"
            _check_object(path, where, note, ("image_id", "caption"))
            image_id = str(note["image_id"])
            if image_id not in files:
                raise BadInput(f"{path}: {where}: image_id {note['image_id']!r} is not in 'images'")
            caption = check_caption(path, where, note["caption"])
            records.append(CaptionRecord(files[image_id], caption, image_id))
        return records


@dataclass(frozen=True)
class Delimited:
    """CSV or TSV with a header row naming an image column and a caption column
    (case-insensitive; see ``IMAGE_KEYS`` and ``CAPTION_KEYS``)."""

    name: str
    suffixes: tuple[str, ...]
    delimiter: str

    def sniff(self, path: Path) -> bool:
        lines = read_head(path).splitlines()
        if not lines:
            return False
        header = [cell.strip().lower() for cell in lines[0].split(self.delimiter)]
        return any(k in header for k in IMAGE_KEYS) and any(k in header for k in CAPTION_KEYS)

    def read(self, path: Path, images_dir: Path | None) -> list[CaptionRecord]:
        base = images_dir if images_dir is not None else path.parent
        dialect = csv.excel_tab if self.delimiter == "\t" else csv.excel
        records = []
        try:
            with open(path, encoding="utf-8-sig", newline="") as handle:
                reader = csv.reader(handle, dialect)
                header = next(reader, None)
                if header is None:
                    raise BadInput(f"{path}: empty file (expected a header row)")
                image_col, caption_col = self._columns(path, header)
                for row in reader:
                    if not any(cell.strip() for cell in row):
                        continue
                    where = f"line {reader.line_num}"
                    if len(row) <= max(image_col, caption_col):
                        raise BadInput(
                            f"{path}: {where}: expected {len(header)} columns, found {len(row)}"
                        )
                    name = check_image_name(path, where, header[image_col], row[image_col])
                    caption = check_caption(path, where, row[caption_col])
                    records.append(CaptionRecord(resolve_image(name, base), caption, name))
        except UnicodeDecodeError:
            raise BadInput(f"{path}: not UTF-8 text") from None
        except csv.Error as error:
            raise BadInput(f"{path}: line {reader.line_num}: {error}") from None
        return records

    @staticmethod
    def _columns(path: Path, header: list[str]) -> tuple[int, int]:
        names = [cell.strip().lower() for cell in header]
        found = []
        for what, keys in (("image", IMAGE_KEYS), ("caption", CAPTION_KEYS)):
            index = next((names.index(key) for key in keys if key in names), None)
            if index is None:
                shown = ", ".join(header[:12]) + (", ..." if len(header) > 12 else "")
                raise BadInput(
                    f"{path}: no {what} column (expected one of: {', '.join(keys)}); "
                    f"columns are: {shown}"
                )
            found.append(index)
        return found[0], found[1]


class JsonLines:
    """One JSON object per line: an image key (``image``, ``image_name``, ``file_name``, ...)
    and ``caption`` (or ``captions``: a list of captions for that image)."""

    name = "jsonl"
    suffixes = (".jsonl", ".ndjson")

    def sniff(self, path: Path) -> bool:
        lines = read_head(path).splitlines()
        if not lines:
            return False
        try:
            first = json.loads(lines[0])
        except json.JSONDecodeError:
            return False
        return isinstance(first, dict) and _first_key(first, IMAGE_KEYS) is not None

    def read(self, path: Path, images_dir: Path | None) -> list[CaptionRecord]:
        base = images_dir if images_dir is not None else path.parent
        records = []
        try:
            with open(path, encoding="utf-8-sig") as handle:
                for number, line in enumerate(handle, start=1):
                    if line.strip():
                        records.extend(self._parse(path, f"line {number}", line, base))
        except UnicodeDecodeError:
            raise BadInput(f"{path}: not UTF-8 text") from None
        return records

    @staticmethod
    def _parse(path: Path, where: str, line: str, base: Path) -> list[CaptionRecord]:
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise BadInput(f"{path}: {where}: invalid JSON ({error.msg})") from None
        if not isinstance(item, dict):
            raise BadInput(f"{path}: {where}: expected a JSON object, found {_type_name(item)}")
        key = _first_key(item, IMAGE_KEYS)
        if key is None:
            raise BadInput(
                f"{path}: {where}: missing image key (one of image, image_name, file_name)"
            )
        name = check_image_name(path, where, key, item[key])
        image = resolve_image(name, base)
        if "captions" in item and "caption" not in item:
            captions = item["captions"]
            if not isinstance(captions, list) or not captions:
                raise BadInput(f"{path}: {where}: 'captions' must be a non-empty list")
        else:
            caption_key = _first_key(item, CAPTION_KEYS)
            if caption_key is None:
                raise BadInput(f"{path}: {where}: missing key 'caption'")
            captions = [item[caption_key]]
        return [CaptionRecord(image, check_caption(path, where, c), name) for c in captions]
