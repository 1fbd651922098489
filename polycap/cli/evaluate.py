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
from polycap.errors import BadInput
from polycap.eval.predictions import PREDICTIONS_HELP
from polycap.eval.runner import DEFAULT_CLIP_ENCODER, DEFAULT_CLIP_PRETRAINED


def eval_command(
    references: Path = typer.Argument(
        ..., help="Caption file with the references: captions.json, COCO json, CSV/TSV, JSONL."
    ),
    predictions: Path | None = typer.Option(None, "--predictions", "-p", help=PREDICTIONS_HELP),
    model: Path | None = typer.Option(
        None, "--model", "-m", help="Or caption the reference images with this checkpoint."
    ),
    lang: str | None = typer.Option(
        None, "--lang", "-l", help="Language pack (default: the model's; needed with -p)."
    ),
    images: Images = None,
    allow_outside_images: AllowOutside = False,
    image_column: ImageColumn = None,
    caption_column: CaptionColumn = None,
    data_format: DataFormat = None,
    metrics: Metrics = None,
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

    Metrics: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, SPICE, chrF, WER, CLIPScore, RefCLIPScore.
    Scores are x100, over the language pack's segmentation (named in the output).
    """
    from polycap.data.captions import load_captions
    from polycap.eval.predictions import load_predictions, match_predictions
    from polycap.eval.runner import ClipOptions, check_metrics, context_for, evaluate
    from polycap.plugins import get_registries

    if (predictions is None) == (model is None):
        raise BadInput("give either --predictions FILE or --model CHECKPOINT")
    if predictions is not None and lang is None:
        raise BadInput("--lang is required with --predictions (the captions' language)")
    registries = get_registries()
    names = split_names(metrics)
    check_metrics(names or [], registries)
    if lang is not None:
        registries.languages.get(lang)  # UnknownName before any heavy work
    refs = load_captions(references, images_dir=images, format=data_format)
    torch_device = _device(device) if model is not None or _wants_clip(names) else "cpu"
    notes: list[str] = []
    if model is not None:
        run = _ModelRun(model, lang, beams, max_length, batch_size, torch_device, cache_dir)
        matched, pack, model_info = _predict(refs, run, not json_output, notes)
    else:
        pack = registries.languages.get(lang or "")
        matched = match_predictions(refs, load_predictions(predictions), predictions, partial)
        model_info = None
        if matched.unmatched_references:
            notes.append(
                f"{len(matched.unmatched_references)} reference images without a "
                "prediction were left out (--partial)"
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
    result = evaluate(context_for(pack, matched, clip), names, registries)
    result.notes.extend(notes)
    if model_info:
        result.details["predictions"] = model_info
    else:
        result.details["predictions"] = {"file": str(predictions)}
    _show(result, references, per_image, json_output)


def _wants_clip(names: list[str] | None) -> bool:
    return names is None or "clipscore" in names


def _device(device: str) -> str:
    from polycap.util.devices import resolve_device

    return str(resolve_device(device))


@dataclass
class _ModelRun:
    """``eval --model``: which checkpoint captions the reference images, and how."""

    model: Path
    lang: str | None
    beams: int
    max_length: int
    batch_size: int
    device: str
    cache_dir: Path | None


def _predict(
    refs: Any, run: _ModelRun, progress: bool, notes: list[str]
) -> tuple[Any, Any, dict[str, Any]]:
    from polycap.eval.predictions import Matched
    from polycap.inference.pipeline import CaptionPipeline, generation_config

    model = run.model
    pipeline = CaptionPipeline.load(model, device=run.device, expected_language=run.lang)
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
        "model": str(model),
        "encoder": captioner.config.get("encoder"),
        "lm": captioner.config.get("lm"),
        "generation": generation.to_json(),
    }
    return matched, captioner.pack, info


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
        columns = (
            [
                c
                for c in ("BLEU-4", "ROUGE-L", "CIDEr-D", "chrF", "WER", "CLIPScore")
                if c in result.per_image[0]
            ]
            if result.per_image
            else []
        )
        print_table(
            "Per image",
            ["image", "prediction", *columns],
            [
                (
                    row["image"],
                    row["prediction"],
                    *("–" if row[c] is None else f"{row[c]:.1f}" for c in columns),
                )
                for row in result.per_image
            ],
        )
    for note in result.notes:
        err_console.print(f"[yellow]Note:[/] {note}", highlight=False)
