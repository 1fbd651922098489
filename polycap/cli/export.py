"""``polycap export``: share a trained captioner as a Hugging Face folder or as ONNX graphs."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from polycap.cli.options import output_option
from polycap.cli.output import console
from polycap.errors import BadInput

if TYPE_CHECKING:
    from polycap.interop.model_card import CardLicense


class Target(str, Enum):
    hf = "hf"
    onnx = "onnx"


def export_command(
    model: Path = typer.Argument(
        ..., help="Checkpoint or run folder (or a Hub id) to export.", show_default=False
    ),
    out: Path | None = typer.Argument(None, help="Folder to write.", show_default=False),
    to: Target = typer.Option(
        ..., "--to", help="hf: self-contained folder + model card; onnx: ONNX Runtime graphs."
    ),
    output: Annotated[Path | None, output_option("Folder to write (same as OUT).")] = None,
    eval_file: Path | None = typer.Option(
        None, "--eval", help="hf: a 'polycap eval --json' result to put on the model card."
    ),
    license: str | None = typer.Option(
        None,
        "--license",
        help="hf: the licence on the model card, an SPDX id (mit, apache-2.0, cc-by-4.0).",
    ),
    license_name: str | None = typer.Option(
        None, "--license-name", help="hf: another licence's short name (with --license-link)."
    ),
    license_link: str | None = typer.Option(
        None, "--license-link", help="hf: where to read that licence (URL or file in the repo)."
    ),
    push_to_hub: str | None = typer.Option(
        None, "--push-to-hub", help="hf: upload the folder to this Hub repository (owner/name)."
    ),
    private: bool = typer.Option(False, "--private", help="hf: create the Hub repo private."),
    no_encoder: bool = typer.Option(
        False, "--no-encoder", help="onnx: mapper and decoder only (caption image features)."
    ),
    quantize: bool = typer.Option(
        False, "--int8", help="onnx: dynamic int8 quantisation of the graphs (smaller, faster)."
    ),
    force: bool = typer.Option(
        False,
        "--force",
        help="Replace another polycap model at OUT (a run's final/, a checkpoint); "
        "a folder polycap did not write is never replaced.",
    ),
    quantize_encoder: bool = typer.Option(
        False,
        "--int8-encoder",
        help="onnx: int8 for the image encoder only; the decoder stays fp32 (int8 can change "
        "captions: measure the agreement on your model, see docs/sharing.md).",
    ),
) -> None:
    """Export a model: [bold]polycap export runs/ja --to hf shared/ja[/] (or [bold]--to onnx[/]).

    [bold]--to hf[/] writes a folder that loads anywhere (LM, tokenizer and local encoder
    weights bundled) with a model card (README.md); [bold]--to onnx[/] writes the image
    encoder, mapper and decoder (with its KV cache) as ONNX graphs and a manifest.
    [bold]polycap caption --model FOLDER[/] and [bold]polycap.load(FOLDER)[/] take either.
    OUT is replaced only when it is empty or an earlier export of the same kind.
    """
    from polycap.cli.options import chosen_output
    from polycap.inference.pipeline import load_captioner, resolve_model_dir
    from polycap.interop.hub import resolve_model_source
    from polycap.interop.model_card import CardLicense
    from polycap.interop.targets import check_target

    target = chosen_output(output, out)
    if to is Target.onnx and (eval_file or push_to_hub or license or license_name or license_link):
        raise BadInput("--eval, --license* and --push-to-hub go with --to hf")
    card_license = CardLicense.parse(license, license_name, license_link)
    if to is Target.hf and (no_encoder or quantize or quantize_encoder):
        raise BadInput("--no-encoder, --int8 and --int8-encoder go with --to onnx")
    if quantize_encoder and (no_encoder or quantize):
        raise BadInput("--int8-encoder goes without --no-encoder and --int8")
    check_target(target, to.value, force)  # before the model is loaded
    evaluation = None
    if eval_file is not None:
        from polycap.interop.model_card import read_eval

        evaluation = read_eval(eval_file)
    source = resolve_model_dir(resolve_model_source(model))
    captioner = load_captioner(source, device="cpu")
    if to is Target.hf:
        hub = (push_to_hub, private)
        _export_hf(captioner, source, target, evaluation, hub, card_license, force)
    else:
        int8 = "encoder" if quantize_encoder else quantize
        _export_onnx(captioner, target, no_encoder, int8, force)


def _export_hf(
    captioner: object,
    source: Path,
    target: Path,
    evaluation: dict | None,
    hub: tuple[str | None, bool],
    license: CardLicense,
    force: bool,
) -> None:
    from polycap.inference.pipeline import encoder_for
    from polycap.interop.hub import push
    from polycap.interop.sharing import export_hf
    from polycap.model.captioner import read_config

    push_to_hub, private = hub
    training = read_config(source).get("training")
    name = push_to_hub or target.name
    encoder = encoder_for(captioner)
    written = export_hf(
        captioner,
        target,
        training,
        evaluation,
        name=name,
        license=license,
        force=force,
        encoder=encoder,
    )
    console.print(f"wrote {written} (model card: {written / 'README.md'})")
    if push_to_hub:
        url = push(written, push_to_hub, private=private)
        console.print(f"uploaded to {url}")


def _export_onnx(
    captioner: object, target: Path, no_encoder: bool, quantize: bool | str, force: bool
) -> None:
    from polycap.inference.pipeline import encoder_for
    from polycap.interop.onnx_export import export_onnx

    encoder = None if no_encoder else encoder_for(captioner)
    say = lambda step: console.print(f"exporting: {step}")  # noqa: E731
    written = export_onnx(captioner, target, encoder, say=say, int8=quantize, force=force)
    console.print(f"wrote {written}: run it with polycap caption IMAGES --model {written}")
