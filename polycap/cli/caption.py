"""``polycap caption``: caption images with a trained model, in batches with a KV cache.

Without a place to write to, the captions are printed (a table, or JSON). With ``-o``,
``--sidecar``, ``--write-metadata`` or ``--report`` the images are a collection
(``inference/collection.py``): resumable, split across launched processes, summarised.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from polycap.cli.options import (
    MAX_PIXELS,
    BatchSize,
    Device,
    ImageColumn,
    JsonOutput,
    MaxLength,
    MaxPixels,
)
from polycap.cli.output import (
    console,
    err_console,
    print_json,
    print_table,
    report_skipped,
)
from polycap.data.images import expand_image_paths, skipped_rows

if TYPE_CHECKING:
    from polycap.data.sources import Selection

COLLECTION = "Collections"


def caption_command(
    inputs: list[Path] = typer.Argument(
        None,
        metavar="IMAGES...",
        help="Images, folders of images (searched recursively with a collection option), "
        "Parquet tables, webdataset .tar shards.",
    ),
    model: Path = typer.Option(
        ...,
        "--model",
        "-m",
        help="Checkpoint or run folder, exported folder, ONNX export (run by ONNX Runtime), "
        "or a Hugging Face Hub id (owner/name; downloaded once, then cached).",
    ),
    beams: int | None = typer.Option(
        None,
        min=1,
        help="Beam width (default: 1 = greedy, or --num-captions when that is more).",
    ),
    sample: bool = typer.Option(False, "--sample", help="Sample instead of greedy/beam."),
    top_k: int = typer.Option(0, min=0, help="Sampling: keep the k most likely tokens (0 = all)."),
    top_p: float = typer.Option(1.0, min=0.0, max=1.0, help="Sampling: nucleus probability mass."),
    temperature: float = typer.Option(1.0, min=0.01, help="Sampling temperature."),
    num_captions: int = typer.Option(1, min=1, help="Distinct captions per image."),
    max_length: MaxLength = 30,
    seed: int | None = typer.Option(None, help="Seed for sampling."),
    repetition_penalty: float = typer.Option(
        1.0,
        help="Penalise tokens the caption already holds (1.0 = off; e.g. 1.3), every strategy.",
    ),
    no_repeat_ngram_size: int = typer.Option(
        0, min=0, help="No n-gram of this many tokens twice in a caption (0 = off; e.g. 3)."
    ),
    bank: Path | None = typer.Option(
        None,
        "--bank",
        "-b",
        help="Retrieval-augmented models: retrieve from this bank instead of the one they were "
        "trained with (domain transfer).",
    ),
    batch_size: BatchSize = 64,
    device: Device = "auto",
    max_pixels: MaxPixels = MAX_PIXELS,
    json_output: JsonOutput = False,
    image_column: ImageColumn = None,
    from_list: Path | None = typer.Option(
        None, "--from-list", help="A file of image paths, one per line.", rich_help_panel=COLLECTION
    ),
    include: list[str] = typer.Option(
        None,
        "--include",
        help="Only images matching this glob (name or path below the folder; repeatable).",
        rich_help_panel=COLLECTION,
    ),
    exclude: list[str] = typer.Option(
        None,
        "--exclude",
        help="Leave out images matching this glob (repeatable).",
        rich_help_panel=COLLECTION,
    ),
    output: Path | None = typer.Option(
        None,
        "--output",
        "-o",
        help="Caption table: .jsonl, .csv or .parquet (one row per image).",
        rich_help_panel=COLLECTION,
    ),
    sidecar: bool = typer.Option(
        False,
        "--sidecar",
        help="photo.jpg -> photo.txt beside it (UTF-8).",
        rich_help_panel=COLLECTION,
    ),
    sidecar_ext: str = typer.Option(
        ".txt", "--sidecar-ext", help="The sidecars' suffix.", rich_help_panel=COLLECTION
    ),
    write_metadata: bool = typer.Option(
        False,
        "--write-metadata",
        help="The caption into the image file: EXIF ImageDescription, "
        "XMP dc:description, IPTC Caption-Abstract (JPEG, PNG, WebP, TIFF; pixels untouched).",
        rich_help_panel=COLLECTION,
    ),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Replace descriptions polycap did not write (kept otherwise).",
        rich_help_panel=COLLECTION,
    ),
    keep_times: bool = typer.Option(
        False,
        "--keep-times",
        help="Keep the images' modification times when writing metadata.",
        rich_help_panel=COLLECTION,
    ),
    report: Path | None = typer.Option(
        None,
        "--report",
        help="A static HTML gallery of the captions, to review them.",
        rich_help_panel=COLLECTION,
    ),
) -> None:
    """Caption images: [bold]polycap caption photos/ --model runs/ja[/]; a collection:
    [bold]polycap caption photos/ -m runs/ja --write-metadata -o captions.jsonl[/]."""
    from polycap.data.sources import Selection
    from polycap.inference.collection import Targets
    from polycap.inference.pipeline import CaptionPipeline, generation_config
    from polycap.util.devices import resolve_device

    generation = generation_config(
        beams=beams,
        sample=sample,
        top_k=top_k,
        top_p=top_p,
        temperature=temperature,
        num_captions=num_captions,
        max_length=max_length,
        seed=seed,
        repetition_penalty=repetition_penalty,
        no_repeat_ngram_size=no_repeat_ngram_size,
    )
    selection = Selection(inputs or [], include or [], exclude or [], from_list)
    targets = Targets(output, sidecar, sidecar_ext, write_metadata, overwrite, keep_times, report)
    if targets.any:
        from polycap.cli.collection import caption_collection_command

        caption_collection_command(
            selection, targets, model, generation, batch_size, device, bank, json_output
        )
        return
    paths = _listed(selection)
    pipeline = CaptionPipeline.load(model, device=str(resolve_device(device)), bank=bank)
    captioner = pipeline.model
    result = pipeline.caption_files(
        paths, generation, batch_size=batch_size, progress=not json_output
    )
    _show_captions(result, str(model), captioner.config["language"], json_output)
    report_skipped(result.skipped)
    short = sum(1 for captions in result.captions if len(captions) < num_captions)
    if short and num_captions > 1:
        err_console.print(
            f"[yellow]Note:[/] {short} image(s) got fewer than {num_captions} distinct captions "
            "(their best candidates decode to the same text)",
            highlight=False,
        )
    if not result.paths:
        raise typer.Exit(2)
    if not json_output:
        console.print(f"{len(result.paths)} image(s) captioned.")


def _show_captions(result: Any, model: str, language: str, json_output: bool) -> None:
    """The captions as a table, or JSON."""
    if json_output:
        print_json(
            {
                "model": model,
                "language": language,
                "captions": [
                    {"image": str(p), "captions": c, **_retrieved(result, i)}
                    for i, (p, c) in enumerate(zip(result.paths, result.captions))
                ],
                "skipped": skipped_rows(result.skipped),
            }
        )
    else:
        rows = [(p.name, "\n".join(c)) for p, c in zip(result.paths, result.captions)]
        print_table(f"Captions ({language})", ["image", "caption"], rows)


def _listed(selection: Selection) -> list[Path]:
    """The images to print captions for: as before (folders not searched below their top)
    unless a collection option or a table/shard asks for the collection's listing."""
    from polycap.data.sources import SHARD_SUFFIXES, TABLE_SUFFIXES, list_collection

    inputs = list(selection.inputs)
    inside = any(p.suffix.lower() in TABLE_SUFFIXES + SHARD_SUFFIXES for p in inputs)
    if not inputs or inside or selection.include or selection.exclude or selection.from_list:
        return [Path(item.file) for item in list_collection(selection).items]
    return expand_image_paths(inputs)


def _retrieved(result: object, index: int) -> dict[str, list[str]]:
    retrieved = getattr(result, "retrieved", None)
    return {} if retrieved is None else {"retrieved": retrieved[index]}
