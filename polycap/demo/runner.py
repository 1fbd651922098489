"""The embedded default: synthetic shapes, tiny local models, train, caption held-out images, score.

Everything is built here, on the CPU, with no network: a synthetic caption set in the pack's
language, a tokenizer of the pack's class trained on those captions, a tiny GPT-2 and a tiny
randomly initialised open_clip ViT, loaded back through the same loaders real models use.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from polycap.compare.comparison import CompareSettings
from polycap.compare.compositional import SPLIT_METRICS, compare_on_split, training_bank
from polycap.errors import BadInput
from polycap.eval import charts
from polycap.eval.report import ReportRow, write_report
from polycap.inference.pipeline import CaptionPipeline, encoder_for, generation_config
from polycap.offline import tiny
from polycap.offline.synthetic import make_synthetic_set, score_captions
from polycap.plugins import get_registries

if TYPE_CHECKING:
    from polycap.language import LanguagePack
    from polycap.plugins import Registries


@dataclass
class DemoOptions:
    """Sizes and schedule of the demo (the defaults train in a few minutes on 2 cores)."""

    language: str = "ja"
    workdir: Path = Path("polycap-demo")
    images: int = 1200
    epochs: int = 20
    batch_size: int = 32
    lr: float = 3e-3
    prefix_length: int = 4
    mapper: str = "mlp"
    seed: int = 0
    # colour-shape pairs shown only in the test split: does generation compose what it saw?
    heldout_pairs: tuple[tuple[str, str], ...] = (
        ("red", "triangle"),
        ("green", "circle"),
        ("blue", "square"),
    )
    compare: bool = True
    progress: bool = True
    lm: str | None = None  # a real decoder (hub id, folder, .gguf) instead of the tiny GPT-2


@dataclass
class DemoResult:
    """What the demo produced: held-out scores, files, timings."""

    scores: dict[str, float]  # held-out images of pairs seen in training
    unseen_scores: dict[str, float] | None  # held-out images of pairs never seen in training
    model_dir: Path
    report: Path
    captions: dict[str, str]
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    comparison: Any = None


def build_tiny_models(
    pack: LanguagePack,
    train_captions: list[str],
    directory: Path,
    seed: int,
    lm: str | None = None,
) -> dict[str, str]:
    """Tokenizer of the pack's class, tiny GPT-2 (unless a real ``lm`` is given) and tiny CLIP,
    saved under ``directory``."""

    if lm is None:
        tokenizer_dir = pack.build_tiny_tokenizer(train_captions, directory / "lm")
        tokenizer = pack.load_tokenizer(str(tokenizer_dir))
        lm = str(tiny.build_gpt2(tokenizer, directory / "lm", seed=seed))
    clip_name, clip_weights = tiny.build_clip(directory / "clip", seed=seed)
    return {"lm": lm, "encoder": clip_name, "pretrained": str(clip_weights)}


def run_demo(
    options: DemoOptions, console: Any = None, registries: Registries | None = None
) -> DemoResult:
    """Synthetic data → tiny models → training → captions for held-out images → scores + HTML."""
    import torch

    started = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: a second thread costs more than it gives
    try:
        return _run_demo(options, console, registries or get_registries(), started)
    finally:
        torch.set_num_threads(threads)


def _run_demo(
    options: DemoOptions, console: Any, registries: Registries, started: float
) -> DemoResult:
    from polycap.model.captioner import Captioner

    pack = registries.languages.get(options.language)
    if pack.demo is None:
        raise BadInput(f"language pack {pack.code!r} has no demo vocabulary")
    workdir = options.workdir
    split = make_synthetic_set(
        pack,
        workdir / "data",
        options.images,
        seed=options.seed,
        heldout_pairs=options.heldout_pairs,
    )
    models = _models(pack, split, options)
    result = _train(pack, split, options, models, console, registries)
    model = Captioner.load(result.model_dir, device="cpu", registries=registries)
    captions, paths = _caption_test_images(model, split, options)
    unseen = set(split.heldout_pairs)
    scores, unseen_scores = _scores(pack, split, captions, unseen)
    comparison = None
    if options.compare:
        comparison = _compare(pack, split, model, options, models, console, registries)
    report = _write_report(pack, split, captions, paths, (scores, unseen_scores), workdir)
    return DemoResult(
        scores=scores,
        unseen_scores=unseen_scores,
        model_dir=result.model_dir,
        report=report,
        captions=captions,
        seconds=time.perf_counter() - started,
        history=result.history,
        comparison=comparison,
    )


def _models(pack: LanguagePack, split: Any, options: DemoOptions) -> dict[str, str]:
    """Tiny models built for the split's training captions."""
    train_records = json.loads(Path(split.train_file).read_text(encoding="utf-8"))
    return build_tiny_models(
        pack,
        [r["caption"] for r in train_records],
        options.workdir / "models",
        options.seed,
        options.lm,
    )


def _train(
    pack: LanguagePack,
    split: Any,
    options: DemoOptions,
    models: dict[str, str],
    console: Any,
    registries: Registries,
    retrieval_bank: Path | None = None,
) -> Any:
    """The captioner trained on the split's training captions (retrieval-augmented with
    prompts from ``retrieval_bank`` when given)."""
    from polycap.train.trainer import TrainConfig, train

    workdir = options.workdir
    config = TrainConfig(
        language=pack.code,
        data=Path(split.train_file),
        output=workdir / ("run" if retrieval_bank is None else "run-augmented"),
        encoder=models["encoder"],
        pretrained=models["pretrained"],
        lm=models["lm"],
        mapper=options.mapper,
        prefix_length=options.prefix_length,
        train_lm=options.lm is None,  # a real decoder stays frozen: only the mapper learns
        epochs=options.epochs,
        batch_size=options.batch_size,
        lr=options.lr,
        warmup_steps=20,
        val_fraction=0.1,
        seed=options.seed,
        device="cpu",
        cache_dir=workdir / "cache",
        progress=options.progress,
        retrieval_bank=retrieval_bank,
    )
    return train(config, registries=registries, console=console, overwrite=True)


def _compare(
    pack: LanguagePack,
    split: Any,
    model: Any,
    options: DemoOptions,
    models: dict[str, str],
    console: Any,
    registries: Registries,
) -> Any:
    """Retrieval, generation and retrieval-augmented generation (trained with a bank of the
    training captions) on the split, with seen/unseen pair accuracy."""
    from polycap.model.captioner import Captioner

    workdir = options.workdir
    cache = workdir / "cache"
    bank = workdir / "train-bank"
    training_bank(pack, split, encoder_for(model), bank, cache)
    trained = _train(pack, split, options, models, console, registries, retrieval_bank=bank)
    augmented = Captioner.load(trained.model_dir, device="cpu", registries=registries)
    settings = CompareSettings(metrics=SPLIT_METRICS, cache_dir=cache, registries=registries)
    return compare_on_split(
        pack, split, model, workdir / "compare", settings=settings, augmented=augmented
    )


def _caption_test_images(
    model: Any, split: Any, options: DemoOptions
) -> tuple[dict[str, str], list[Path]]:
    """The first caption of each readable test image (by file name), and their paths."""

    test_records = json.loads(Path(split.test_file).read_text(encoding="utf-8"))
    image_dir = Path(split.test_file).parent / "images"
    test_paths = sorted({image_dir / r["image_name"] for r in test_records})
    captioned = CaptionPipeline(model).caption_files(
        test_paths,
        generation_config(max_length=24),
        progress=options.progress,
        cache_dir=options.workdir / "cache",
    )
    captions = {path.name: texts[0] for path, texts in zip(captioned.paths, captioned.captions)}
    return captions, list(captioned.paths)


def _scores(
    pack: LanguagePack, split: Any, captions: dict[str, str], unseen: set[tuple[str, str]]
) -> tuple[dict[str, float], dict[str, float] | None]:
    """Colour/shape/count accuracy on images of pairs seen in training, and of unseen pairs."""

    seen_captions = {n: c for n, c in captions.items() if split.truths[n][:2] not in unseen}
    unseen_captions = {n: c for n, c in captions.items() if split.truths[n][:2] in unseen}
    scores = score_captions(pack, seen_captions, split.truths)
    unseen_scores = score_captions(pack, unseen_captions, split.truths) if unseen_captions else None
    return scores, unseen_scores


def _write_report(
    pack: LanguagePack,
    split: Any,
    captions: dict[str, str],
    paths: list[Path],
    groups: tuple[dict[str, float], dict[str, float] | None],
    workdir: Path,
) -> Path:
    """report.html: each test image with its caption (marked right when it names the true
    colour and shape) and truth, the scores on top."""

    unseen = set(split.heldout_pairs)
    rows = []
    for path in paths:
        truth = split.truths[path.name]
        right = score_captions(pack, {path.name: captions[path.name]}, {path.name: truth})
        rows.append(
            ReportRow(
                path,
                {"generated": [captions[path.name]], "truth": [" ".join(map(str, truth))]},
                marks={"unseen pair": False} if truth[:2] in unseen else {},
                verdicts={"generated": right["pair_accuracy"] == 1.0},
            )
        )
    scores, unseen_scores = groups
    summary = [
        (f"{group}: {name}", f"{value:.3f}" if isinstance(value, float) else str(value))
        for group, group_scores in (("seen pairs", scores), ("unseen pairs", unseen_scores or {}))
        for name, value in group_scores.items()
    ]
    title = f"polycap demo ({pack.name})"
    return write_report(
        workdir / "report.html", title, rows, summary, ("score", "value"), _charts(groups)
    )


def _charts(groups: tuple[dict[str, float], dict[str, float] | None]) -> list[Any] | None:
    """Colour, shape and pair accuracy (%) of seen and unseen pairs as bars; None without
    matplotlib (the report then says how to get charts)."""

    if not charts.available():
        return None
    measures = ("colour_accuracy", "shape_accuracy", "pair_accuracy")
    named = {"seen pairs": groups[0], "unseen pairs": groups[1]}
    bars = {group: [100 * scores[m] for m in measures] for group, scores in named.items() if scores}
    names = [f"{m.replace('_', ' ')} %" for m in measures]
    chart = charts.score_bars(names, bars, title="Accuracy on seen and unseen pairs")
    return [chart] if chart is not None else []
