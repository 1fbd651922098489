"""``polycap index`` builds a caption bank; ``polycap retrieve`` captions images from it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from polycap.cli.options import (
    MAX_PIXELS,
    AllowOutside,
    BatchSize,
    CacheDir,
    CaptionColumn,
    DataFormat,
    Device,
    Encoder,
    ImageColumn,
    Images,
    JsonOutput,
    Lang,
    MaxPixels,
    Pretrained,
    chosen_output,
    output_alias,
    output_option,
)
from polycap.cli.output import (
    console,
    print_json,
    print_table,
    report_skipped,
)
from polycap.data.images import expand_image_paths, skipped_rows
from polycap.util.atomic import check_writable_folder


def index_command(
    captions: Annotated[
        Path, typer.Argument(help="Caption file: captions.json, COCO json, CSV/TSV or JSONL.")
    ],
    lang: Lang,
    output: Annotated[Path | None, output_option("Bank folder to create.")] = None,
    out: Annotated[Path | None, output_alias("--out")] = None,
    images: Images = None,
    allow_outside_images: AllowOutside = False,
    image_column: ImageColumn = None,
    caption_column: CaptionColumn = None,
    data_format: DataFormat = None,
    encoder: Encoder = "ViT-B-32",
    pretrained: Pretrained = "openai",
    dtype: str = typer.Option("float16", help="Embedding storage: float16 or float32."),
    text: bool = typer.Option(
        True, "--text/--no-text", help="Also embed the captions (text mode; needs a text tower)."
    ),
    batch_size: BatchSize = 64,
    device: Device = "auto",
    max_pixels: MaxPixels = MAX_PIXELS,
    cache_dir: CacheDir = None,
    force: bool = typer.Option(False, "--force", help="Replace an existing bank at --output."),
    backend: str = typer.Option(
        "numpy", "--backend", help="Index backend: numpy (exact scan, built in) or a plugin's."
    ),
    index_type: str | None = typer.Option(
        None, "--index-type", help="The backend's index type (faiss: flat, ivf, hnsw)."
    ),
    index_options: str | None = typer.Option(
        None, "--index-options", help="Backend options, e.g. nlist=1024,nprobe=16 (faiss ivf)."
    ),
    json_output: JsonOutput = False,
) -> None:
    """Build a caption bank: [bold]polycap index train.json --lang ja -o bank/[/]."""
    from polycap.data.captions import load_captions
    from polycap.data.encoding import load_encoder
    from polycap.plugins import get_registries
    from polycap.retrieval.backends import IndexChoice, parse_options
    from polycap.retrieval.bank import BankOptions, build_bank
    from polycap.util.devices import resolve_device
    from polycap.util.distributed import processes

    out = check_writable_folder(chosen_output(output, out), "--output")
    index = IndexChoice(backend, index_type, parse_options(index_options))
    index.resolve()  # an unknown backend or type is refused before any encoding
    procs = processes()
    pack = get_registries().languages.get(lang)
    caption_set = load_captions(captions, images_dir=images, format=data_format)
    image_encoder = load_encoder(
        encoder,
        pretrained=pretrained,
        device=str(resolve_device(procs.device_for(device))),
    )
    options = BankOptions(
        dtype=dtype,
        batch_size=batch_size,
        cache_dir=cache_dir,
        text=text,
        force=force,
        progress=not json_output,
        index=index,
    )
    stats = build_bank(caption_set, image_encoder, out, pack, options)
    if not procs.main:
        return  # the other processes helped encode the images
    _show_bank(stats, image_encoder, index, pack.code, dtype, json_output)


def _show_bank(
    stats: Any, encoder: Any, index: Any, language: str, dtype: str, json_output: bool
) -> None:
    """The built bank as a table (or JSON), then the images that were skipped."""
    backend, index_type = index.backend, index.resolve()[1]
    summary = {
        "bank": str(stats.path),
        "backend": backend,
        "index_type": index_type,
        "language": language,
        "encoder": encoder.name,
        "pretrained": encoder.pretrained,
        "dim": encoder.embed_dim,
        "captions": stats.captions,
        "caption_records": stats.caption_records,
        "images": stats.images,
        "text_embeddings": stats.has_text,
        "skipped": skipped_rows(stats.skipped),
        "seconds": round(stats.seconds, 2),
    }
    if json_output:
        print_json(summary)
        return
    print_table(
        "Caption bank",
        ["bank", "captions (unique)", "images", "text", "dim", "encoder", "index"],
        [
            (
                stats.path,
                f"{stats.caption_records} ({stats.captions})",
                stats.images,
                "yes" if stats.has_text else "no",
                f"{encoder.embed_dim} {dtype}",
                encoder.name,
                f"{backend} {index_type}",
            )
        ],
    )
    report_skipped(stats.skipped)


def retrieve_command(
    inputs: list[Path] = typer.Argument(..., help="Images and/or folders of images."),
    bank: Path = typer.Option(..., "--bank", "-b", help="Bank folder from 'polycap index'."),
    mode: str = typer.Option(
        "text", help="text: nearest caption embeddings; image: captions of the nearest images."
    ),
    k: int = typer.Option(5, "--k", "-k", min=1, help="Captions per image."),
    consensus: bool = typer.Option(
        False,
        "--consensus",
        help="Image mode: re-rank the neighbours' captions by agreement "
        "(mean n-gram F1 with the other neighbours' captions).",
    ),
    neighbours: int | None = typer.Option(
        None,
        min=1,
        help="Image mode: nearest images to take captions from (default: k; 10 with --consensus).",
    ),
    chunk_size: int = typer.Option(16384, min=1, help="Bank rows searched at a time."),
    batch_size: BatchSize = 64,
    device: Device = "auto",
    max_pixels: MaxPixels = MAX_PIXELS,
    cache_dir: CacheDir = None,
    json_output: JsonOutput = False,
) -> None:
    """Caption images by retrieval: [bold]polycap retrieve photo.jpg --bank bank/ --k 3[/]."""
    from polycap.retrieval.bank import Bank
    from polycap.retrieval.search import RetrievalOptions, retrieve_images
    from polycap.util.devices import resolve_device

    opened = Bank.open(bank)
    paths = expand_image_paths(inputs)
    result = retrieve_images(
        opened,
        paths,
        RetrievalOptions(mode, k, consensus, neighbours, chunk_size),
        batch_size=batch_size,
        device=str(resolve_device(device)),
        cache_dir=cache_dir,
        progress=not json_output,
    )
    if json_output:
        print_json(
            {
                "bank": str(bank),
                "mode": mode,
                "consensus": consensus,
                "k": k,
                "results": [
                    {
                        "image": str(p),
                        "captions": [
                            {
                                "caption": r.caption,
                                "score": round(r.score, 4),
                                "caption_id": r.caption_id,
                                **({"neighbour": r.image} if r.image else {}),
                            }
                            for r in rows
                        ],
                    }
                    for p, rows in zip(result.paths, result.results, strict=True)
                ],
                "skipped": skipped_rows(result.skipped),
            }
        )
    else:
        rows = [
            (p.name if i == 0 else "", i + 1, r.caption, f"{r.score:.4f}")
            for p, found in zip(result.paths, result.results, strict=True)
            for i, r in enumerate(found)
        ]
        title = f"Retrieved captions ({mode}{', consensus' if consensus else ''})"
        print_table(title, ["image", "rank", "caption", "score"], rows)
    report_skipped(result.skipped)
    if not result.paths:
        raise typer.Exit(2)
    if not json_output:
        console.print(
            f"{len(result.paths)} image(s), searched in {1000 * result.search_seconds:.1f} ms."
        )
