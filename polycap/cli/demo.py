"""``polycap demo``: train a tiny captioner on synthetic shapes and caption held-out images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from polycap.cli.options import JsonOutput, Lang, chosen_output, output_alias, output_option
from polycap.cli.output import console, print_json, print_table


def demo_command(
    lang: Lang = "ja",
    output: Annotated[
        Path | None, output_option("Where data, models and the report go [default: polycap-demo].")
    ] = None,
    workdir: Annotated[Path | None, output_alias("--workdir")] = None,
    images: int = typer.Option(1200, min=50, help="Synthetic images to draw."),
    epochs: int = typer.Option(20, min=1),
    seed: int = typer.Option(0),
    compare: bool = typer.Option(
        True,
        "--compare/--no-compare",
        help="End with retrieval, generation and retrieval-augmented generation on unseen pairs.",
    ),
    lm: str | None = typer.Option(
        None,
        help="A real decoder instead of the tiny GPT-2 (hub id, folder or .gguf file); frozen, "
        "only the mapper learns.",
    ),
    json_output: JsonOutput = False,
) -> None:
    """Run the offline demo end to end (no downloads): data, tiny models, training, captions."""
    from polycap.demo.runner import DemoOptions, run_demo

    if output is None and workdir is None:
        output = Path("polycap-demo")
    workdir = chosen_output(output, workdir)

    options = DemoOptions(
        language=lang,
        workdir=workdir / lang,
        images=images,
        epochs=epochs,
        seed=seed,
        compare=compare,
        progress=not json_output,
        lm=lm,
    )
    result = run_demo(options, console=None if json_output else console)
    if json_output:
        print_json(
            {
                "scores": result.scores,
                "unseen_pair_scores": result.unseen_scores,
                "comparison": result.comparison.to_json() if result.comparison else None,
                "model": str(result.model_dir),
                "report": str(result.report),
                "seconds": round(result.seconds, 1),
                "captions": result.captions,
            }
        )
        return
    sample = list(result.captions.items())[:8]
    print_table("Held-out captions (sample)", ["image", "caption"], sample)
    groups = [("held-out images, pairs seen in training", result.scores)]
    if result.unseen_scores:
        groups.append(("held-out images, pairs never seen", result.unseen_scores))
    print_table(
        "Held-out scores",
        ["images", "metric", "value"],
        [
            (group, name, f"{value:.3f}" if isinstance(value, float) else value)
            for group, scores in groups
            for name, value in scores.items()
        ],
    )
    if result.comparison is not None:
        header, rows = result.comparison.table()
        print_table("Three methods (some colour-shape pairs held out of training)", header, rows)
        for line in result.comparison.verdict():
            console.print(line)
    console.print(
        f"Report: [bold]{result.report}[/]   model: {result.model_dir}   "
        f"time: {result.seconds:.0f}s"
    )
