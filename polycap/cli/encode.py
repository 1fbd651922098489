"""``polycap encode``: CLIP features for images, cached on disk and (with ``--output``) written
to a feature store; under ``accelerate launch`` / ``torchrun`` the processes share the images."""

from __future__ import annotations

from pathlib import Path

import typer

from polycap.cli.options import (
    MAX_PIXELS,
    AllowOutside,
    BatchSize,
    CacheDir,
    CaptionColumn,
    Device,
    Encoder,
    ImageColumn,
    Images,
    JsonOutput,
    MaxPixels,
    Pretrained,
)
from polycap.cli.output import print_json, print_table, report_skipped
from polycap.data.images import expand_image_paths, skipped_rows
from polycap.errors import BadInput


def encode_command(
    inputs: list[Path] = typer.Argument(None, help="Images and/or folders of images."),
    data: Path | None = typer.Option(
        None, "--data", "-d", help="Or: the images of a caption file."
    ),
    images: Images = None,
    allow_outside_images: AllowOutside = False,
    image_column: ImageColumn = None,
    caption_column: CaptionColumn = None,
    encoder: Encoder = "ViT-B-32",
    pretrained: Pretrained = "openai",
    batch_size: BatchSize = 64,
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Feature store folder to write (rows, image list, encoder)."
    ),
    cache_dir: CacheDir = None,
    device: Device = "auto",
    max_pixels: MaxPixels = MAX_PIXELS,
    json_output: JsonOutput = False,
) -> None:
    """Encode images once into the feature cache: [bold]polycap encode --data captions.json[/]."""
    from polycap.data.captions import load_captions
    from polycap.data.encoding import load_encoder
    from polycap.data.features import encode_to_store
    from polycap.util.devices import resolve_device
    from polycap.util.distributed import processes

    paths = expand_image_paths(inputs) if inputs else []
    if data is not None:
        paths += load_captions(data, images_dir=images).images()
    if not paths:
        raise BadInput("nothing to encode: give images, folders or --data")
    procs = processes()
    image_encoder = load_encoder(
        encoder,
        pretrained=pretrained,
        device=str(resolve_device(procs.device_for(device))),
    )
    result = encode_to_store(
        image_encoder,
        paths,
        output,
        batch_size=batch_size,
        cache_dir=cache_dir,
        progress=not json_output,
        procs=procs,
    )
    stats = result.stats
    if not procs.main:
        return  # the other processes helped encode; one summary is enough
    summary = {
        "encoder": image_encoder.cache_key,
        "images": len(paths),
        "encoded": stats.rows,
        "skipped": skipped_rows(stats.skipped),
        "dim": image_encoder.embed_dim,
        "store": str(output) if output is not None else None,
        "processes": stats.processes,
        "reused": stats.reused,
        "seconds": round(stats.seconds, 2),
    }
    if json_output:
        print_json(summary)
        return
    print_table(
        "Encoding",
        ["encoder", "images", "features", "skipped", "dim", "processes", "store"],
        [
            (
                image_encoder.cache_key,
                len(paths),
                stats.rows,
                len(stats.skipped),
                image_encoder.embed_dim,
                stats.processes,
                f"{output} (reused)" if stats.reused else (output or "cache only"),
            )
        ],
    )
    report_skipped(stats.skipped)
