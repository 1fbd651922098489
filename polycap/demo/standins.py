"""Tiny stand-ins for the real benchmark files, in their release layouts, with tiny models: the
evaluation recipe of docs/evaluation.md runs end to end on them with no download.

``python -m polycap.demo.standins OUT --lang ja`` writes

- ``OUT/stair/stair_captions_v1.2_train.json`` (STAIR Captions' COCO layout) and its images as
  ``OUT/coco/train2014/COCO_train2014_<id:012>.jpg`` (where COCO's images go);
- ``OUT/xm3600/captions.jsonl`` (Crossmodal-3600's layout, a line per image with captions in
  every installed language that has a demo lexicon) and ``OUT/xm3600/images/<key>.jpg``;
- ``OUT/models/``: a tiny decoder (the pack's tokenizer class) and a tiny CLIP, and prints the
  ``--lm`` / ``--encoder`` / ``--pretrained`` options that stand in for the real ones.

Images are the synthetic coloured shapes of :mod:`polycap.offline.synthetic`, so a captioner
trained on the STAIR stand-in can caption the XM3600 stand-in.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from pathlib import Path
from typing import Any

from polycap.offline.synthetic import make_synthetic_set
from polycap.util.atomic import write_json, write_text

STAIR_FILE = "stair_captions_v1.2_train.json"


def write_stair(pack: Any, root: Path, n_images: int, seed: int = 0) -> Path:
    """STAIR Captions' layout: ``{"images": [{id, file_name}], "annotations": [{id, image_id,
    caption, tokenized_caption}]}``, images under ``root/coco/train2014``."""
    split = make_synthetic_set(
        pack, root / "synthetic-stair", n_images, seed=seed, test_fraction=0.0001
    )
    images_dir = root / "coco" / "train2014"
    images_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for number, name in enumerate(split.train_images, start=1):
        image_id = 100000 + number
        file_name = f"COCO_train2014_{image_id:012d}.jpg"
        _to_jpeg(split.image_dir / name, images_dir / file_name)
        images.append({"license": 4, "file_name": file_name, "id": image_id})
        for text in split.captions[name]:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "caption": text,
                    "tokenized_caption": " ".join(pack.eval_tokenize(text)),
                }
            )
    path = root / "stair" / STAIR_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"annotations": annotations, "images": images})
    return path


def write_xm3600(packs: dict[str, Any], root: Path, n_images: int, seed: int = 1) -> Path:
    """XM3600's layout: ``captions.jsonl``, one line per image with ``image/key``,
    ``image/locale`` and per language ``{"caption", "caption/tokenized",
    "caption/tokenized/lowercase"}``; images ``images/<key>.jpg``. The images and their truths
    come from the first pack's synthetic set; every pack captions them."""
    first = next(iter(packs.values()))
    split = make_synthetic_set(first, root / "synthetic-xm3600", n_images, seed=seed)
    images_dir = root / "xm3600" / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    lines = []
    for name in split.train_images + split.test_images:
        key = hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()[:16]
        _to_jpeg(split.image_dir / name, images_dir / f"{key}.jpg")
        colour, shape, count = split.truths[name]
        line: dict[str, Any] = {"image/key": key, "image/locale": first.code}
        for code, pack in packs.items():
            texts = list(
                dict.fromkeys(pack.demo.describe(colour, shape, count, rng) for _ in range(4))
            )[:2]
            tokenized = [" ".join(pack.eval_tokenize(t)) for t in texts]
            line[code] = {
                "caption": texts,
                "caption/tokenized": tokenized,
                "caption/tokenized/lowercase": [t.lower() for t in tokenized],
            }
        lines.append(json.dumps(line, ensure_ascii=False))
    path = root / "xm3600" / "captions.jsonl"
    write_text(path, "\n".join(lines) + "\n")
    return path


def _to_jpeg(source: Path, target: Path) -> None:
    from PIL import Image

    with Image.open(source) as image:
        image.convert("RGB").save(target, format="JPEG", quality=95)


def write_standins(
    language: str, root: Path, n_train: int = 120, n_eval: int = 24
) -> dict[str, str]:
    """All stand-ins under ``root`` for ``language`` (see the module docstring); returns the
    paths and the options that stand in for the real models."""
    from polycap.offline import tiny
    from polycap.plugins import get_registries

    registry = get_registries().languages
    pack = registry.get(language)
    packs = {language: pack}
    packs.update(
        {code: p for code, p in registry.items() if p.demo is not None and code != language}
    )
    stair = write_stair(pack, root, n_train)
    xm3600 = write_xm3600(packs, root, n_eval)
    captions = [item["caption"] for item in json.loads(stair.read_text())["annotations"]]
    # as polycap.demo.runner.build_tiny_models does (this module may not import the top layer)
    tokenizer_dir = pack.build_tiny_tokenizer(captions, root / "models" / "lm")
    lm = tiny.build_gpt2(pack.load_tokenizer(str(tokenizer_dir)), root / "models" / "lm", seed=0)
    clip_name, clip_weights = tiny.build_clip(root / "models" / "clip", seed=0)
    models = {"lm": str(lm), "encoder": clip_name, "pretrained": str(clip_weights)}
    return {
        "stair": str(stair),
        "coco_images": str(root / "coco" / "train2014"),
        "xm3600": str(xm3600),
        **models,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--lang", default="ja")
    parser.add_argument("--images", type=int, default=120, help="training images (STAIR stand-in)")
    args = parser.parse_args(argv)
    made = write_standins(args.lang, args.output, n_train=args.images)
    for key, value in made.items():
        print(f"{key}: {value}")
    print(
        f"stand-in options: --lm {made['lm']} --encoder {made['encoder']} "
        f"--pretrained {made['pretrained']}"
    )


if __name__ == "__main__":
    main()
