"""``polycap eval``: score captions against references with the language's own segmentation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from polycap.cli.options import (
    MAX_PIXELS,
    AllowOutside,
    BatchSize,
    Beams,
    CacheDir,
    CaptionColumn,
    ClipDownload,
    ClipPretrained,
    DataFormat,
    Device,
    ImageColumn,
    Images,
    JsonOutput,
    MaxLength,
    MaxPixels,
    Metrics,
    OptionalLang,
    Split,
    split_names,
)
from polycap.cli.output import (
    console,
    describe_skipped,
    err_console,
    print_json,
    print_not_applicable,
    print_table,
)
from polycap.errors import BadInput, warn
from polycap.eval.predictions import PREDICTIONS_HELP
from polycap.eval.runner import DEFAULT_CLIP_ENCODER, DEFAULT_CLIP_PRETRAINED

TOKENIZER_HELP = (
    "Word segmentation for BLEU/METEOR/ROUGE-L/CIDEr/WER: pack (the language pack's: MeCab, "
    "jieba, ...) or ptb (pycocoevalcap's PTBTokenizer and BLEU: the COCO caption evaluation "
    "English papers report)."
)
BENCHMARK_METRICS = ["bleu", "cider-d", "chrf", "language-fidelity"]
ENGLISH_TOKENIZER_METRICS = ("bleu", "rouge-l", "cider-d")


@dataclass
class _Scoring:
    """How ``polycap eval`` scores: metric names (None: all), segmentation, the side-by-side
    English-tokenizer run, the benchmark whose published numbers are shown."""

    metrics: list[str] | None
    tokenizer: str
    also_english: bool
    benchmark: str | None


def eval_command(
    references: Path = typer.Argument(
        ...,
        help="Caption file with the references: captions.json, COCO json, CSV/TSV, JSONL, "
        "Parquet, or a benchmark's release file (XM3600 captions.jsonl, COCO-35L JSONL, "
        "Karpathy's dataset_coco.json with --split).",
    ),
    predictions: Path | None = typer.Option(None, "--predictions", "-p", help=PREDICTIONS_HELP),
    model: Path | None = typer.Option(
        None, "--model", "-m", help="Or caption the reference images with this checkpoint."
    ),
    lang: OptionalLang = None,
    split: Split = None,
    images: Images = None,
    allow_outside_images: AllowOutside = False,
    image_column: ImageColumn = None,
    caption_column: CaptionColumn = None,
    data_format: DataFormat = None,
    metrics: Metrics = None,
    tokenizer: str = typer.Option("pack", "--tokenizer", help=TOKENIZER_HELP),
    also_english_tokenizer: bool = typer.Option(
        False,
        "--also-english-tokenizer",
        help="Also show BLEU/ROUGE-L/CIDEr over the PTB English tokenizer, side by side: what "
        "an English-tokenizer harness reports for this language.",
    ),
    benchmark: str | None = typer.Option(
        None,
        "--benchmark",
        help="Print the scores beside published numbers of this benchmark: xm3600, coco-35l "
        "(default metrics then: BLEU, CIDEr-D, chrF, language fidelity).",
    ),
    clip_encoder: str = typer.Option(
        DEFAULT_CLIP_ENCODER, help="CLIPScore encoder: open_clip name (text tower needed)."
    ),
    clip_pretrained: ClipPretrained = DEFAULT_CLIP_PRETRAINED,
    clip_download: ClipDownload = False,
    clip_prompt: str | None = typer.Option(
        None, help="Text before each caption for CLIPScore (default: 'A photo depicts' for en)."
    ),
    partial: bool = typer.Option(
        False, "--partial", help="Score only the reference images that have a prediction."
    ),
    per_image: bool = typer.Option(False, "--per-image", help="Also show per-image scores."),
    beams: Beams = 1,
    max_length: MaxLength = 30,
    batch_size: BatchSize = 64,
    device: Device = "auto",
    max_pixels: MaxPixels = MAX_PIXELS,
    cache_dir: CacheDir = None,
    json_output: JsonOutput = False,
) -> None:
    """Score captions: [bold]polycap eval test.json --model runs/ja[/] (or -p preds.json -l ja).

    Metrics: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, SPICE, chrF, WER, CLIPScore, RefCLIPScore,
    language fidelity. Scores are x100, over the segmentation named in the output.
    """
    from polycap.eval.runner import ClipOptions

    scoring = _scoring(metrics, tokenizer, also_english_tokenizer, benchmark, lang)
    if (predictions is None) == (model is None):
        raise BadInput("give either --predictions FILE or --model CHECKPOINT")
    if predictions is not None and lang is None:
        raise BadInput("--lang is required with --predictions (the captions' language)")
    torch_device = _device(device) if model is not None or _wants_clip(scoring.metrics) else "cpu"
    run = _ModelRun(model, lang, beams, max_length, batch_size, torch_device, cache_dir)
    matched, pack, source, notes = _matched(
        references, images, data_format, predictions, run, partial, not json_output
    )
    clip = ClipOptions(
        spec=clip_encoder,
        pretrained=clip_pretrained,
        prompt=clip_prompt,
        device=torch_device,
        batch_size=batch_size,
        cache_dir=cache_dir,
        download=clip_download,
    )
    result = _score(pack, matched, clip, scoring)
    result.notes.extend(notes)
    result.details["predictions"] = source
    _show(result, references, per_image, json_output)


def _scoring(
    metrics: str | None, tokenizer: str, also_english: bool, benchmark: str | None, lang: str | None
) -> _Scoring:
    """The scoring choices, every name checked before any work (UnknownName / BadInput)."""
    from polycap.eval.published import benchmarks
    from polycap.eval.runner import check_metrics
    from polycap.eval.segmentation import SEGMENTATIONS
    from polycap.plugins import get_registries

    registries = get_registries()
    names = split_names(metrics)
    if names is None and benchmark is not None:
        names = list(BENCHMARK_METRICS)
    check_metrics(names or [], registries)
    if tokenizer not in SEGMENTATIONS:
        raise BadInput(
            f"--tokenizer {tokenizer}: unknown; choose one of {', '.join(SEGMENTATIONS)}"
        )
    if benchmark is not None and benchmark not in benchmarks():
        raise BadInput(f"--benchmark {benchmark}: unknown; known: {', '.join(benchmarks())}")
    if lang is not None:
        registries.languages.get(lang)  # UnknownName before any heavy work
    return _Scoring(names, tokenizer, also_english, benchmark)


def _matched(
    references: Path,
    images: Path | None,
    data_format: str | None,
    predictions: Path | None,
    run: _ModelRun,
    partial: bool,
    progress: bool,
) -> tuple[Any, Any, dict[str, Any], list[str]]:
    """(matched predictions and references, pack, where the predictions came from, notes).
    The references are read in the language scored: --lang, else the model's."""
    from dataclasses import replace

    from polycap.data.captions import caption_selection, load_captions
    from polycap.eval.predictions import load_predictions, match_predictions
    from polycap.inference.pipeline import CaptionPipeline
    from polycap.plugins import get_registries

    notes: list[str] = []
    pipeline = None
    if run.model is not None:
        pipeline = CaptionPipeline.load(run.model, device=run.device, expected_language=run.lang)
        pack = pipeline.model.pack
    else:
        pack = get_registries().languages.get(run.lang or "")
    selection = replace(caption_selection(), language=pack.code)
    refs = load_captions(references, images_dir=images, format=data_format, selection=selection)
    if pipeline is not None:
        matched, info = _predict(refs, pipeline, run, progress, notes)
        return matched, pack, info, notes
    assert predictions is not None
    matched = match_predictions(refs, load_predictions(predictions), predictions, partial)
    if matched.unmatched_references:
        notes.append(
            f"{len(matched.unmatched_references)} reference images without a "
            "prediction were left out (--partial)"
        )
    return matched, pack, {"file": str(predictions)}, notes


def _score(pack: Any, matched: Any, clip: Any, scoring: _Scoring) -> Any:
    """Evaluate; add the English-tokenizer scores, the benchmark rows and the language warning."""
    from polycap.eval.metrics.fidelity import language_mismatch
    from polycap.eval.runner import context_for, evaluate
    from polycap.eval.segmentation import choose_segmentation, ptb_segmentation

    segmentation = choose_segmentation(scoring.tokenizer, pack)
    ctx = context_for(pack, matched, clip, segmentation=segmentation)
    result = evaluate(ctx, scoring.metrics)
    identifier = "language-fidelity" in (scoring.metrics or [])
    mismatch = language_mismatch(ctx.predictions, ctx.references, identifier=identifier)
    if mismatch:
        warn(mismatch)
        result.notes.append(mismatch)
    if scoring.also_english:
        chosen = [
            m
            for m in ENGLISH_TOKENIZER_METRICS
            if m in (scoring.metrics or ENGLISH_TOKENIZER_METRICS)
        ]
        english = evaluate(
            context_for(pack, matched, clip, segmentation=ptb_segmentation()), chosen
        )
        result.details["english_tokenizer"] = {
            "segmenter": english.segmenter,
            "scores": english.scores,
        }
    if scoring.benchmark is not None:
        from polycap.eval.published import benchmark_table

        table = benchmark_table(
            scoring.benchmark, pack.code, result.scores, f"segmenter: {result.segmenter}"
        )
        result.details["benchmark"] = {"name": scoring.benchmark, **table.to_json()}
    return result


def _wants_clip(names: list[str] | None) -> bool:
    return names is None or "clipscore" in names


def _device(device: str) -> str:
    from polycap.util.devices import resolve_device

    return str(resolve_device(device))


@dataclass
class _ModelRun:
    """``eval --model``: which checkpoint captions the reference images, and how."""

    model: Path | None
    lang: str | None
    beams: int
    max_length: int
    batch_size: int
    device: str
    cache_dir: Path | None


def _predict(
    refs: Any, pipeline: Any, run: _ModelRun, progress: bool, notes: list[str]
) -> tuple[Any, dict[str, Any]]:
    from polycap.eval.predictions import Matched
    from polycap.inference.pipeline import generation_config

    captioner = pipeline.model
    generation = generation_config(max_length=run.max_length, beams=run.beams)
    done = pipeline.caption_files(
        refs.images(),
        generation,
        batch_size=run.batch_size,
        progress=progress,
        cache_dir=run.cache_dir,
    )
    if done.skipped:
        notes.append(f"skipped {describe_skipped(done.skipped)} (references left out)")
    by_image = refs.by_image()
    matched = Matched(
        list(done.paths),
        [c[0] if c else "" for c in done.captions],
        [by_image[p] for p in done.paths],
    )
    info = {
        "model": str(run.model),
        "encoder": captioner.config.get("encoder"),
        "lm": captioner.config.get("lm"),
        "generation": generation.to_json(),
    }
    return matched, info


def _show_english_tokenizer(result: Any) -> None:
    """The scores over the pack's segmentation beside those over the PTB English tokenizer."""
    english = result.details.get("english_tokenizer")
    if not english:
        return
    rows = [
        (column, _cell(result.scores.get(column)), _cell(value))
        for column, value in english["scores"].items()
    ]
    print_table(
        "Segmentation side by side",
        ["metric", result.segmenter, "English tokenizer (PTB)"],
        rows,
    )


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _show_per_image(result: Any) -> None:
    first = result.per_image[0] if result.per_image else {}
    names = ("BLEU-4", "ROUGE-L", "CIDEr-D", "chrF", "WER", "CLIPScore")
    columns = [c for c in names if c in first]
    rows = [
        (
            row["image"],
            row["prediction"],
            *("–" if row[c] is None else f"{row[c]:.1f}" for c in columns),
        )
        for row in result.per_image
    ]
    print_table("Per image", ["image", "prediction", *columns], rows)


def _show(result: Any, references: Path, per_image: bool, json_output: bool) -> None:
    if json_output:
        print_json({"references_file": str(references), **result.to_json(per_image=per_image)})
        return
    rows = []
    for column in result.scores:
        arrow = " (lower is better)" if column in result.lower_is_better else ""
        value = result.scores[column]
        rows.append((column + arrow, "n/a" if value is None else f"{value:.2f}"))
    print_table(f"Scores ({result.language})", ["metric", "score"], rows)
    console.print(
        f"{result.n_images} images, {result.n_references} references; "
        f"segmenter: {result.segmenter}",
        highlight=False,
    )
    print_not_applicable(result.not_applicable)
    _show_english_tokenizer(result)
    benchmark = result.details.get("benchmark")
    if benchmark:
        header = list(benchmark["rows"][0])
        print_table(benchmark["title"], header, [list(r.values()) for r in benchmark["rows"]])
        for line in benchmark["notes"]:
            console.print(line, highlight=False)
    source = result.details.get("predictions", {})
    if source.get("model"):
        encoder = source.get("encoder") or {}
        console.print(
            f"predictions: {source['model']} (encoder {encoder.get('name')}, "
            f"{source['generation'].get('beams', 1)} beam(s))",
            highlight=False,
        )
    clip = result.details.get("clipscore")
    if clip:
        console.print(
            f"CLIPScore encoder: {clip['encoder']} ({clip['pretrained']}), "
            f"prompt {clip['prompt']!r}",
            highlight=False,
        )
    if per_image:
        _show_per_image(result)
    for note in result.notes:
        err_console.print(f"[yellow]Note:[/] {note}", highlight=False)
