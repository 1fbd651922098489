"""``polycap train``: fit a mapper (and optionally the LM) on a caption set."""

from __future__ import annotations

from pathlib import Path

import typer

from polycap.cli.options import Pretrained
from polycap.cli.output import console, print_json, print_table


def train_command(
    data: Path = typer.Option(
        ..., "--data", "-d", help="Caption file: captions.json, COCO json, CSV/TSV or JSONL."
    ),
    lang: str = typer.Option(..., "--lang", "-l", help="Language pack code, e.g. ja, ru, zh, en."),
    output: Path = typer.Option(
        Path("runs/polycap"), "--output", "-o", help="Run folder for checkpoints."
    ),
    images: Path | None = typer.Option(
        None, "--images", help="Folder the caption file's image names are relative to."
    ),
    data_format: str | None = typer.Option(
        None, "--format", help="Caption file format (default: by suffix/content)."
    ),
    encoder: str = typer.Option("ViT-B-32", help="open_clip model name (or backend:model)."),
    pretrained: Pretrained = "openai",
    lm: str | None = typer.Option(
        None, help="Decoder hub id or local folder (default: the pack's)."
    ),
    mapper: str = typer.Option("mlp", help="Prefix mapper: mlp or transformer (or a plugin's)."),
    prefix_length: int = typer.Option(10, min=1, help="Prefix tokens fed to the LM."),
    clip_length: int | None = typer.Option(
        None, min=1, help="Transformer mapper: CLIP tokens (ClipCap's clip_length)."
    ),
    train_lm: bool = typer.Option(
        False, "--train-lm/--freeze-lm", help="Fine-tune the LM too (default: frozen)."
    ),
    save_lm: bool = typer.Option(
        False, "--save-lm", help="Bundle a frozen LM's weights in checkpoints."
    ),
    standardize: bool = typer.Option(
        True,
        "--standardize-features/--raw-features",
        help="Centre and scale CLIP features with training-set statistics (saved in the model).",
    ),
    epochs: int = typer.Option(10, min=1),
    batch_size: int = typer.Option(
        32, min=1, help="Captions per batch and process (global: × processes × --grad-accum)."
    ),
    lr: float = typer.Option(2e-5, help="Peak learning rate."),
    warmup: int = typer.Option(0, min=0, help="Warmup steps (linear), then linear decay."),
    grad_accum: int = typer.Option(1, min=1, help="Gradient accumulation steps."),
    precision: str = typer.Option("fp32", help="fp32, bf16 or fp16 (autocast)."),
    max_tokens: int = typer.Option(40, min=2, help="Longest caption in tokens (end token kept)."),
    val_fraction: float = typer.Option(
        0.1, min=0.0, max=0.9, help="Share of images held out for validation."
    ),
    seed: int = typer.Option(0),
    save_every: int = typer.Option(0, min=0, help="Also checkpoint every N optimizer steps."),
    device: str = typer.Option(
        "auto", help="cpu, cuda, cuda:1 … (auto: GPU if any; under a launcher: auto or cpu)."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in --output from its newest checkpoint."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace the run already in --output (its checkpoints go)."
    ),
    json_output: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Train a captioner: [bold]polycap train --lang ja --data captions.json[/]."""
    from polycap.training import TrainConfig, train

    mapper_options = {"clip_length": clip_length} if clip_length else {}
    config = TrainConfig(
        language=lang,
        data=data,
        output=output,
        images_dir=images,
        data_format=data_format,
        encoder=encoder,
        pretrained=pretrained,
        lm=lm,
        mapper=mapper,
        mapper_options=mapper_options,
        prefix_length=prefix_length,
        train_lm=train_lm,
        standardize_features=standardize,
        save_lm=save_lm,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        warmup_steps=warmup,
        grad_accum=grad_accum,
        precision=precision,
        max_tokens=max_tokens,
        val_fraction=val_fraction,
        seed=seed,
        save_every=save_every,
        device=device,
        progress=not json_output,
    )
    result = train(
        config, resume=resume, overwrite=overwrite, console=None if json_output else console
    )
    if json_output:
        print_json(
            {
                "model": str(result.model_dir),
                "history": result.history,
                "skipped_images": result.skipped_images,
                "batches_run": result.batches_run,
                "resumed_from": str(result.resumed_from) if result.resumed_from else None,
                "processes": result.processes,
                "global_batch_size": result.global_batch_size,
            }
        )
        return
    rows = [
        (h["epoch"], h["step"], f"{h['train_loss']:.4f}", f"{h['val_loss']:.4f}")
        for h in result.history
    ]
    print_table("Training", ["epoch", "step", "train loss", "val loss"], rows)
    console.print(f"Model saved to [bold]{result.model_dir}[/]")
