"""Captioning methods that ``compare`` runs side by side, each from the same image embeddings.

A method is an object with a ``name`` ("retrieval"), a ``label`` for tables,
``check_language`` (before anything is loaded) and ``check_encoder`` (does it fit the shared
image encoder), ``caption`` (embeddings -> ranked captions per image) and ``settings`` (JSON
for the record). A new way to caption, e.g.
retrieval-augmented generation, is a new class here, and ``compare`` runs it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from polycap.errors import BadInput
from polycap.inference.pipeline import CaptionPipeline
from polycap.model.augmented import retrieval_setup
from polycap.retrieval.search import RetrievalOptions, check_encoder

if TYPE_CHECKING:
    import torch

    from polycap.language import LanguagePack
    from polycap.parts import ImageEncoder
    from polycap.retrieval.bank import Bank


class Method(Protocol):
    """One way to caption images from their embeddings."""

    name: str

    @property
    def label(self) -> str: ...

    def check_language(self, pack: LanguagePack) -> None:
        """BadInput when the method cannot caption in the held-out set's language."""

    def check_encoder(self, encoder: ImageEncoder) -> None:
        """BadInput when the method cannot use embeddings of ``encoder``."""

    def caption(self, features: torch.Tensor) -> list[list[str]]:
        """Ranked captions (best first) for each row of ``features`` ([N, D], raw)."""

    def settings(self) -> dict[str, Any]:
        """What the method ran with, JSON-safe."""


@dataclass
class RetrievalMethod:
    """Captions of the nearest bank entries (:func:`polycap.retrieval.search.retrieve`)."""

    bank: Bank
    options: RetrievalOptions = field(default_factory=RetrievalOptions)
    pack: LanguagePack | None = None
    name: str = "retrieval"

    @property
    def label(self) -> str:
        consensus = ", consensus" if self.options.consensus else ""
        return f"retrieval ({self.options.mode}{consensus})"

    def check_language(self, pack: LanguagePack) -> None:
        if self.bank.language != pack.code:
            raise BadInput(
                f"{self.bank.path}: bank is in {self.bank.language!r}, not {pack.code!r}"
            )
        self.pack = self.pack or pack

    def check_encoder(self, encoder: ImageEncoder) -> None:

        check_encoder(self.bank, encoder)

    def caption(self, features: torch.Tensor) -> list[list[str]]:
        found = self.options.search(self.bank, features, self.pack)
        return [[r.caption for r in rows] for rows in found]

    def settings(self) -> dict[str, Any]:
        return {
            **self.options.settings(),
            "bank": str(self.bank.path),
            "bank_captions": self.bank.n_captions,
        }


@dataclass
class GenerationMethod:
    """Captions decoded by a trained captioner (batched, KV cache)."""

    model: Any
    generation: Any = None
    batch_size: int = 64
    name: str = "generation"

    def __post_init__(self) -> None:
        if self.generation is None:
            from polycap.model.generation import GenerationConfig

            self.generation = GenerationConfig()

    @property
    def label(self) -> str:
        return f"generation ({self.generation.strategy})"

    def check_language(self, pack: LanguagePack) -> None:
        if self.model.config.get("retrieval"):
            raise BadInput(
                "the model is retrieval-augmented: compare it as --augmented-model, "
                "beside a plain --model"
            )
        if self.model.config.get("language") not in (None, pack.code):
            raise BadInput(
                f"the model was trained for {self.model.config['language']!r}, "
                f"the held-out set is evaluated as {pack.code!r}"
            )

    def check_encoder(self, encoder: ImageEncoder) -> None:
        """The model's own encoder is the shared one (``compare`` loads it)."""

    def caption(self, features: torch.Tensor) -> list[list[str]]:

        pipeline = CaptionPipeline(self.model, device=str(self.model.device))
        generated = pipeline.caption_features(features, self.generation, self.batch_size).captions
        if str(self.model.device).startswith("cuda"):
            import torch

            torch.cuda.synchronize()
        return generated

    def settings(self) -> dict[str, Any]:
        return {"generation": self.generation.to_json()}


@dataclass
class AugmentedMethod:
    """Captions decoded by a retrieval-augmented captioner (:mod:`polycap.model.augmented`): each
    image's prompt holds the captions of its nearest ``bank`` images; ``retrieved`` keeps them
    (per image, after :meth:`caption`) for the report."""

    model: Any
    bank: Bank
    generation: Any = None
    batch_size: int = 64
    name: str = "retrieval-augmented"
    retrieved: list[list[str]] | None = None

    def __post_init__(self) -> None:
        if self.generation is None:
            from polycap.model.generation import GenerationConfig

            self.generation = GenerationConfig()

    @property
    def k(self) -> int:

        setup = retrieval_setup(self.model)
        if setup is None:
            raise BadInput("the augmented model is not retrieval-augmented (no --retrieval-bank)")
        return setup.k

    @property
    def label(self) -> str:
        return f"retrieval-augmented ({self.generation.strategy}, k={self.k})"

    def check_language(self, pack: LanguagePack) -> None:
        self.k  # noqa: B018 - a plain model is refused before anything runs
        for what, code in (("model", self.model.config["language"]), ("bank", self.bank.language)):
            if code != pack.code:
                raise BadInput(
                    f"the retrieval-augmented {what} is in {code!r}, the held-out set is "
                    f"evaluated as {pack.code!r}"
                )

    def check_encoder(self, encoder: ImageEncoder) -> None:

        check_encoder(self.bank, encoder)
        recorded = int(self.model.config["encoder"]["embed_dim"])
        if recorded != int(encoder.embed_dim):
            raise BadInput(
                f"the retrieval-augmented model was trained on {recorded}-dimensional image "
                f"embeddings, the shared encoder gives {encoder.embed_dim}"
            )

    def caption(self, features: torch.Tensor) -> list[list[str]]:

        pipeline = CaptionPipeline(self.model, device=str(self.model.device), bank=self.bank)
        found = pipeline.caption_features(features, self.generation, self.batch_size)
        self.retrieved = found.retrieved
        return found.captions

    def settings(self) -> dict[str, Any]:
        return {
            "retrieval_augmented": {
                "bank": str(self.bank.path),
                "k": self.k,
                "generation": self.generation.to_json(),
                "template": self.model.config["retrieval"].get("template"),
            }
        }
