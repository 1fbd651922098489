"""Retrieval vs generation on one held-out set with one encoder: the same metrics side by side,
plus throughput, novelty and diversity, as a table, JSON and an HTML report.

Both methods start from the same image embeddings (encoded once, timed separately);
throughput counts captions per second from embeddings to text. Novelty is the share of
captions not among the training captions (the bank's captions, compared after the pack's
normalisation); diversity is distinct-1/2 over the pack's evaluation tokens.

:func:`polycap.compare.compositional.compare_on_split` runs this on the synthetic compositional
split.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from polycap.compare.methods import (
    AugmentedMethod,
    GenerationMethod,
    Method,
    RetrievalMethod,
    RetrievalOptions,
)
from polycap.data.encoding import encode_images
from polycap.data.images import skipped_rows
from polycap.errors import BadInput
from polycap.eval.metrics.diversity import distinct_n, novelty
from polycap.eval.metrics.reference import release
from polycap.eval.runner import ClipOptions, EvalContext, EvalResult, evaluate, image_keys
from polycap.inference.pipeline import encoder_for

if TYPE_CHECKING:
    from polycap.data.captions import CaptionSet
    from polycap.language import LanguagePack
    from polycap.model.generation import GenerationConfig
    from polycap.parts import ImageEncoder
    from polycap.plugins import Registries
    from polycap.retrieval.bank import Bank

SUMMARY_COLUMNS = (
    "BLEU-4",
    "METEOR",
    "ROUGE-L",
    "CIDEr-D",
    "SPICE",
    "chrF",
    "WER",
    "CLIPScore",
    "RefCLIPScore",
    "Fidelity",
    "Script",
)


@dataclass
class MethodResult:
    """One method's top-1 captions and how they score."""

    name: str
    label: str
    captions: list[str]
    alternatives: list[list[str]]
    seconds: float
    evaluation: EvalResult
    novelty: float | None
    novel: list[bool] | None
    distinct_1: float
    distinct_2: float
    unique_share: float
    extra: dict[str, float] = field(default_factory=dict)
    retrieved: list[list[str]] | None = None  # retrieval-augmented: each prompt's captions

    @property
    def throughput(self) -> float:
        """Captions per second, embeddings to text."""
        return len(self.captions) / self.seconds if self.seconds > 0 else float("inf")

    def summary(self) -> dict[str, Any]:
        """Scores and the comparison figures, JSON-safe."""
        return {
            "label": self.label,
            "scores": self.evaluation.to_json()["scores"],
            "captions_per_second": round(self.throughput, 2),
            "seconds": round(self.seconds, 4),
            "novelty": None if self.novelty is None else round(100 * self.novelty, 2),
            "distinct_1": round(100 * self.distinct_1, 2),
            "distinct_2": round(100 * self.distinct_2, 2),
            "unique_captions": round(100 * self.unique_share, 2),
            **{k: round(v, 2) for k, v in self.extra.items()},
        }


@dataclass
class Comparison:
    """Both methods on one held-out set."""

    language: str
    segmenter: str
    images: list[Path]
    keys: list[str]
    references: list[list[str]]
    methods: list[MethodResult]
    encoder: dict[str, Any]
    encode_seconds: float
    settings: dict[str, Any]
    not_applicable: dict[str, str] = field(default_factory=dict)
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def method(self, name: str) -> MethodResult:
        """The result of ``"retrieval"`` or ``"generation"``."""
        for method in self.methods:
            if method.name == name:
                return method
        raise KeyError(name)

    def columns(self) -> list[str]:
        """Score columns any method has (computed or n/a), in the usual order."""
        present: list[str] = []
        for method in self.methods:
            for column in method.evaluation.scores:
                if column not in present:
                    present.append(column)
        return [c for c in SUMMARY_COLUMNS if c in present] + [
            c for c in present if c not in SUMMARY_COLUMNS and not c.startswith("BLEU-")
        ]

    def table(self) -> tuple[list[str], list[list[str]]]:
        """(header, rows): one row per measure, one column per method."""
        header = ["measure", *[m.label for m in self.methods]]
        rows: list[list[str]] = []
        for column in self.columns():
            rows.append([column, *[_cell(m.evaluation, column) for m in self.methods]])
        rows.append(["captions/s", *[f"{m.throughput:.1f}" for m in self.methods]])
        rows.append(
            [
                "novelty %",
                *["n/a" if m.novelty is None else f"{100 * m.novelty:.1f}" for m in self.methods],
            ]
        )
        rows.append(["distinct-1 %", *[f"{100 * m.distinct_1:.1f}" for m in self.methods]])
        rows.append(["distinct-2 %", *[f"{100 * m.distinct_2:.1f}" for m in self.methods]])
        rows.append(["unique captions %", *[f"{100 * m.unique_share:.1f}" for m in self.methods]])
        extras: list[str] = []
        for method in self.methods:
            extras += [k for k in method.extra if k not in extras]
        for name in extras:
            rows.append(
                [name, *[f"{m.extra[name]:.1f}" if name in m.extra else "–" for m in self.methods]]
            )
        return header, rows

    def to_json(self, per_image: bool = False) -> dict[str, Any]:
        """A JSON-safe dict of everything (per-image captions on request)."""
        data: dict[str, Any] = {
            "language": self.language,
            "segmenter": self.segmenter,
            "images": len(self.images),
            "encoder": self.encoder,
            "encode_seconds": round(self.encode_seconds, 3),
            "settings": self.settings,
            "methods": {m.name: m.summary() for m in self.methods},
            "not_applicable": self.not_applicable,
            "skipped": skipped_rows(self.skipped),
            "versions": self.methods[0].evaluation.versions if self.methods else {},
        }
        if per_image:
            data["per_image"] = [
                {
                    "image": key,
                    "references": refs,
                    **{m.name: m.captions[i] for m in self.methods},
                    **{
                        f"{m.name} retrieved": m.retrieved[i]
                        for m in self.methods
                        if m.retrieved is not None
                    },
                }
                for i, (key, refs) in enumerate(zip(self.keys, self.references, strict=True))
            ]
        return data

    def write_report(
        self,
        path: Path,
        title: str | None = None,
        marks: dict[str, dict[str, dict[str, bool]]] | None = None,
    ) -> Path:
        """An HTML report: the table and charts of the scores, then each image with its
        references, retrieved and generated captions and their per-image scores (``marks``:
        method -> image key -> badge -> ok; a caption with all its badges ok is marked right,
        else wrong). See :mod:`polycap.compare.report`."""

        methods = " vs ".join(m.name for m in self.methods).capitalize()
        from polycap.compare.report import comparison_report

        return comparison_report(self, title or f"{methods} ({self.language})", marks).write(path)


def _cell(result: EvalResult, column: str) -> str:
    value = result.scores.get(column)
    if value is None:
        return "n/a" if column in result.scores else "–"
    return f"{value:.2f}"


# -- running ---------------------------------------------------------------------------------------


@dataclass
class CompareSettings:
    """How ``compare`` encodes and scores: metric names (None: all), CLIPScore options,
    batch size, device, feature cache, progress bars, registries."""

    metrics: Sequence[str] | None = None
    clip: ClipOptions | None = None
    batch_size: int = 64
    device: str = "cpu"
    cache_dir: Path | None = None
    progress: bool = False
    registries: Registries | None = None


@dataclass
class ScoringContext:
    """What every method's captions are scored against: the held-out images and their
    references, the metrics, one shared metric cache (one CLIPScore encoder, one METEOR jar),
    and the training captions' hashes for novelty (None: no bank, no novelty)."""

    pack: LanguagePack
    images: list[Path]
    keys: list[str]
    references: list[list[str]]
    clip: ClipOptions
    metrics: Sequence[str] | None = None
    registries: Registries | None = None
    training_hashes: Any = None
    cache: dict[str, Any] = field(default_factory=lambda: {"shared": True})

    def score(self, method: Method, outputs: list[list[str]], seconds: float) -> MethodResult:
        """``outputs`` (ranked captions per image) of ``method``, scored like every other."""

        captions = [self.pack.normalize(texts[0]) if texts else "" for texts in outputs]
        ctx = EvalContext(
            self.pack, self.keys, captions, self.references, self.images, self.clip, self.cache
        )
        result = evaluate(ctx, self.metrics, self.registries)
        share, novel = (None, None)
        if self.training_hashes is not None:
            share, novel = novelty(captions, self.training_hashes)
        tokens = ctx.prediction_tokens
        return MethodResult(
            method.name,
            method.label,
            captions,
            outputs,
            seconds,
            result,
            share,
            novel,
            distinct_n(tokens, 1),
            distinct_n(tokens, 2),
            len(set(captions)) / len(captions) if captions else 0.0,
            retrieved=getattr(method, "retrieved", None),
        )


@dataclass(frozen=True)
class CompareOptions:
    """How :func:`compare` captions and scores: ``generation`` (decoding), ``retrieval``
    (default: image mode, k 5), ``settings`` (default: :class:`CompareSettings`), ``encoder``
    (default: the model's, else the bank's), and ``augmented``, a retrieval-augmented
    captioner as a third method, retrieving from ``augmented_bank`` (default: the compared
    bank, else the one it recorded)."""

    generation: GenerationConfig | None = None
    retrieval: RetrievalOptions | None = None
    settings: CompareSettings | None = None
    encoder: ImageEncoder | None = None
    augmented: Any = None
    augmented_bank: Bank | None = None


def compare(
    heldout: CaptionSet,
    pack: LanguagePack,
    model: Any = None,
    bank: Bank | None = None,
    options: CompareOptions | None = None,
    **fields: Any,
) -> Comparison:
    """Caption ``heldout`` by retrieval from ``bank``, by ``model`` and by the
    retrieval-augmented model (``augmented``), with one encoder (the model's; the banks must
    have been built with it), and score all alike. ``fields``: :class:`CompareOptions` fields
    by keyword (``generation=...``), over ``options``."""
    opts = replace(options or CompareOptions(), **fields)
    retrieval = opts.retrieval or RetrievalOptions()
    settings = opts.settings or CompareSettings()
    methods = _methods(model, bank, opts, retrieval, settings.batch_size)
    encoder = opts.encoder
    if encoder is None:
        captioner = model if model is not None else opts.augmented
        encoder = _shared_encoder(methods, pack, captioner, bank, settings.device)
    record = {
        **retrieval.settings(),
        "mode": retrieval.mode if bank is not None else None,
        "generation": None,
        "bank": None,
        "bank_captions": None,
    }
    return compare_methods(heldout, pack, methods, encoder, settings, bank, record)


def _methods(
    model: Any,
    bank: Bank | None,
    options: CompareOptions,
    retrieval: RetrievalOptions,
    batch_size: int,
) -> list[Method]:
    """Retrieval from ``bank``, generation by ``model`` and retrieval-augmented generation by
    ``options.augmented``: those that were given, in that order."""
    methods: list[Method] = []
    if bank is not None:
        methods.append(RetrievalMethod(bank, retrieval))
    if model is not None:
        methods.append(GenerationMethod(model, options.generation, batch_size))
    if options.augmented is not None:
        from polycap.model.augmented import open_bank

        augmented = options.augmented
        own_bank = options.augmented_bank or bank or open_bank(augmented)
        methods.append(AugmentedMethod(augmented, own_bank, options.generation, batch_size))
    if not methods:
        raise BadInput("compare needs a model, a bank, or both")
    return methods


def _shared_encoder(
    methods: Sequence[Method], pack: LanguagePack, captioner: Any, bank: Bank | None, device: str
) -> ImageEncoder:
    """The encoder all ``methods`` share, once each has checked it is in ``pack``'s language:
    the ``captioner``'s, else the bank's."""

    for method in methods:
        method.check_language(pack)
    if captioner is not None:
        return encoder_for(captioner, device=device)
    return bank.load_encoder(device=device)  # type: ignore[union-attr]


def compare_methods(
    heldout: CaptionSet,
    pack: LanguagePack,
    methods: Sequence[Method],
    encoder: ImageEncoder,
    settings: CompareSettings,
    bank: Bank | None = None,
    record: dict[str, Any] | None = None,
) -> Comparison:
    """Run each of ``methods`` on the embeddings of ``heldout`` (encoded once with
    ``encoder``, timed apart) and score each alike; novelty is against ``bank``'s captions."""

    for method in methods:
        method.check_language(pack)
    for method in methods:
        method.check_encoder(encoder)
    started = time.perf_counter()
    encoded = encode_images(
        encoder,
        heldout.images(),
        batch_size=settings.batch_size,
        cache_dir=settings.cache_dir,
        progress=settings.progress,
    )
    encode_seconds = time.perf_counter() - started
    if not encoded.paths:
        raise BadInput(f"{heldout.source or 'held-out set'}: none of its images could be read")
    scoring = _scoring_context(heldout, pack, list(encoded.paths), settings, bank)
    results: list[MethodResult] = []
    try:
        for method in methods:
            started = time.perf_counter()
            outputs = method.caption(encoded.features)
            results.append(scoring.score(method, outputs, time.perf_counter() - started))
    finally:
        release(scoring.cache)
    not_applicable: dict[str, str] = {}
    for result in results:
        not_applicable.update(result.evaluation.not_applicable)
    record = dict(record or {})
    for method in methods:
        record.update(method.settings())
    record["device"] = settings.device
    record["heldout"] = str(heldout.source) if heldout.source else None
    return Comparison(
        pack.code,
        pack.segmenter,
        scoring.images,
        scoring.keys,
        scoring.references,
        results,
        encoder.info(),
        encode_seconds,
        record,
        not_applicable,
        list(encoded.skipped),
    )


def _scoring_context(
    heldout: CaptionSet,
    pack: LanguagePack,
    images: list[Path],
    settings: CompareSettings,
    bank: Bank | None,
) -> ScoringContext:
    by_image = heldout.by_image()
    return ScoringContext(
        pack,
        images,
        image_keys(images),
        [by_image[p] for p in images],
        settings.clip or ClipOptions(device=settings.device, cache_dir=settings.cache_dir),
        settings.metrics,
        settings.registries,
        bank.caption_hashes() if bank is not None else None,
    )
