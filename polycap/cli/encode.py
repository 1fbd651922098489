"""``polycap encode``: CLIP features for images, cached on disk; training encodes nothing twice."""

from __future__ import annotations

from pathlib import Path

import typer

from polycap.cli.options import (
    MAX_PIXELS,
    AllowOutside,
    BatchSize,
    CacheDir,
    Device,
    Encoder,
    Images,
    JsonOutput,
    MaxPixels,
    Pretrained,
)
from polycap.cli.output import print_json, print_table, report_skipped


def encode_command(
    inputs: list[Path] = typer.Argument(None, help="Images and/or folders of images."),
    data: Path | None = typer.Option(
        None, "--data", "-d", help="Or: the images of a caption file."
    ),
    images: Images = None,
    allow_outside_images: AllowOutside = False,
    encoder: Encoder = "ViT-B-32",
    pretrained: Pretrained = "openai",
    batch_size: BatchSize = 64,
    cache_dir: CacheDir = None,
    device: Device = "auto",
    max_pixels: MaxPixels = MAX_PIXELS,
    json_output: JsonOutput = False,
) -> None:
    """Encode images once into the feature cache: [bold]polycap encode --data captions.json[/]."""
    from polycap.data import load_captions
    from polycap.devices import resolve_device
    from polycap.encoding import encode_images, load_encoder
    from polycap.errors import BadInput
    from polycap.images import expand_image_paths

    paths = expand_image_paths(inputs) if inputs else []
    if data is not None:
        paths += load_captions(data, images_dir=images).images()
    if not paths:
        raise BadInput("nothing to encode: give images, folders or --data")
    image_encoder = load_encoder(
        encoder,
        pretrained=pretrained,
        device=str(resolve_device(device)),
    )
    result = encode_images(
        image_encoder, paths, batch_size=batch_size, cache_dir=cache_dir, progress=not json_output
    )
    summary = {
        "encoder": image_encoder.cache_key,
        "images": len(paths),
        "encoded": len(result.paths),
        "skipped": [{"image": str(p), "reason": r} for p, r in result.skipped],
        "dim": image_encoder.embed_dim,
    }
    if json_output:
        print_json(summary)
        return
    print_table(
        "Encoding",
        ["encoder", "images", "features", "skipped", "dim"],
        [
            (
                image_encoder.cache_key,
                len(paths),
                len(result.paths),
                len(result.skipped),
                image_encoder.embed_dim,
            )
        ],
    )
    report_skipped(result.skipped)
