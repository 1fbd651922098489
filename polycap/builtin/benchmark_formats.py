"""The standard multilingual captioning sets in their release layouts, as caption formats.

- ``xm3600``: Crossmodal-3600's ``captions.jsonl``: one line per image with ``image/key``,
  ``image/locale`` and, per language code, ``{"caption": [...], "caption/tokenized": [...],
  "caption/tokenized/lowercase": [...]}``; images ``images/<key>.jpg`` beside it.
- ``coco-35l`` / ``cc3m-35l``: the machine translations released with XM3600
  (``coco_mt_{train,dev}.jsonl``, ``cc3m_mt_{train,dev}.jsonl``): one caption per line with
  ``image_id`` (COCO: ``<cocoid>_<n>``) or ``rec_num`` (CC3M: 1-based row of the CC3M split),
  ``src_lang``, ``trg_lang``, ``caption_tokenized`` (English source), ``translation_tokenized``.
- ``karpathy``: Karpathy's split file (``dataset_coco.json``, also the Flickr8k/30k ones):
  ``images: [{filepath, filename, split, sentences: [{raw, tokens}], cocoid}]``, split chosen
  by ``--split`` (``train+restval`` is the usual training set).
- ``stair-captions``: STAIR Captions (COCO layout, Japanese); the ``coco`` format reads the same
  files, this name also checks that the language asked for is Japanese.

The language is the one chosen for the run (``--lang``, see
:func:`polycap.data.captions.caption_selection`). Images that a release does not ship are looked
up where the usual downloads put them (see each reader); a missing image is skipped and counted
by :func:`polycap.data.captions.load_captions`, like any other.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from polycap.builtin.formats import CocoJson, _check_object, _load_json, _type_name
from polycap.data.captions import (
    caption_selection,
    check_caption,
    read_head,
    require_language,
    resolve_image,
)
from polycap.errors import BadInput
from polycap.hookspecs import Register, hookimpl
from polycap.parts import CaptionRecord

# the 36 languages of XM3600 (COCO-35L / CC3M-35L: the same less quz)
XM3600_LANGUAGES = frozenset(
    ("ar", "bn", "cs", "da", "de", "el", "en", "es", "fa", "fi", "fil", "fr")
    + ("he", "hi", "hr", "hu", "id", "it", "ja", "ko", "mi", "nl", "no", "pl")
    + ("pt", "quz", "ro", "ru", "sv", "sw", "te", "th", "tr", "uk", "vi", "zh")
)


@hookimpl
def register_caption_formats(register: Register) -> None:
    """XM3600, COCO-35L, CC3M-35L, Karpathy splits, STAIR Captions."""
    register("xm3600", Crossmodal3600())
    register("coco-35l", Translations35("coco-35l", "image_id"))
    register("cc3m-35l", Translations35("cc3m-35l", "rec_num"))
    register("karpathy", KarpathySplits())
    register("stair-captions", StairCaptions())


def _json_lines(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, object) for every non-empty line; BadInput naming the line otherwise."""
    try:
        with open(path, encoding="utf-8-sig") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                where = f"line {number}"
                try:
                    item = json.loads(line)
                except json.JSONDecodeError as error:
                    raise BadInput(f"{path}: {where}: invalid JSON ({error.msg})") from None
                if not isinstance(item, dict):
                    raise BadInput(f"{path}: {where}: expected an object, found {_type_name(item)}")
                yield where, item
    except UnicodeDecodeError:
        raise BadInput(f"{path}: not UTF-8 text") from None


def _first_object(path: Path) -> dict[str, Any] | None:
    lines = read_head(path).splitlines()
    try:
        first = json.loads(lines[0]) if lines else None
    except json.JSONDecodeError:
        return None
    return first if isinstance(first, dict) else None


def _images_folder(path: Path, images_dir: Path | None) -> Path:
    """``images_dir``, else ``images/`` beside the file when it exists, else the file's folder."""
    if images_dir is not None:
        return images_dir
    beside = path.parent / "images"
    return beside if beside.is_dir() else path.parent


class Crossmodal3600:
    """XM3600 ``captions.jsonl`` (google/crossmodal-3600); images ``images/<image/key>.jpg``."""

    name = "xm3600"
    suffixes = (".jsonl",)

    def sniff(self, path: Path) -> bool:
        first = _first_object(path)
        return first is not None and "image/key" in first

    def read(self, path: Path, images_dir: Path | None) -> list[CaptionRecord]:
        base = _images_folder(path, images_dir)
        lines = list(_json_lines(path))
        languages = {
            key for _, item in lines for key, value in item.items() if isinstance(value, dict)
        }
        language = require_language(path, sorted(languages))
        records = []
        for where, item in lines:
            _check_object(path, where, item, ("image/key",))
            key = str(item["image/key"])
            entry = item.get(language)
            if entry is None:
                continue  # an image without captions in this language
            captions = entry.get("caption") if isinstance(entry, dict) else None
            if not isinstance(captions, list):
                raise BadInput(f"{path}: {where}: {language!r} has no 'caption' list")
            image = resolve_image(f"{key}.jpg", base)
            for caption in captions:
                records.append(CaptionRecord(image, check_caption(path, where, caption), key))
        return records


class Translations35:
    """COCO-35L / CC3M-35L JSONL (one translated caption per line, ``trg_lang`` its language;
    English is the ``caption_tokenized`` source, each once).

    COCO images: ``image_id`` is ``<cocoid>_<n>``; the file is looked up as
    ``[train2014/|val2014/]COCO_{train,val}2014_<cocoid:012>.jpg`` or ``<cocoid:012>.jpg`` under
    the images folder (``--images``, else ``images/`` beside the file, else its folder). CC3M
    images: ``<rec_num>.jpg`` there (CC3M ships URLs, not files: name the downloads so).
    """

    suffixes = (".jsonl",)

    def __init__(self, name: str, key: str) -> None:
        self.name = name
        self.key = key

    def sniff(self, path: Path) -> bool:
        first = _first_object(path)
        return first is not None and "trg_lang" in first and self.key in first

    def read(self, path: Path, images_dir: Path | None) -> list[CaptionRecord]:
        base = _images_folder(path, images_dir)
        lines = list(_json_lines(path))
        targets = {str(item.get("trg_lang")) for _, item in lines if "trg_lang" in item}
        language = require_language(path, sorted(targets | {"en"}))
        records: list[CaptionRecord] = []
        seen: set[str] = set()
        images: dict[str, Path] = {}
        for where, item in lines:
            _check_object(path, where, item, (self.key, "trg_lang"))
            record_id = str(item[self.key])
            if language == "en":
                if record_id in seen:
                    continue  # the English source repeats once per target language
                seen.add(record_id)
                field = "caption_tokenized"
            elif item["trg_lang"] == language:
                field = "translation_tokenized"
            else:
                continue
            if field not in item:
                raise BadInput(f"{path}: {where}: missing key {field!r}")
            image_key = record_id.split("_")[0] if self.key == "image_id" else record_id
            if image_key not in images:
                images[image_key] = self._image(image_key, base)
            caption = check_caption(path, where, item[field])
            records.append(CaptionRecord(images[image_key], caption, image_key))
        return records

    def _image(self, image_key: str, base: Path) -> Path:
        if self.key != "image_id" or not image_key.isdigit():
            return resolve_image(f"{image_key}.jpg", base)
        number = f"{int(image_key):012d}"
        candidates = [
            f"{folder}COCO_{split}2014_{number}.jpg"
            for split in ("train", "val")
            for folder in (f"{split}2014/", "")
        ] + [f"{number}.jpg"]
        paths = [resolve_image(name, base) for name in candidates]
        return next((p for p in paths if p.is_file()), paths[0])


class KarpathySplits:
    """Karpathy's ``dataset_coco.json`` (and ``dataset_flickr8k/30k.json``): images
    ``<images>/<filepath>/<filename>`` (``filepath`` is ``train2014``/``val2014`` for COCO),
    captions the ``raw`` sentences, split chosen by ``--split`` (required)."""

    name = "karpathy"
    suffixes = (".json",)
    has_splits = True

    def sniff(self, path: Path) -> bool:
        head = read_head(path)
        return head.startswith("{") and '"sentences"' in head and '"split"' in head

    def read(self, path: Path, images_dir: Path | None) -> list[CaptionRecord]:
        data = _load_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise BadInput(f"{path}: expected an object with an 'images' list (Karpathy's layout)")
        present = sorted({str(i.get("split")) for i in data["images"] if isinstance(i, dict)})
        wanted = caption_selection().split
        if not wanted:
            raise BadInput(
                f"{path}: holds the splits {', '.join(present)}; pick with --split "
                "(e.g. --split test, or --split train+restval for training)"
            )
        unknown = [name for name in wanted if name not in present]
        if unknown:
            raise BadInput(f"{path}: no split {unknown[0]!r}; it has: {', '.join(present)}")
        base = images_dir if images_dir is not None else path.parent
        records = []
        for index, image in enumerate(data["images"]):
            where = f"images[{index}]"
            _check_object(path, where, image, ("filename", "split", "sentences"))
            if image["split"] not in wanted:
                continue
            name = f"{image.get('filepath') or ''}/{image['filename']}".lstrip("/")
            image_id = str(image.get("cocoid", image.get("imgid", image["filename"])))
            file = resolve_image(name, base)
            for number, sentence in enumerate(image["sentences"]):
                raw = sentence.get("raw") if isinstance(sentence, dict) else None
                if raw is None and isinstance(sentence, dict):
                    raw = " ".join(sentence.get("tokens") or [])
                caption = check_caption(path, f"{where}.sentences[{number}]", raw)
                records.append(CaptionRecord(file, caption, image_id))
        return records


class StairCaptions(CocoJson):
    """STAIR Captions (``stair_captions_v1.2_train.json``): the COCO layout, Japanese captions
    (``caption``; ``tokenized_caption`` is ignored: polycap segments with the pack)."""

    name = "stair-captions"
    suffixes = (".json",)

    def sniff(self, path: Path) -> bool:
        return '"tokenized_caption"' in read_head(path) and super().sniff(path)

    def read(self, path: Path, images_dir: Path | None) -> list[CaptionRecord]:
        language = caption_selection().language
        if language not in (None, "ja"):
            raise BadInput(f"{path}: STAIR Captions are Japanese; --lang is {language!r}")
        return super().read(path, images_dir)
