"""Does generation compose colour-shape pairs it never saw? Unseen-pair accuracy over seeds.

The figures behind the threshold in ``tests/test_compare.py``
(``test_compositional_split_generation_composes_retrieval_cannot``): the demo's tiny
captioner trained on a synthetic split whose held-out pairs (red triangle, green circle, blue
square) appear only in the test images, then compared with retrieval from a bank of the
training captions. Run::

    python -m benchmarks.compositional --seeds 0 1 2 3 4          # the test's setup
    python -m benchmarks.compositional --seeds 0 1 2 --images 300 --epochs 10

It prints one row per seed and the minimum / mean, and writes them as JSON (``--output``).
Not part of ``make bench`` (it measures accuracy, not speed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SHAPE_FIRST_ONE = (
    "a {colour} {shape}",
    "a {shape} that is {colour}",
    "one {shape}, coloured {colour}",
    "a single {colour} {shape}",
)
SHAPE_FIRST_MANY = (
    "{number} {colour} {shape}s",
    "{number} {shape}s that are {colour}",
    "{number} {shapes}, coloured {colour}",
)
IMAGES = 600  # the test's setup
EPOCHS = 20


def shape_first_english(english: Any) -> Any:
    """English with templates that also name the shape before the colour: a decoder trained
    from scratch on captions where colour always comes right before shape learns that "red"
    is never followed by "triangle" and cannot compose the held-out pair; with both orders it
    can."""
    from polycap.language import DemoLexicon

    numbers = {1: "one", 2: "two", 3: "three"}

    def describe(colour: str, shape: str, count: int, rng: random.Random) -> str:
        template = rng.choice(SHAPE_FIRST_ONE if count == 1 else SHAPE_FIRST_MANY)
        return template.format(
            colour=colour, shape=shape, shapes=shape + "s", number=numbers[count]
        )

    lexicon = DemoLexicon(describe, english.demo.colour_terms, english.demo.shape_terms)
    return dataclasses.replace(english, demo=lexicon)


def split_pack(language: str) -> Any:
    """The language's pack; English with its shape-first templates (:func:`shape_first_english`)."""
    from polycap.plugins import get_registries

    pack = get_registries().languages.get(language)
    return shape_first_english(pack) if language == "en" else pack


def run_split(
    workdir: Path,
    seed: int = 0,
    images: int = IMAGES,
    epochs: int = EPOCHS,
    language: str = "en",
    augmented: bool = False,
) -> Any:
    """Train the tiny captioner on a compositional split (data and model seeded by ``seed``)
    and compare it with retrieval (and, with ``augmented``, with a retrieval-augmented
    captioner trained on a bank of the training captions); returns the
    :class:`~polycap.compare.compositional.SplitComparison`."""
    import torch

    from polycap.compare.comparison import CompareSettings
    from polycap.compare.compositional import (
        DEFAULT_HELDOUT_PAIRS,
        SPLIT_METRICS,
        compare_on_split,
        training_bank,
    )
    from polycap.demo.runner import build_tiny_models
    from polycap.inference.pipeline import encoder_for
    from polycap.model.captioner import Captioner
    from polycap.offline.synthetic import make_synthetic_set

    pack = split_pack(language)
    split = make_synthetic_set(
        pack, workdir / "data", images, seed=seed, heldout_pairs=DEFAULT_HELDOUT_PAIRS
    )
    train_captions = json.loads(split.train_file.read_text(encoding="utf-8"))
    models = build_tiny_models(
        pack, [r["caption"] for r in train_captions], workdir / "models", seed
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = Captioner.load(_train(pack, split, models, workdir, seed, epochs))
        third = None
        if augmented:
            bank = workdir / "train-bank"
            training_bank(pack, split, encoder_for(model), bank, workdir / "cache")
            third = Captioner.load(_train(pack, split, models, workdir, seed, epochs, bank))
        settings = CompareSettings(metrics=SPLIT_METRICS, cache_dir=workdir / "cache")
        return compare_on_split(
            pack, split, model, workdir / "compare", settings=settings, augmented=third
        )
    finally:
        torch.set_num_threads(threads)


def _train(
    pack: Any,
    split: Any,
    models: dict[str, str],
    workdir: Path,
    seed: int,
    epochs: int,
    retrieval_bank: Path | None = None,
) -> Path:
    """The trained model's folder (``run/`` plain, ``run-augmented/`` with a bank)."""
    from polycap.train.trainer import TrainConfig, train

    config = TrainConfig(
        language=pack.code,
        data=split.train_file,
        output=workdir / ("run" if retrieval_bank is None else "run-augmented"),
        encoder=models["encoder"],
        pretrained=models["pretrained"],
        lm=models["lm"],
        mapper="mlp",
        prefix_length=4,
        train_lm=True,
        epochs=epochs,
        batch_size=32,
        lr=1e-3,
        warmup_steps=20,
        val_fraction=0.1,
        seed=seed,
        device="cpu",
        cache_dir=workdir / "cache",
        progress=False,
        retrieval_bank=retrieval_bank,
    )
    return train(config).model_dir


METHODS = ("retrieval", "generation", "retrieval-augmented")


def summary(result: Any) -> dict[str, Any]:
    """Seen/unseen pair accuracy and novelty of each method of one comparison."""
    row: dict[str, Any] = {"unseen_images": result.pair_scores["generation"]["unseen"]["n"]}
    for method, scores in result.pair_scores.items():
        row[f"{method} seen"] = scores["seen"]["pair_accuracy"]
        row[f"{method} unseen"] = scores["unseen"]["pair_accuracy"]
        row[f"{method} novelty"] = result.comparison.method(method).novelty
    return row


def markdown(result: dict[str, Any]) -> str:
    """Per language, the per-seed table and a summary line, for docs/retrieval.md."""
    from benchmarks.report import table

    def percent(value: float | None) -> str:
        return "–" if value is None else f"{100 * value:.1f}"

    parts = [f"{result['images']} images, {result['epochs']} epochs, seen / unseen pairs."]
    for language, rows in result["languages"].items():
        methods = [m for m in METHODS if f"{m} seen" in rows[0]]
        columns = ["seed"] + [f"{m}: seen / unseen %" for m in methods]
        body = [
            [str(row["seed"])]
            + [f"{percent(row[f'{m} seen'])} / {percent(row[f'{m} unseen'])}" for m in methods]
            for row in rows
        ]
        means = ", ".join(
            f"{m} {percent(statistics.mean(r[f'{m} seen'] for r in rows))} / "
            f"{percent(statistics.mean(r[f'{m} unseen'] for r in rows))}"
            for m in methods
        )
        parts.append(
            f"**{language}** ({rows[0]['unseen_images']} unseen-pair test images per seed)\n\n"
            + table(columns, body, "r" * len(columns))
            + f"\n\nMean seen / unseen %: {means}."
        )
    return "\n\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--languages", nargs="+", default=["en", "ja"])
    parser.add_argument("--images", type=int, default=IMAGES)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument(
        "--two-methods", action="store_true", help="Leave out the retrieval-augmented model."
    )
    parser.add_argument("--output", type=Path, help="Write the rows and summary as JSON.")
    parser.add_argument(
        "--doc", action="store_true", help="Write the table into docs/retrieval.md."
    )
    args = parser.parse_args(argv)
    result: dict[str, Any] = {"images": args.images, "epochs": args.epochs, "languages": {}}
    for language in args.languages:
        rows = []
        for seed in args.seeds:
            started = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="polycap-compositional-") as directory:
                compared = run_split(
                    Path(directory),
                    seed,
                    args.images,
                    args.epochs,
                    language=language,
                    augmented=not args.two_methods,
                )
                row = {"seed": seed, **summary(compared)}
            row["seconds"] = round(time.perf_counter() - started, 1)
            rows.append(row)
            print(json.dumps({"language": language, **row}), flush=True)
        result["languages"][language] = rows
    print(markdown(result))
    if args.doc:
        from benchmarks import report

        given = list(argv if argv is not None else sys.argv[1:])
        if "--output" in given:  # where the JSON went is not part of how the table was made
            at = given.index("--output")
            del given[at : at + 2]
        command = " ".join(["python -m benchmarks.compositional", *given])
        section = report.Section("compositional", markdown(result), result)
        report.write([section], command.strip(), report.ROOT / "docs" / "retrieval.md", None)
    if args.output is not None:
        from polycap.util.atomic import write_json

        write_json(args.output, result, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
