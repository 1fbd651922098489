"""``polycap caption`` over a collection: load the model in each launched process, caption the
collection into its targets (``inference/collection.py``), print one summary."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from polycap.cli.output import console, err_console, print_json, print_table

if TYPE_CHECKING:
    from polycap.data.sources import Selection
    from polycap.inference.collection import Summary, Targets


def caption_collection_command(
    selection: Selection,
    targets: Targets,
    model: Path,
    generation: Any,
    batch_size: int,
    device: str,
    bank: Path | None,
    json_output: bool,
) -> None:
    from polycap.inference.collection import RunOptions, caption_collection
    from polycap.inference.pipeline import CaptionPipeline
    from polycap.util.devices import resolve_device
    from polycap.util.distributed import processes

    procs = processes()
    where = str(resolve_device(procs.device_for(device)))
    pipeline = CaptionPipeline.load(model, device=where, bank=bank)
    options = RunOptions(generation, batch_size, procs.main and not json_output, str(model))
    summary = caption_collection(pipeline, selection, targets, options, procs)
    if not procs.main:
        return  # one summary for the run
    if json_output:
        print_json({"model": str(model), "language": pipeline.language, **summary.to_json()})
    else:
        print_summary(summary, pipeline.language)
    if summary.images and not (summary.captioned or summary.done or summary.kept):
        raise typer.Exit(2)  # nothing could be read


def print_summary(summary: Summary, language: str) -> None:
    """The closing table, then a line for each kind of image that was not captioned."""
    report = summary.to_json()
    print_table(
        f"Collection ({language})",
        ["images", "captioned", "skipped (done)", "kept", "unreadable", "processes", "images/s"],
        [
            (
                report["images"],
                report["captioned"],
                report["skipped_done"],
                report["kept"],
                report["unreadable_count"],
                report["processes"],
                report["images_per_second"],
            )
        ],
    )
    if summary.kept:
        console.print(
            f"{summary.kept} existing description(s) kept (--overwrite replaces them).",
            highlight=False,
        )
    if summary.unreadable_count:
        named = ", ".join(f"{key} ({why})" for key, why in summary.unreadable[:5])
        more = summary.unreadable_count - min(5, len(summary.unreadable))
        tail = f" and {more} more" if more > 0 else ""
        err_console.print(
            f"[yellow]Unreadable[/] {summary.unreadable_count} image(s): {named}{tail}",
            highlight=False,
        )
    for reason, count in summary.no_metadata.items():
        err_console.print(f"[yellow]No metadata[/] for {count} image(s): {reason}", highlight=False)
    for key, reason in summary.failed[:5]:
        err_console.print(f"[red]Not written[/] {key}: {reason}", highlight=False)
