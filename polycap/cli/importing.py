"""``polycap import``: bring in models trained elsewhere (official ClipCap checkpoints)."""

from __future__ import annotations

from pathlib import Path

import typer

from polycap.cli.output import console, print_json

app = typer.Typer(
    help="Import models trained elsewhere into polycap checkpoints.", no_args_is_help=True
)


@app.command("clipcap")
def clipcap_command(
    weights: Path = typer.Argument(
        ..., help="Official ClipCap state dict (.pt with clip_project.* and gpt.* keys)."
    ),
    output: Path = typer.Option(..., "--output", "-o", help="Checkpoint folder to write."),
    lm: str = typer.Option(
        "gpt2",
        help="Hub id or folder of the LM the gpt.* weights belong to (architecture, tokenizer).",
    ),
    lang: str = typer.Option("en", "--lang", "-l", help="Language pack code of the captions."),
    stop_token: str = typer.Option(
        ".", help="Token that ends a caption (official ClipCap: '.'); '' = the pack's end token."
    ),
    encoder: str | None = typer.Option(
        None, help="CLIP the features came from (default: ViT-B-32 for 512-d, RN50x4 for 640-d)."
    ),
    pretrained: str | None = typer.Option(None, help="Its weights tag or file (default: openai)."),
    heads: int = typer.Option(8, min=1, help="Transformer mapper: attention heads (official: 8)."),
    json_output: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    force: bool = typer.Option(
        False,
        "--force",
        help="Replace another polycap model at --output (a run's final/, a checkpoint); "
        "a folder polycap did not write is never replaced.",
    ),
) -> None:
    """Convert an official ClipCap checkpoint: [bold]polycap import clipcap coco_weights.pt -o
    models/coco[/]. Features are fed raw (no normalisation) and captions end at the stop token,
    as in the official code; greedy and beam captions match its generate2 / generate_beam.
    --output is replaced only when it is empty or an earlier ClipCap import."""
    from polycap.interop.clipcap import import_clipcap

    model_dir = import_clipcap(
        weights,
        output,
        lm=lm,
        language=lang,
        stop_token=stop_token,
        encoder=encoder,
        pretrained=pretrained,
        heads=heads,
        force=force,
    )
    if json_output:
        print_json({"model": str(model_dir)})
    else:
        console.print(f"Imported {weights} into [bold]{model_dir}[/]")
