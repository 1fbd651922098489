"""The models a server holds, one per language, each with its encoder and optional bank.

``--model runs/ja`` serves a checkpoint (or run folder) under its own language;
``--model ja=runs/ja`` also checks that the checkpoint is Japanese. ``--bank bank/`` attaches a
caption bank to the model of the bank's language. A batch of images is encoded and decoded in
one go by :meth:`ServedModel.caption` (the same calls ``polycap caption`` makes) and
:meth:`ServedModel.retrieve` (those of ``polycap retrieve``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polycap.errors import BadInput
from polycap.inference.pipeline import CaptionPipeline


@dataclass
class ServedModel:
    """A caption pipeline (model, encoder, a retrieval-augmented model's bank) and, when
    given, a bank for ``/retrieve`` with its encoder."""

    language: str
    source: Path
    pipeline: CaptionPipeline
    device: str = "cpu"
    bank: Any = None
    bank_encoder: Any = None

    @property
    def model_id(self) -> str:
        """The model's id in the OpenAI-compatible API: ``polycap-<language>``."""
        return f"polycap-{self.language}"

    @property
    def name(self) -> str:
        """The model as clients see it: its folder's name, never the server's path."""
        return public_name(self.source)

    @property
    def captioner(self) -> Any:
        return self.pipeline.model

    @property
    def encoder(self) -> Any:
        return self.pipeline.encoder

    @property
    def longest_caption(self) -> int | None:
        """Most tokens a caption can have after the prefix (None: the LM sets no limit)."""
        config = getattr(self.captioner.lm, "config", None)
        positions = getattr(config, "n_positions", None) or getattr(
            config, "max_position_embeddings", None
        )
        return None if positions is None else int(positions) - self.captioner.prefix_length

    def caption(self, pixels: list[Any], generation: Any) -> list[list[str]]:
        """Captions for a batch of preprocessed images, decoded together (the pipeline
        ``polycap caption`` uses)."""
        return self.pipeline.caption_pixels(pixels, generation).captions

    def count_tokens(self, text: str) -> int:
        """How many tokens ``text`` is in the model's tokenizer (0 when it has none)."""
        tokenizer = getattr(self.captioner, "tokenizer", None)
        if tokenizer is None or not text:
            return 0
        return len(tokenizer.encode(text, add_special_tokens=False))

    def retrieve(self, pixels: list[Any], options: dict[str, Any]) -> list[list[Any]]:
        """Retrieved captions for a batch of images preprocessed for the bank's encoder."""
        import torch

        from polycap.retrieval.search import retrieve

        features = self.bank_encoder.encode_images(torch.stack(pixels))
        return retrieve(self.bank, features, pack=self.captioner.pack, **options)

    def info(self) -> dict[str, Any]:
        """What ``GET /info`` says about this model."""
        config = self.captioner.config
        bank = None
        if self.bank is not None:
            bank = {
                "name": public_name(self.bank.path),
                "captions": self.bank.n_captions,
                "images": self.bank.n_images,
                "text_embeddings": self.bank.has_text,
                "encoder": self.bank.encoder.get("name"),
            }
        return {
            "language": self.language,
            "id": self.model_id,
            "model": self.name,
            "encoder": {
                key: public_name(config["encoder"].get(key))
                for key in ("backend", "name", "pretrained")
            },
            "lm": public_name(config.get("lm")),
            "mapper": config.get("mapper", {}).get("kind"),
            "prefix_length": self.captioner.prefix_length,
            "longest_caption": self.longest_caption,
            "bank": bank,
        }


def public_name(value: Any) -> Any:
    """A file or folder as a client may see it: its name (a checkpoint's with its run
    folder's, ``ja/final``), never the server's absolute path. Names that are not local paths
    (Hub ids, encoder names) and non-strings pass unchanged."""
    if value is None or not isinstance(value, (str, Path)):
        return value
    path = Path(value)
    if not (path.is_absolute() or path.exists()):
        return str(value)
    path = path.resolve()
    if path.name == "final" or path.name.startswith("checkpoint"):
        return f"{path.parent.name}/{path.name}"
    return path.name


def split_spec(spec: str) -> tuple[str | None, Path]:
    """``"ja=runs/ja"`` -> ("ja", runs/ja); ``"runs/ja"`` -> (None, runs/ja)."""
    name, sep, path = spec.partition("=")
    if sep and name and "/" not in name and not Path(spec).exists():
        return name, Path(path)
    return None, Path(spec)


def load_models(
    model_specs: list[str], bank_specs: list[str] | None = None, device: str = "cpu"
) -> dict[str, ServedModel]:
    """The models (by language, in the order given) with their banks attached; each loaded
    through the caption pipeline every caption path uses."""
    if not model_specs:
        raise BadInput("--model: give at least one checkpoint or run folder")
    served: dict[str, ServedModel] = {}
    for spec in model_specs:
        language, path = split_spec(spec)
        pipeline = CaptionPipeline.load(path, device=device, expected_language=language)
        code = pipeline.language
        if code in served:
            first = served[code].source
            raise BadInput(f"--model: two models for language {code!r}: {first}, {path}")
        served[code] = ServedModel(code, path, pipeline, device)
    for spec in bank_specs or []:
        _attach_bank(served, spec, device)
    return served


def _attach_bank(served: dict[str, ServedModel], spec: str, device: str) -> None:
    from polycap.retrieval.bank import Bank
    from polycap.retrieval.search import check_encoder

    language, path = split_spec(spec)
    bank = Bank.open(path)
    if language is not None and language != bank.language:
        raise BadInput(
            f"--bank {spec}: the bank's captions are {bank.language!r}, not {language!r}"
        )
    model = served.get(bank.language)
    if model is None:
        loaded = ", ".join(served)
        raise BadInput(
            f"--bank {path}: its captions are {bank.language!r} and no model for "
            f"{bank.language!r} is loaded (loaded: {loaded})"
        )
    if model.bank is not None:
        raise BadInput(
            f"--bank: two banks for language {bank.language!r}: {model.bank.path}, {path}"
        )
    key = bank.encoder.get("cache_key")
    same = [m.encoder for m in served.values() if key and m.encoder.cache_key == key]
    encoder = same[0] if same else bank.load_encoder(device=device)
    check_encoder(bank, encoder)
    model.bank, model.bank_encoder = bank, encoder
