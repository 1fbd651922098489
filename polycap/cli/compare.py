"""``polycap compare``: retrieval vs generation on one held-out set, side by side."""

from __future__ import annotations

from dataclasses import replace
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
    print_json,
    print_not_applicable,
    print_table,
    report_skipped,
)
from polycap.eval.runner import DEFAULT_CLIP_ENCODER, DEFAULT_CLIP_PRETRAINED
from polycap.util.atomic import check_writable_file


def compare_command(
    heldout: Path = typer.Argument(..., help="Held-out caption file (references)."),
    model: Path = typer.Option(..., "--model", "-m", help="Checkpoint or run folder."),
    bank: Path = typer.Option(
        ..., "--bank", "-b", help="Bank of the training captions, built with the model's encoder."
    ),
    augmented_model: Path | None = typer.Option(
        None,
        "--augmented-model",
        help="A retrieval-augmented checkpoint (trained with --retrieval-bank): a third column.",
    ),
    augmented_bank: Path | None = typer.Option(
        None,
        "--augmented-bank",
        help="The bank the augmented model retrieves from (default: --bank).",
    ),
    images: Images = None,
    allow_outside_images: AllowOutside = False,
    image_column: ImageColumn = None,
    caption_column: CaptionColumn = None,
    data_format: DataFormat = None,
    mode: str = typer.Option("image", help="Retrieval mode: image (kNN) or text."),
    consensus: bool = typer.Option(
        False, "--consensus", help="Image mode: consensus re-ranking of the neighbours' captions."
    ),
    k: int = typer.Option(5, "--k", "-k", min=1, help="Retrieved captions shown per image."),
    neighbours: int | None = typer.Option(None, min=1, help="Image mode: neighbours to pool."),
    beams: Beams = 1,
    max_length: MaxLength = 30,
    metrics: Metrics = None,
    clip_encoder: str = typer.Option(DEFAULT_CLIP_ENCODER, help="CLIPScore encoder."),
    clip_pretrained: ClipPretrained = DEFAULT_CLIP_PRETRAINED,
    clip_download: ClipDownload = False,
    report: Path | None = typer.Option(
        None, "--report", help="Write an HTML report with every image and its captions."
    ),
    batch_size: BatchSize = 64,
    device: Device = "auto",
    max_pixels: MaxPixels = MAX_PIXELS,
    cache_dir: CacheDir = None,
    json_output: JsonOutput = False,
) -> None:
    """Retrieval vs generation (vs retrieval-augmented with --augmented-model):
    [bold]polycap compare test.json -m runs/ja -b bank/[/]."""
    from polycap.compare.comparison import CompareSettings, compare
    from polycap.compare.methods import RetrievalOptions
    from polycap.data.captions import caption_selection, load_captions
    from polycap.eval.runner import ClipOptions, check_metrics
    from polycap.inference.pipeline import load_captioner
    from polycap.model.generation import GenerationConfig
    from polycap.plugins import get_registries
    from polycap.retrieval.bank import Bank
    from polycap.util.devices import resolve_device

    if report is not None:
        check_writable_file(report, "--report")  # before the work, not after it
    registries = get_registries()
    names = split_names(metrics)
    check_metrics(names or [], registries)
    torch_device = str(resolve_device(device))
    opened = Bank.open(bank)
    captioner = load_captioner(model, device=torch_device)
    augmented = None
    if augmented_model is not None:
        augmented = load_captioner(augmented_model, device=torch_device)
    pack = captioner.pack
    selection = replace(caption_selection(), language=pack.code)  # multilingual files
    refs = load_captions(heldout, images_dir=images, format=data_format, selection=selection)
    clip = ClipOptions(
        spec=clip_encoder,
        pretrained=clip_pretrained,
        device=torch_device,
        batch_size=batch_size,
        cache_dir=cache_dir,
        download=clip_download,
    )
    result = compare(
        refs,
        pack,
        model=captioner,
        bank=opened,
        generation=GenerationConfig(max_length=max_length, beams=beams),
        retrieval=RetrievalOptions(mode, k, consensus, neighbours),
        augmented=augmented,
        augmented_bank=Bank.open(augmented_bank) if augmented_bank is not None else None,
        settings=CompareSettings(
            names, clip, batch_size, torch_device, cache_dir, not json_output, registries
        ),
    )
    written = result.write_report(report) if report is not None else None
    _show(result, opened, written, json_output)


def _show(result: Any, bank: Any, written: Path | None, json_output: bool) -> None:
    """The comparison as JSON, or as a table with its notes."""
    if json_output:
        data = result.to_json(per_image=True)
        data["report"] = str(written) if written else None
        print_json(data)
        return
    header, rows = result.table()
    print_table(
        f"{' vs '.join(m.name for m in result.methods).capitalize()}: "
        f"{len(result.images)} held-out images ({result.language})",
        header,
        rows,
    )
    console.print(
        f"segmenter: {result.segmenter}; encoder: {result.encoder.get('name')}; "
        f"bank: {bank.n_captions} captions; image encoding (shared, not in "
        f"captions/s): {result.encode_seconds:.2f}s",
        highlight=False,
    )
    print_not_applicable(result.not_applicable)
    report_skipped(result.skipped)
    if written:
        console.print(f"Report: [bold]{written}[/]")
