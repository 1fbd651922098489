"""``polycap train``: fit a mapper (and optionally the LM) on a caption set."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

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
    MaxPixels,
    Pretrained,
    Split,
    TrainLang,
    output_option,
    split_names,
)
from polycap.cli.output import console, print_json, print_table


def train_command(
    ctx: typer.Context,
    data: Annotated[Path | None, typer.Option("--data", "-d", help=DATA_HELP)] = None,
    language: TrainLang = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="A settings file (TOML; keys as in OUTPUT/settings.toml, a \\[mapper] table for "
            "the mapper's kind and options); options given here override it.",
        ),
    ] = None,
    output: Annotated[Path, output_option("Run folder (checkpoints, final model).")] = Path(
        "runs/polycap"
    ),
    images_dir: Images = None,
    allow_outside_images: AllowOutside = False,
    data_format: DataFormat = None,
    split: Split = None,
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
    mapper_options: Annotated[
        list[str] | None,
        typer.Option(
            "--mapper-option",
            help="A mapper option as NAME=VALUE, e.g. num_layers=4 (repeat for more); passed "
            "to the mapper's class.",
        ),
    ] = None,
    train_lm: Annotated[
        bool, typer.Option("--train-lm/--freeze-lm", help="Fine-tune the LM too (default: frozen).")
    ] = False,
    save_lm: Annotated[
        bool, typer.Option("--save-lm", help="Bundle a frozen LM's weights in checkpoints.")
    ] = False,
    standardize_features: Annotated[
        bool,
        typer.Option(
            "--standardize-features/--raw-features",
            help="Centre and scale CLIP features by training-set statistics (saved in the "
            "model); --raw-features turns this off.",
        ),
    ] = True,
    normalize_features: Annotated[
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
    lr_schedule: Annotated[
        str,
        typer.Option(
            "--lr-schedule",
            help="Learning-rate schedule after the warm-up (transformers.get_scheduler): "
            "linear, cosine, cosine_with_restarts, polynomial, constant, constant_with_warmup, "
            "inverse_sqrt.",
        ),
    ] = "linear",
    warmup_steps: Annotated[
        int, typer.Option("--warmup", min=0, help="Warm-up steps (linear), then the schedule.")
    ] = 0,
    weight_decay: Annotated[
        float, typer.Option("--weight-decay", min=0.0, help="AdamW weight decay.")
    ] = 0.0,
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
    keep_checkpoints: Annotated[
        int,
        typer.Option(
            "--keep-checkpoints",
            min=1,
            help="Complete checkpoints kept (the newest); an older one is deleted once a newer "
            "one is complete.",
        ),
    ] = 2,
    log_every: Annotated[
        int,
        typer.Option(
            "--log-every",
            min=0,
            help="A line (loss, learning rate) and tracker values every N optimizer steps, "
            "terminal or not; 0: once per epoch.",
        ),
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
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Print the resolved settings (as OUTPUT/settings.toml would hold them) and "
            "stop: nothing is trained or written.",
        ),
    ] = False,
    json_output: JsonOutput = False,
) -> None:
    """Train a captioner: [bold]polycap train --lang ja --data captions.json[/]."""
    from polycap.train.trainer import train

    settings = settings_from_options(ctx, config, resume)
    if dry_run:
        show_settings(settings, json_output)
        return
    result = train(
        settings, resume=resume, overwrite=overwrite, console=None if json_output else console
    )
    if result.main_process:
        report(result, json_output)


# the options of train_command that are no settings, or need converting
NOT_SETTINGS = ("config", "resume", "overwrite", "dry_run", "json_output", "clip_length")


def given_options(ctx: typer.Context) -> dict[str, Any]:
    """The settings the command line gave (options left at their defaults are not given, so
    that a settings file or a resumed run's saved settings keep theirs)."""
    from polycap.train.settings import parse_mapper_options

    given: dict[str, Any] = {}
    for name, value in ctx.params.items():
        source = ctx.get_parameter_source(name)
        if name in NOT_SETTINGS or source is None or source.name != "COMMANDLINE":
            continue
        if name in ("eval_metrics", "log_with"):
            value = split_names(value) or []
        elif name in ("stop_token", "best_metric"):
            value = value or None
        elif name == "mapper_options":
            value = parse_mapper_options(value or [])
        given[name] = value
    if ctx.params.get("clip_length"):
        given.setdefault("mapper_options", {})["clip_length"] = ctx.params["clip_length"]
    return given


def settings_from_options(ctx: typer.Context, config: Path | None, resume: bool) -> Any:
    """The run's settings: defaults < the run's saved settings (``--resume``) < ``--config``
    < the options given; checked before any work (one line, exit 2)."""
    from polycap.plugins import get_registries
    from polycap.train.settings import (
        TrainSettings,
        check_settings,
        checked_values,
        read_settings_file,
        saved_settings,
    )

    given = checked_values(given_options(ctx), "the command line")
    from_file = read_settings_file(config) if config is not None else {}
    output = given.get("output") or from_file.get("output") or TrainSettings().output
    saved = saved_settings(Path(output)) if resume else {}
    shown = {"progress": not ctx.params["json_output"]}
    settings = TrainSettings.resolve(saved, from_file, given, shown)
    check_settings(settings, get_registries())
    return settings


def show_settings(settings: Any, json_output: bool) -> None:
    """``--dry-run``: the resolved settings on stdout, as TOML (or JSON with ``--json``)."""
    import sys

    if json_output:
        print_json({"settings": settings.to_json()})
    else:
        sys.stdout.write(settings.to_toml())


def report(result: Any, json_output: bool) -> None:
    """The run's history as a table (or JSON), its best epoch, where the model went."""
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
