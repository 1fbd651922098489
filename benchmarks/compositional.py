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


def run_split(workdir: Path, seed: int = 0, images: int = IMAGES, epochs: int = EPOCHS) -> Any:
    """Train the tiny captioner on a compositional split (data and model seeded by ``seed``)
    and compare it with retrieval; returns the :class:`~polycap.compositional.SplitComparison`."""
    import torch

    from polycap.compositional import DEFAULT_HELDOUT_PAIRS, SPLIT_METRICS, compare_on_split
    from polycap.demo import build_tiny_models
    from polycap.eval.compare import CompareSettings
    from polycap.model import Captioner
    from polycap.offline.synthetic import make_synthetic_set
    from polycap.plugins import get_registries
    from polycap.training import TrainConfig, train

    pack = shape_first_english(get_registries().languages.get("en"))
    split = make_synthetic_set(
        pack, workdir / "data", images, seed=seed, heldout_pairs=DEFAULT_HELDOUT_PAIRS
    )
    train_captions = json.loads(split.train_file.read_text(encoding="utf-8"))
    models = build_tiny_models(
        pack, [r["caption"] for r in train_captions], workdir / "models", seed
    )
    config = TrainConfig(
        language="en",
        data=split.train_file,
        output=workdir / "run",
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
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = Captioner.load(train(config).model_dir)
        settings = CompareSettings(metrics=SPLIT_METRICS, cache_dir=workdir / "cache")
        return compare_on_split(pack, split, model, workdir / "compare", settings=settings)
    finally:
        torch.set_num_threads(threads)


def summary(result: Any) -> dict[str, Any]:
    """The pair accuracies and novelty of one comparison."""
    pairs = result.pair_scores
    return {
        "generation_seen": pairs["generation"]["seen"]["pair_accuracy"],
        "generation_unseen": pairs["generation"]["unseen"]["pair_accuracy"],
        "unseen_images": pairs["generation"]["unseen"]["n"],
        "retrieval_unseen": pairs["retrieval"]["unseen"]["pair_accuracy"],
        "generation_novelty": result.comparison.method("generation").novelty,
    }


def markdown(result: dict[str, Any]) -> str:
    """The per-seed table and the summary line, for docs/retrieval.md."""
    from benchmarks.report import table

    def percent(value: float | None) -> str:
        return "–" if value is None else f"{100 * value:.1f}"

    rows = [
        [
            str(row["seed"]),
            percent(row["generation_seen"]),
            f"{percent(row['generation_unseen'])} "
            f"({round(row['generation_unseen'] * row['unseen_images'])} of {row['unseen_images']})",
            percent(row["retrieval_unseen"]),
            percent(row["generation_novelty"]),
        ]
        for row in result["rows"]
    ]
    columns = [
        "seed",
        "generation: seen-pair accuracy %",
        "generation: unseen-pair accuracy %",
        "retrieval: unseen-pair accuracy %",
        "generation: novelty %",
    ]
    return (
        f"{result['images']} images, {result['epochs']} epochs.\n\n"
        + table(columns, rows, "rrrrr")
        + "\n\nGeneration's unseen-pair accuracy: "
        f"min {percent(result['generation_unseen_min'])} %, "
        f"mean {percent(result['generation_unseen_mean'])} %."
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--images", type=int, default=IMAGES)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--output", type=Path, help="Write the rows and summary as JSON.")
    parser.add_argument(
        "--doc", action="store_true", help="Write the table into docs/retrieval.md."
    )
    args = parser.parse_args(argv)
    rows = []
    for seed in args.seeds:
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="polycap-compositional-") as directory:
            row = {
                "seed": seed,
                **summary(run_split(Path(directory), seed, args.images, args.epochs)),
            }
        row["seconds"] = round(time.perf_counter() - started, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    unseen = [row["generation_unseen"] for row in rows]
    result = {
        "images": args.images,
        "epochs": args.epochs,
        "rows": rows,
        "generation_unseen_min": min(unseen),
        "generation_unseen_mean": statistics.mean(unseen),
    }
    print(
        f"unseen-pair accuracy of generation over {len(rows)} seeds: min {min(unseen):.3f}, "
        f"mean {statistics.mean(unseen):.3f}; retrieval max "
        f"{max(row['retrieval_unseen'] for row in rows):.3f}"
    )
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
        from polycap.atomic import write_json

        write_json(args.output, result, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
