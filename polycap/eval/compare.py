"""Retrieval vs generation on one held-out set with one encoder: the same metrics side by side,
plus throughput, novelty and diversity, as a table, JSON and an HTML report.

Both methods start from the same image embeddings (encoded once, timed separately);
throughput counts captions per second from embeddings to text. Novelty is the share of
captions not among the training captions (the bank's captions, compared after the pack's
normalisation); diversity is distinct-1/2 over the pack's evaluation tokens.

:func:`polycap.compositional.compare_on_split` runs this on the synthetic compositional split.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from polycap.errors import BadInput
from polycap.eval.runner import ClipOptions, EvalContext, EvalResult, evaluate, image_keys

if TYPE_CHECKING:
    from polycap.language import LanguagePack
    from polycap.plugins import Registries

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
            "skipped": [{"image": str(p), "reason": r} for p, r in self.skipped],
            "versions": self.methods[0].evaluation.versions if self.methods else {},
        }
        if per_image:
            data["per_image"] = [
                {"image": key, "references": refs, **{m.name: m.captions[i] for m in self.methods}}
                for i, (key, refs) in enumerate(zip(self.keys, self.references, strict=True))
            ]
        return data

    def write_report(
        self,
        path: Path,
        title: str | None = None,
        marks: dict[str, dict[str, dict[str, bool]]] | None = None,
    ) -> Path:
        """An HTML report: the table, then each image with its references, retrieved and
        generated captions (``marks``: method -> image key -> badge -> ok)."""
        from polycap.eval.report import ReportRow, write_report

        rows = []
        for i, (image, key) in enumerate(zip(self.images, self.keys, strict=True)):
            texts: dict[str, Sequence[str]] = {"references": self.references[i]}
            row_marks: dict[str, bool] = {}
            for method in self.methods:
                shown = method.alternatives[i] if method.alternatives else [method.captions[i]]
                label = method.name
                if method.novel is not None:
                    label += " (novel)" if method.novel[i] else " (seen in training)"
                texts[label] = shown
                for badge, ok in ((marks or {}).get(method.name, {}).get(key, {})).items():
                    row_marks[f"{method.name} {badge}"] = ok
            rows.append(ReportRow(image, texts, row_marks))
        header, table = self.table()
        return write_report(
            path, title or f"Retrieval vs generation ({self.language})", rows, table, header
        )


def _cell(result: EvalResult, column: str) -> str:
    value = result.scores.get(column)
    if value is None:
        return "n/a" if column in result.scores else "–"
    return f"{value:.2f}"


# -- running ---------------------------------------------------------------------------------------


def compare(
    heldout: Any,
    pack: LanguagePack,
    model: Any = None,
    bank: Any = None,
    generation: Any = None,
    mode: str = "image",
    k: int = 5,
    consensus: bool = False,
    neighbours: int | None = None,
    metrics: Sequence[str] | None = None,
    clip: ClipOptions | None = None,
    chunk_size: int | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    cache_dir: Path | None = None,
    progress: bool = False,
    registries: Registries | None = None,
    encoder: Any = None,
) -> Comparison:
    """Caption ``heldout`` (a CaptionSet) by retrieval from ``bank`` and by ``model``, with one
    encoder (the model's; the bank must have been built with it), and score both alike."""
    from polycap.encoding import encode_images
    from polycap.retrieval.search import DEFAULT_CHUNK, check_encoder

    if model is None and bank is None:
        raise BadInput("compare needs a model, a bank, or both")
    if model is not None and model.config.get("language") not in (None, pack.code):
        raise BadInput(
            f"the model was trained for {model.config['language']!r}, "
            f"the held-out set is evaluated as {pack.code!r}"
        )
    if bank is not None and bank.language != pack.code:
        raise BadInput(f"{bank.path}: bank is in {bank.language!r}, not {pack.code!r}")
    if encoder is None:
        if model is not None:
            from polycap.captioning import encoder_for

            encoder = encoder_for(model, device=device)
        else:
            encoder = bank.load_encoder(device=device)
    if bank is not None:
        check_encoder(bank, encoder)

    started = time.perf_counter()
    encoded = encode_images(
        encoder, heldout.images(), batch_size=batch_size, cache_dir=cache_dir, progress=progress
    )
    encode_seconds = time.perf_counter() - started
    if not encoded.paths:
        raise BadInput(f"{heldout.source or 'held-out set'}: none of its images could be read")
    by_image = heldout.by_image()
    images = list(encoded.paths)
    references = [by_image[p] for p in images]
    keys = image_keys(images)
    clip = clip or ClipOptions(device=device, cache_dir=cache_dir)
    shared_cache: dict[str, Any] = {"shared": True}  # one CLIPScore encoder, one METEOR jar
    hashes = bank.caption_hashes() if bank is not None else None

    methods: list[MethodResult] = []
    try:
        if bank is not None:
            from polycap.retrieval.search import retrieve

            started = time.perf_counter()
            found = retrieve(
                bank,
                encoded.features,
                mode=mode,
                k=k,
                consensus=consensus,
                neighbours=neighbours,
                chunk_size=chunk_size or DEFAULT_CHUNK,
                pack=pack,
            )
            seconds = time.perf_counter() - started
            label = f"retrieval ({mode}{', consensus' if consensus else ''})"
            methods.append(
                _score_method(
                    "retrieval",
                    label,
                    [[r.caption for r in rows] for rows in found],
                    seconds,
                    pack,
                    keys,
                    references,
                    images,
                    clip,
                    shared_cache,
                    metrics,
                    registries,
                    hashes,
                )
            )
        if model is not None:
            from polycap.generation import GenerationConfig, caption_features

            generation = generation or GenerationConfig()
            features = encoded.features.to(model.device)
            started = time.perf_counter()
            generated = caption_features(model, features, generation, batch_size=batch_size)
            _sync(model.device)
            seconds = time.perf_counter() - started
            methods.append(
                _score_method(
                    "generation",
                    f"generation ({generation.strategy})",
                    generated,
                    seconds,
                    pack,
                    keys,
                    references,
                    images,
                    clip,
                    shared_cache,
                    metrics,
                    registries,
                    hashes,
                )
            )
    finally:
        from polycap.eval.metrics.reference import release

        release(shared_cache)

    not_applicable: dict[str, str] = {}
    for method in methods:
        not_applicable.update(method.evaluation.not_applicable)
    settings = {
        "mode": mode if bank is not None else None,
        "k": k,
        "consensus": consensus,
        "neighbours": neighbours,
        "generation": generation.to_json() if model is not None and generation else None,
        "bank": str(bank.path) if bank is not None else None,
        "bank_captions": bank.n_captions if bank is not None else None,
        "device": device,
        "heldout": str(heldout.source) if heldout.source else None,
    }
    return Comparison(
        pack.code,
        pack.segmenter,
        images,
        keys,
        references,
        methods,
        encoder.info(),
        encode_seconds,
        settings,
        not_applicable,
        list(encoded.skipped),
    )


def _sync(device: Any) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _score_method(
    name: str,
    label: str,
    outputs: list[list[str]],
    seconds: float,
    pack: LanguagePack,
    keys: list[str],
    references: list[list[str]],
    images: list[Path],
    clip: ClipOptions,
    cache: dict[str, Any],
    metrics: Sequence[str] | None,
    registries: Registries | None,
    hashes: Any,
) -> MethodResult:
    from polycap.eval.metrics.diversity import distinct_n, novelty

    captions = [pack.normalize(texts[0]) if texts else "" for texts in outputs]
    ctx = EvalContext(pack, keys, captions, references, images, clip, cache)
    result = evaluate(ctx, metrics, registries)
    share, novel = (None, None)
    if hashes is not None:
        share, novel = novelty(captions, hashes)
    tokens = ctx.prediction_tokens
    return MethodResult(
        name,
        label,
        captions,
        outputs,
        seconds,
        result,
        share,
        novel,
        distinct_n(tokens, 1),
        distinct_n(tokens, 2),
        len(set(captions)) / len(captions) if captions else 0.0,
    )
