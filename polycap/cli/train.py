"""``polycap train``: fit a mapper (and optionally the LM) on a caption set."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from polycap.cli.options import (
    DATA_HELP,
    MAX_PIXELS,
    AllowOutside,
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
    output_option,
    split_names,
)
from polycap.cli.output import console, print_json, print_table


def train_command(
    data: Annotated[Path, typer.Option("--data", "-d", help=DATA_HELP)],
    lang: Lang,
    output: Annotated[Path, output_option("Run folder (checkpoints, final model).")] = Path(
        "runs/polycap"
    ),
    images: Images = None,
    allow_outside_images: AllowOutside = False,
    data_format: DataFormat = None,
    image_column: ImageColumn = None,
    caption_column: CaptionColumn = None,
    encoder: Encoder = "ViT-B-32",
    pretrained: Pretrained = "openai",
    lm: Annotated[
        str | None,
        typer.Option(
            help="Decoder: any causal LM by hub id, local folder or .gguf file "
            "(default: the pack's)."
        ),
    ] = None,
    mapper: Annotated[
        str, typer.Option(help="Prefix mapper: mlp, transformer or linear (or a plugin's).")
    ] = "mlp",
    prefix_length: Annotated[int, typer.Option(min=1, help="Prefix tokens fed to the LM.")] = 10,
    clip_length: Annotated[
        int | None,
        typer.Option(min=1, help="Transformer mapper: CLIP tokens (ClipCap's clip_length)."),
    ] = None,
    train_lm: Annotated[
        bool, typer.Option("--train-lm/--freeze-lm", help="Fine-tune the LM too (default: frozen).")
    ] = False,
    save_lm: Annotated[
        bool, typer.Option("--save-lm", help="Bundle a frozen LM's weights in checkpoints.")
    ] = False,
    standardize: Annotated[
        bool,
        typer.Option(
            "--standardize-features/--raw-features",
            help="Centre and scale CLIP features by training-set statistics (saved in the "
            "model); --raw-features turns this off.",
        ),
    ] = True,
    l2_normalize: Annotated[
        bool,
        typer.Option(
            "--l2-normalize/--no-l2-normalize",
            help="L2-normalise CLIP features before the mapper; --no-l2-normalize with "
            "--raw-features feeds them exactly as the encoder gives them (official ClipCap).",
        ),
    ] = True,
    epochs: Annotated[int, typer.Option(min=1)] = 10,
    batch_size: Annotated[
        int,
        typer.Option(
            "--batch-size",
            min=1,
            help="Captions per batch and process (global batch: × processes × --grad-accum).",
        ),
    ] = 32,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 2e-5,
    warmup: Annotated[
        int, typer.Option(min=0, help="Warmup steps (linear), then linear decay.")
    ] = 0,
    grad_accum: Annotated[int, typer.Option(min=1, help="Gradient accumulation steps.")] = 1,
    precision: Annotated[
        str, typer.Option(help="fp32, bf16 or fp16 (mixed precision through Accelerate).")
    ] = "fp32",
    max_tokens: Annotated[
        int, typer.Option(min=2, help="Longest caption in tokens (end token kept).")
    ] = 40,
    val_fraction: Annotated[
        float, typer.Option(min=0.0, max=0.9, help="Share of images held out for validation.")
    ] = 0.1,
    eval_metrics: Annotated[
        str | None,
        typer.Option(
            "--eval-metrics",
            help="Caption the validation images each epoch and record these metrics in the "
            "history, e.g. cider-d,bleu,wer.",
        ),
    ] = None,
    best_metric: Annotated[
        str | None,
        typer.Option(
            "--best-metric",
            help="Keep the best epoch's model as best/ by this validation score: val_loss "
            "(lower is better) or one of --eval-metrics (cider-d, bleu = BLEU-4, chrf: higher; "
            "wer: lower).",
        ),
    ] = None,
    early_stop: Annotated[
        int,
        typer.Option(
            "--early-stop",
            min=0,
            help="Stop after N epochs without improvement of --best-metric (val_loss when "
            "not given); 0: never.",
        ),
    ] = 0,
    log_with: Annotated[
        str | None,
        typer.Option(
            "--log-with",
            help="Log each epoch's history to Accelerate trackers, e.g. tensorboard or wandb "
            "(their package must be installed); files go to OUTPUT/logs.",
        ),
    ] = None,
    stop_token: Annotated[
        str | None,
        typer.Option(
            "--stop-token",
            help="A token that ends captions instead of the pack's end token (ClipCap: '.'); "
            "recorded in the model.",
        ),
    ] = None,
    retrieval_bank: Annotated[
        Path | None,
        typer.Option(
            "--retrieval-bank",
            help="Retrieval-augmented: put the captions of each image's nearest bank images "
            "(image kNN; its own excluded) into a prompt before the caption. Recorded in the "
            "model; polycap caption uses it (or --bank).",
        ),
    ] = None,
    retrieval_k: Annotated[
        int, typer.Option("--retrieval-k", min=1, help="Retrieved captions per prompt.")
    ] = 4,
    seed: Annotated[int, typer.Option()] = 0,
    save_every: Annotated[
        int, typer.Option(min=0, help="Also checkpoint every N optimizer steps.")
    ] = 0,
    device: Device = "auto",
    max_pixels: MaxPixels = MAX_PIXELS,
    cache_dir: CacheDir = None,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Continue the run in --output from its newest checkpoint."),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace the run in --output (its checkpoints go).")
    ] = False,
    json_output: JsonOutput = False,
) -> None:
    """Train a captioner: [bold]polycap train --lang ja --data captions.json[/]."""
    from polycap.eval.runner import check_metrics
    from polycap.train.trackers import check_trackers
    from polycap.train.trainer import TrainConfig, train

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
        normalize_features=l2_normalize,
        save_lm=save_lm,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        warmup_steps=warmup,
        grad_accum=grad_accum,
        precision=precision,
        max_tokens=max_tokens,
        val_fraction=val_fraction,
        eval_metrics=check_metrics(split_names(eval_metrics) or []),
        stop_token=stop_token or None,
        best_metric=best_metric or None,
        early_stop=early_stop,
        log_with=check_trackers(split_names(log_with) or []),
        retrieval_bank=retrieval_bank,
        retrieval_k=retrieval_k,
        seed=seed,
        save_every=save_every,
        device=device,
        cache_dir=cache_dir,
        progress=not json_output,
    )
    result = train(
        config, resume=resume, overwrite=overwrite, console=None if json_output else console
    )
    if not result.main_process:
        return
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
                "best": result.best,
                "stopped_early": result.stopped_early,
            }
        )
        return
    extra = [k for k in (result.history[-1] if result.history else {}) if k.startswith("val_")]
    extra = [k for k in extra if k != "val_loss"]
    rows = [
        (h["epoch"], h["step"], f"{h['train_loss']:.4f}", f"{h['val_loss']:.4f}")
        + tuple(_score(h.get(key)) for key in extra)
        for h in result.history
    ]
    headers = ["epoch", "step", "train loss", "val loss", *(k.replace("_", " ") for k in extra)]
    print_table("Training", headers, rows)
    if result.best:
        best = result.best
        console.print(
            f"Best {best['metric']}: {best['score']:.4f} at epoch {best['epoch']} "
            f"([bold]{best['model']}[/])"
        )
    if result.stopped_early is not None:
        console.print(f"Stopped early at epoch {result.stopped_early}")
    console.print(f"Model saved to [bold]{result.model_dir}[/]")


def _score(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
