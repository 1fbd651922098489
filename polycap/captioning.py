"""Caption image files with a trained checkpoint: resolve it, encode the images, decode."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polycap.errors import BadInput


@dataclass
class CaptionedImages:
    """Captions per readable image, and the images that could not be read."""

    paths: list[Path]
    captions: list[list[str]]
    skipped: list[tuple[Path, str]]
    retrieved: list[list[str]] | None = None  # retrieval-augmented: the prompts' captions


def generation_config(
    beams: int | None = None,
    sample: bool = False,
    top_k: int = 0,
    top_p: float = 1.0,
    temperature: float = 1.0,
    num_captions: int = 1,
    max_length: int = 30,
    seed: int | None = None,
) -> Any:
    """The :class:`~polycap.generation.GenerationConfig` for ``polycap caption``'s options.

    Setting top_k, top_p or temperature turns sampling on. Without sampling each caption is
    one beam: ``beams`` defaults to ``num_captions``, and a width given too small for it is an
    error. The CLI and the HTTP service both build their configs here, so the same options
    decode the same way.
    """
    from polycap.generation import GenerationConfig

    if top_k or top_p < 1.0 or temperature != 1.0:
        sample = True
    return GenerationConfig(
        max_length=max_length,
        beams=_beam_width(beams, num_captions, sample),
        top_k=top_k,
        top_p=top_p,
        temperature=temperature,
        sample=sample,
        num_captions=num_captions,
        seed=seed,
    )


def _beam_width(beams: int | None, num_captions: int, sample: bool) -> int:
    """The beam width: as given, else enough beams for ``num_captions`` (each caption is one
    beam). An explicit width too small for ``num_captions`` is an error, not silently raised:
    the user chose the width (it changes which captions are found), so we do not override it.
    """
    if sample:
        return 1 if beams is None else beams
    if beams is None:
        return num_captions
    if beams < num_captions:
        raise BadInput(
            f"--num-captions {num_captions} needs --beams {num_captions} or more "
            f"(each caption is one beam), not --beams {beams}; or use --sample"
        )
    return beams


def resolve_model_dir(path: Path) -> Path:
    """A checkpoint folder, or a run folder (its ``final`` model, else its newest checkpoint)."""
    from polycap.training import latest_checkpoint

    if (path / "polycap.json").is_file():
        return path
    if (path / "final" / "polycap.json").is_file():
        return path / "final"
    newest = latest_checkpoint(path)
    if newest is not None:
        return newest
    if not path.exists():
        raise BadInput(f"{path}: no such checkpoint")
    raise BadInput(f"{path}: not a polycap checkpoint or run folder (no polycap.json)")


def load_captioner(
    path: str | Path, device: str = "cpu", expected_language: str | None = None
) -> Any:
    """Load a checkpoint, a run folder's model, an ONNX export (run by ONNX Runtime) or a
    Hugging Face Hub id (downloaded and cached), and check its language when asked."""
    from polycap.hub import resolve_model_source
    from polycap.model import Captioner
    from polycap.onnx_export import is_onnx_export

    path = resolve_model_source(path)
    if is_onnx_export(path):
        from polycap.onnx_runtime import OnnxCaptioner

        model: Any = OnnxCaptioner(path)
    else:
        model = Captioner.load(resolve_model_dir(path), device=device)
    language = model.config["language"]
    if expected_language and language != expected_language:
        raise BadInput(f"{path} was trained for language {language!r}, not {expected_language!r}")
    return model


def encoder_for(model: Any, device: str = "cpu") -> Any:
    """The image encoder a checkpoint was trained on, loaded as recorded (its weights from
    the checkpoint's ``encoder/`` folder when it bundles them; a model that brings its own,
    such as an ONNX export, supplies it through ``image_encoder(device)``)."""
    import dataclasses

    from polycap.encoding import EncoderSpec
    from polycap.model import encoder_weights_file

    own = getattr(model, "image_encoder", None)
    if own is not None:
        return own(device)
    spec = EncoderSpec.from_json(model.config["encoder"])
    weights = encoder_weights_file(model.config, getattr(model, "directory", None))
    if weights is not None:  # the checkpoint's own copy when it bundles one
        spec = dataclasses.replace(spec, pretrained=str(weights))
    return spec.load(device)


def caption_images(
    model: Any,
    paths: list[Path],
    generation: Any,
    batch_size: int = 64,
    device: str = "cpu",
    progress: bool = True,
    cache_dir: Path | None = None,
    bank: Path | None = None,
) -> CaptionedImages:
    """Encode ``paths`` with the model's encoder (cached) and caption them in batches. A
    retrieval-augmented model retrieves from ``bank``, else from the bank it recorded."""
    from polycap.encoding import encode_images
    from polycap.generation import caption_features

    augmented = bool(getattr(model, "config", {}).get("retrieval"))
    if bank is not None and not augmented:
        raise BadInput(f"--bank {bank}: the model is not retrieval-augmented (it uses no bank)")
    opened = None
    if augmented:
        from polycap.augmented import open_bank
        from polycap.retrieval.search import check_encoder

        opened = open_bank(model, bank)
    encoder = encoder_for(model, device=device)
    if opened is not None:
        check_encoder(opened, encoder)
    encoded = encode_images(
        encoder, paths, batch_size=batch_size, cache_dir=cache_dir, progress=progress
    )
    if opened is not None:
        from polycap.augmented import caption_augmented

        found = caption_augmented(
            model, encoded.features.to(device), opened, generation, batch_size=batch_size
        )
        return CaptionedImages(encoded.paths, found.captions, encoded.skipped, found.retrieved)
    captions = caption_features(
        model, encoded.features.to(device), generation, batch_size=batch_size, progress=progress
    )
    return CaptionedImages(encoded.paths, captions, encoded.skipped)
