"""THE caption path: a model, its image encoder and, for a retrieval-augmented model, its bank.

``polycap caption``, :func:`polycap.load` (the Python API), ``polycap serve``, ``polycap
compare``, ``polycap eval --model`` and validation during training all caption through a
:class:`CaptionPipeline`, so the same model, images and options give the same captions
whichever door they came in by: one generation config (:func:`generation_config`), one
compatibility check (model, bank, encoder, language: :meth:`CaptionPipeline.check_language`,
:func:`polycap.retrieval.search.check_encoder`), one decoding call
(:meth:`CaptionPipeline.caption_features`: plain, retrieval-augmented or ONNX).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from polycap.data.encoding import encode_images
from polycap.errors import BadInput
from polycap.interop.hub import resolve_model_source
from polycap.interop.onnx_export import is_onnx_export
from polycap.model.augmented import check_bank, open_bank
from polycap.plugins import get_registries
from polycap.retrieval.bank import Bank
from polycap.retrieval.search import check_encoder
from polycap.util.run_folder import RunFolder

if TYPE_CHECKING:
    import torch

    from polycap.model.generation import GenerationConfig
    from polycap.parts import ImageEncoder
    from polycap.retrieval.bank import Bank


@dataclass
class CaptionedImages:
    """Captions per readable image, and the images that could not be read."""

    paths: list[Path]
    captions: list[list[str]]
    skipped: list[tuple[Path, str]]
    retrieved: list[list[str]] | None = None  # retrieval-augmented: the prompts' captions


@dataclass
class CaptionedFeatures:
    """Captions per feature row and, for a retrieval-augmented model, what each prompt held."""

    captions: list[list[str]]
    retrieved: list[list[str]] | None = None


# the one default that differs from GenerationConfig's: no beam width given (see _beam_width)
UNSET_BEAMS: dict[str, Any] = {"beams": None}


def generation_config(options: Mapping[str, Any] | None = None, **more: Any) -> GenerationConfig:
    """The one :class:`~polycap.model.generation.GenerationConfig` from caption options (those
    of ``polycap caption``, ``POST /caption`` and ``Captioner.caption``; BadInput naming an
    unknown one).

    Setting top_k, top_p or temperature turns sampling on. Without sampling each caption is
    one beam: ``beams`` defaults to ``num_captions``, and a width given too small for it is an
    error. Fields of GenerationConfig beyond these (``cache``, ``compile``, ``use_cache``) pass
    through.
    """
    from polycap.model.generation import GenerationConfig

    given = {**(options or {}), **more}
    fields = dataclasses.fields(GenerationConfig)
    known = {f.name for f in fields}
    unknown = sorted(set(given) - known)
    if unknown:
        raise BadInput(
            f"unknown generation option {unknown[0]!r}; known: {', '.join(sorted(known))}"
        )
    defaults = {f.name: f.default for f in fields if f.default is not dataclasses.MISSING}
    settings = {**defaults, **UNSET_BEAMS, **given}
    if settings["top_k"] or settings["top_p"] < 1.0 or settings["temperature"] != 1.0:
        settings["sample"] = True
    settings["beams"] = _beam_width(settings["beams"], settings["num_captions"], settings["sample"])
    return GenerationConfig(**settings)


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

    if (path / "polycap.json").is_file():
        return path
    if (path / "final" / "polycap.json").is_file():
        return path / "final"
    newest = RunFolder(path).latest_checkpoint()
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
    from polycap.model.captioner import Captioner

    path = resolve_model_source(path)
    if is_onnx_export(path):
        from polycap.interop.onnx_runtime import OnnxCaptioner

        model: Any = OnnxCaptioner(path)
    else:
        model = Captioner.load(resolve_model_dir(path), device=device)
    check_language(model, expected_language, str(path))
    return model


def check_language(model: Any, expected: str | None, name: str = "the model") -> None:
    """The one wording of "this model is for another language"."""
    language = model.config.get("language")
    if expected and language not in (None, expected):
        raise BadInput(f"{name} was trained for language {language!r}, not {expected!r}")


def encoder_for(model: Any, device: str = "cpu") -> ImageEncoder:
    """The image encoder a checkpoint was trained on, loaded as recorded (its weights from
    the checkpoint's ``encoder/`` folder when it bundles them; a model that brings its own,
    such as an ONNX export, supplies it through ``image_encoder(device)``)."""
    from polycap.model.checkpoint import recorded_encoder_spec

    own = getattr(model, "image_encoder", None)
    if own is not None:
        return own(device)
    spec = recorded_encoder_spec(model.config, getattr(model, "directory", None))
    return spec.load(get_registries(), device)


class CaptionPipeline:
    """A loaded model, its image encoder (loaded on first use) and, when the model is
    retrieval-augmented, its bank (``bank``: another bank for domain transfer, else the one it
    recorded). Every way of captioning in polycap ends in :meth:`caption_features`."""

    def __init__(
        self, model: Any, device: str = "cpu", bank: str | Path | Bank | None = None
    ) -> None:
        self.model = model
        self.device = device
        self._encoder: ImageEncoder | None = None
        self.bank = self._open_bank(bank)

    @classmethod
    def load(
        cls,
        source: str | Path,
        device: str = "cpu",
        expected_language: str | None = None,
        bank: str | Path | None = None,
    ) -> CaptionPipeline:
        """:func:`load_captioner` and the bank of a retrieval-augmented model."""
        return cls(load_captioner(source, device, expected_language), device, bank)

    @property
    def language(self) -> str:
        return self.model.config["language"]

    @property
    def augmented(self) -> bool:
        return bool(getattr(self.model, "config", {}).get("retrieval"))

    def _open_bank(self, bank: str | Path | Bank | None) -> Bank | None:
        if not self.augmented:
            if bank is not None:
                raise BadInput(
                    f"--bank {getattr(bank, 'path', bank)}: the model is not "
                    "retrieval-augmented (it uses no bank)"
                )
            return None

        if isinstance(bank, Bank):
            return check_bank(self.model, bank)
        return open_bank(self.model, bank)

    @property
    def encoder(self) -> ImageEncoder:
        """The image encoder the model was trained with (checked against its bank)."""
        if self._encoder is None:
            self.use_encoder(encoder_for(self.model, device=self.device))
        assert self._encoder is not None
        return self._encoder

    def use_encoder(self, encoder: ImageEncoder) -> None:
        """Caption features of ``encoder`` (already loaded elsewhere, e.g. shared by compare):
        it must be the one the bank was built with and give the model's embedding size."""

        if self.bank is not None:
            check_encoder(self.bank, encoder)
        recorded = self.model.config.get("encoder", {}).get("embed_dim")
        if recorded is not None and int(recorded) != int(encoder.embed_dim):
            raise BadInput(
                f"the model was trained on {recorded}-dimensional image embeddings, "
                f"the encoder gives {encoder.embed_dim}"
            )
        self._encoder = encoder

    def caption_features(
        self,
        features: torch.Tensor,
        generation: GenerationConfig | None = None,
        batch_size: int = 64,
        progress: bool = False,
        logits_hook: Any = None,
    ) -> CaptionedFeatures:
        """Captions for ``[B, D]`` image features of the model's encoder. ``logits_hook``
        (:data:`polycap.model.generation.LogitsHook`, for plain and ONNX models) sees every
        batch's scores before each pick (the benchmarks fix caption lengths with one)."""
        from polycap.model.generation import caption_features

        features = _finite(features).to(self.device)
        if self.bank is not None:
            if logits_hook is not None:
                raise BadInput("a logits hook is not supported for retrieval-augmented models")
            from polycap.model.augmented import caption_augmented

            found = caption_augmented(self.model, features, self.bank, generation, batch_size)
            return CaptionedFeatures(found.captions, found.retrieved)
        captions = caption_features(
            self.model,
            features,
            generation,
            batch_size=batch_size,
            progress=progress,
            logits_hook=logits_hook,
        )
        return CaptionedFeatures(captions)

    def caption_pixels(
        self, pixels: list[torch.Tensor], generation: GenerationConfig | None = None
    ) -> CaptionedFeatures:
        """Captions for a batch of images already preprocessed by :attr:`encoder`."""
        import torch

        features = self.encoder.encode_images(torch.stack(pixels))
        return self.caption_features(features, generation, batch_size=len(pixels))

    def caption_files(
        self,
        paths: list[Path],
        generation: GenerationConfig | None = None,
        batch_size: int = 64,
        progress: bool = True,
        cache_dir: Path | None = None,
        logits_hook: Any = None,
    ) -> CaptionedImages:
        """Encode image files with the model's encoder (cached; unreadable ones skipped and
        counted) and caption them in batches (``logits_hook``: see :meth:`caption_features`)."""

        encoded = encode_images(
            self.encoder, paths, batch_size=batch_size, cache_dir=cache_dir, progress=progress
        )
        found = self.caption_features(
            encoded.features, generation, batch_size, progress, logits_hook=logits_hook
        )
        return CaptionedImages(encoded.paths, found.captions, encoded.skipped, found.retrieved)


def _finite(features: torch.Tensor) -> torch.Tensor:
    """``[B, D]`` features (``[D]`` as one row); NaN or infinite values are BadInput, not an
    empty caption."""
    import torch

    if features.dim() == 1:
        features = features.unsqueeze(0)
    if features.dim() != 2:
        raise BadInput(f"feature tensor of shape {tuple(features.shape)}: expected [B, D]")
    if features.numel() and not bool(torch.isfinite(features).all()):
        raise BadInput("image features hold NaN or infinite values")
    return features
