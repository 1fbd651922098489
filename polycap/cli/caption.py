"""``polycap caption``: caption images with a trained model, in batches with a KV cache."""

from __future__ import annotations

from pathlib import Path

import typer

from polycap.cli.options import MAX_PIXELS, BatchSize, Device, JsonOutput, MaxLength, MaxPixels
from polycap.cli.output import (
    console,
    err_console,
    print_json,
    print_table,
    report_skipped,
)
from polycap.data.images import expand_image_paths, skipped_rows


def caption_command(
    inputs: list[Path] = typer.Argument(
        ..., metavar="IMAGES...", help="Images and/or folders of images."
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
) -> None:
    """Caption images: [bold]polycap caption photos/ --model runs/ja[/]."""
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
    paths = expand_image_paths(inputs)
    pipeline = CaptionPipeline.load(model, device=str(resolve_device(device)), bank=bank)
    captioner = pipeline.model
    result = pipeline.caption_files(
        paths, generation, batch_size=batch_size, progress=not json_output
    )
    if json_output:
        print_json(
            {
                "model": str(model),
                "language": captioner.config["language"],
                "captions": [
                    {"image": str(p), "captions": c, **_retrieved(result, i)}
                    for i, (p, c) in enumerate(zip(result.paths, result.captions))
                ],
                "skipped": skipped_rows(result.skipped),
            }
        )
    else:
        rows = [(p.name, "\n".join(c)) for p, c in zip(result.paths, result.captions)]
        print_table(f"Captions ({captioner.config['language']})", ["image", "caption"], rows)
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


def _retrieved(result: object, index: int) -> dict[str, list[str]]:
    retrieved = getattr(result, "retrieved", None)
    return {} if retrieved is None else {"retrieved": retrieved[index]}
