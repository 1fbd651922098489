"""Domain transfer by swapping the bank: can a retrieval-augmented captioner name a colour it
never saw in training, when the bank it retrieves from has that colour's captions?

A tiny captioner (tiny GPT-2 fine-tuned, tiny random CLIP) is trained on a synthetic palette
without ``--colour`` (default yellow), once plain and once retrieval-augmented with a bank of
its own training captions. Both then caption test images of every colour; the augmented one
retrieves from a second bank, drawn from the full palette (other images than the test ones).
Plain generation cannot name the new colour (it never produced the word); the augmented model
could copy it from its prompt. Run::

    python -m benchmarks.domain_transfer --seeds 0 1 2 --epochs 4 --lm SmolLM2.gguf  # the test

It prints one row per seed (new-colour accuracy of each model) and the minimum / mean.
``--pretrain-steps N`` first trains the tiny GPT-2 on text naming every colour
(:mod:`polycap.offline.pretrain`), ``--frozen-lm`` trains the mapper only. What each setting
gave is in docs/retrieval.md ("Domain transfer"): with the tiny decoder no setting transfers
the new colour; with SmolLM2-135M (``--lm``, frozen, ``--epochs 4``) the augmented model names
it on half or more of its images and plain generation on none, which
tests/test_domain_transfer.py asserts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IMAGES = 160  # training palette set (80 % train)
BANK_IMAGES = 120  # full-palette set the transfer bank is built from
EPOCHS = 12


@dataclass
class TransferSetup:
    """Sizes and schedule of one run."""

    language: str = "en"
    colour: str = "yellow"
    images: int = IMAGES
    bank_images: int = BANK_IMAGES
    epochs: int = EPOCHS
    k: int = 2
    lr: float = 3e-3
    batch_size: int = 16
    lm: str | None = None  # a real decoder (hub id, folder, .gguf), frozen; None: tiny GPT-2
    pretrain_steps: int = 0  # text pretraining of the tiny GPT-2 (polycap.offline.pretrain)
    documents: int = 2000
    prompt_share: float = 0.0  # share of pretraining documents written in the prompt's form
    train_lm: bool = True  # fine-tune the tiny LM (a real one stays frozen)
    mapper: str = "mlp"
    prefix_length: int = 4


def run_seed(setup: TransferSetup, seed: int, workdir: Path) -> dict[str, float]:
    """Train plain + augmented on the palette without ``setup.colour``; their accuracy at
    naming the colour of test images of that colour (and of the other colours)."""
    from polycap.data.captions import load_captions
    from polycap.data.encoding import encode_images
    from polycap.demo.runner import build_tiny_models
    from polycap.inference.pipeline import encoder_for
    from polycap.model.augmented import caption_augmented
    from polycap.model.captioner import Captioner
    from polycap.model.generation import GenerationConfig, caption_features
    from polycap.offline.synthetic import SHAPES, make_synthetic_set, score_captions
    from polycap.plugins import get_registries
    from polycap.retrieval.bank import Bank, BankOptions, build_bank
    from polycap.train.trainer import TrainConfig, train

    pack = get_registries().languages.get(setup.language)
    held = [(setup.colour, shape) for shape in SHAPES]
    split = make_synthetic_set(pack, workdir / "data", setup.images, seed=seed, heldout_pairs=held)
    other = make_synthetic_set(pack, workdir / "bank-data", setup.bank_images, seed=seed + 1000)
    train_captions = load_captions(split.train_file)
    bank_captions = load_captions(other.train_file)
    # the tokenizer knows every word (a real LM's would); the LM never sees the new colour
    vocabulary = train_captions.captions() + bank_captions.captions()
    models = build_tiny_models(pack, vocabulary, workdir / "models", seed=seed, lm=setup.lm)
    if setup.lm is None and setup.pretrain_steps:
        _pretrain(pack, models["lm"], setup, seed)
    options = BankOptions(dtype="float32", force=True, progress=False)
    encoder = None
    results: dict[str, float] = {}
    for kind in ("plain", "augmented"):
        output = workdir / kind
        config = TrainConfig(
            language=pack.code,
            data=split.train_file,
            output=output,
            encoder=models["encoder"],
            pretrained=models["pretrained"],
            lm=models["lm"],
            mapper=setup.mapper,
            prefix_length=setup.prefix_length,
            train_lm=setup.lm is None and setup.train_lm,
            epochs=setup.epochs,
            batch_size=setup.batch_size,
            lr=setup.lr,
            seed=seed,
            device="cpu",
            progress=False,
            val_fraction=0.0,
        )
        if kind == "augmented":
            if encoder is None:
                raise RuntimeError("the plain run loads the encoder first")
            build_bank(train_captions, encoder, workdir / "train-bank", pack, options)
            config.retrieval_bank = workdir / "train-bank"
            config.retrieval_k = setup.k
        model = Captioner.load(train(config).model_dir)
        if encoder is None:
            encoder = encoder_for(model)
            build_bank(bank_captions, encoder, workdir / "transfer-bank", pack, options)
        paths = [split.image_dir / name for name in split.test_images]
        encoded = encode_images(encoder, paths, progress=False)
        generation = GenerationConfig(max_length=16)
        if kind == "plain":
            texts = caption_features(model, encoded.features, generation)
        else:
            bank = Bank.open(workdir / "transfer-bank")
            texts = caption_augmented(model, encoded.features, bank, generation).captions
        captions = {p.name: t[0] if t else "" for p, t in zip(encoded.paths, texts, strict=True)}
        for group, names in _groups(split, setup.colour).items():
            chosen = {n: captions[n] for n in names}
            results[f"{kind} {group}"] = score_captions(pack, chosen, split.truths)[
                "colour_accuracy"
            ]
    return results


def _pretrain(pack: Any, lm: str, setup: TransferSetup, seed: int) -> None:
    """Text pretraining of the tiny LM on documents naming every colour (the new one too)."""
    from polycap.offline.pretrain import PretrainOptions, pretrain_lm, topic_documents

    documents = topic_documents(pack, setup.documents, seed=seed, prompt_share=setup.prompt_share)
    pretrain_lm(lm, documents, PretrainOptions(steps=setup.pretrain_steps, seed=seed))


def _groups(split: Any, colour: str) -> dict[str, list[str]]:
    new = [n for n in split.test_images if split.truths[n][0] == colour]
    old = [n for n in split.test_images if split.truths[n][0] != colour]
    return {"new colour": new, "seen colours": old}


def measure(setup: TransferSetup, seeds: list[int]) -> list[dict[str, float]]:
    """One row per seed (``run_seed``), each in a fresh temporary folder."""
    import torch

    torch.set_num_threads(1)
    rows = []
    for seed in seeds:
        with tempfile.TemporaryDirectory() as folder:
            started = time.perf_counter()
            row = {"seed": seed, **run_seed(setup, seed, Path(folder))}
            row["seconds"] = round(time.perf_counter() - started, 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--language", default="en")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--images", type=int, default=IMAGES)
    parser.add_argument("--lm", default=None, help="a real decoder, frozen (default: tiny)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument(
        "--pretrain-steps", type=int, default=0, help="text pretraining of the tiny LM first"
    )
    parser.add_argument(
        "--prompt-share",
        type=float,
        default=0.0,
        help="share of pretraining documents in the retrieval prompt's form",
    )
    parser.add_argument("--frozen-lm", action="store_true", help="train the mapper only")
    parser.add_argument("--mapper", default="mlp")
    parser.add_argument("--prefix-length", type=int, default=4)
    args = parser.parse_args(argv)
    setup = TransferSetup(
        language=args.language,
        epochs=args.epochs,
        images=args.images,
        lm=args.lm,
        lr=args.lr,
        pretrain_steps=args.pretrain_steps,
        prompt_share=args.prompt_share,
        train_lm=not args.frozen_lm,
        mapper=args.mapper,
        prefix_length=args.prefix_length,
    )
    rows = measure(setup, args.seeds)
    for key in [k for k in rows[0] if k not in ("seed", "seconds")]:
        values = [row[key] for row in rows]
        print(f"{key}: min {min(values):.3f} mean {statistics.mean(values):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
