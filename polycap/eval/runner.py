"""Caption metrics over each language pack's evaluation segmentation.

Metrics are objects registered through the ``register_metrics`` hook (built in:
``polycap.builtin.metrics``). Each takes an :class:`EvalContext` (predictions and references,
normalised and segmented by the pack, plus the images) and returns :class:`MetricScores`, or
says why it does not apply (``unavailable``), which the result shows as ``n/a (why)``.

All scores are on the 0-100 scale papers print (BLEU 31.2, CIDEr-D 98.7, CLIPScore 75.1);
WER is a percentage too, and lower is better.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from polycap.errors import BadInput
from polycap.eval.versions import versions
from polycap.parts import Metric as Metric  # re-exported: their former home
from polycap.parts import MetricScores as MetricScores

if TYPE_CHECKING:
    from polycap.eval.predictions import Matched
    from polycap.eval.segmentation import Segmentation
    from polycap.language import LanguagePack
    from polycap.plugins import Registries

DEFAULT_CLIP_ENCODER = "xlm-roberta-base-ViT-B-32"
DEFAULT_CLIP_PRETRAINED = "laion5b_s13b_b90k"


@dataclass
class ClipOptions:
    """The encoder CLIPScore uses: an open_clip name (or ``backend:model``) and weights.

    ``prompt`` is put before every caption and reference (Hessel et al. use "A photo
    depicts" for English); None means that prompt for English and none for other languages.
    ``encoder`` may be an already loaded :class:`~polycap.data.encoding.ImageEncoder`.
    ``download``: fetch weights named by a tag when they are not cached yet (otherwise
    CLIPScore is shown as n/a with the reason, instead of starting a large download).
    """

    spec: str = DEFAULT_CLIP_ENCODER
    pretrained: str | None = DEFAULT_CLIP_PRETRAINED
    prompt: str | None = None
    device: str = "cpu"
    batch_size: int = 64
    cache_dir: Path | None = None
    encoder: Any = None
    download: bool = False


@dataclass
class EvalContext:
    """What every metric sees: one prediction and one or more references per image."""

    pack: LanguagePack
    keys: list[str]
    predictions: list[str]
    references: list[list[str]]
    images: list[Path] | None = None
    clip: ClipOptions = field(default_factory=ClipOptions)
    cache: dict[str, Any] = field(default_factory=dict)
    segmentation: Segmentation | None = None  # None: the pack's (eval.segmentation)

    def __post_init__(self) -> None:
        if len(self.predictions) != len(self.keys) or len(self.references) != len(self.keys):
            raise ValueError("keys, predictions and references must have the same length")
        self.predictions = [self.pack.normalize(text) for text in self.predictions]
        self.references = [[self.pack.normalize(t) for t in refs] for refs in self.references]
        if self.segmentation is None:
            from polycap.eval.segmentation import pack_segmentation

            self.segmentation = pack_segmentation(self.pack)
        flat = [*self.predictions, *(t for refs in self.references for t in refs)]
        tokens = iter(self.segmentation.tokenize_all(flat))
        self.prediction_tokens = [next(tokens) for _ in self.predictions]
        self.reference_tokens = [[next(tokens) for _ in refs] for refs in self.references]

    @property
    def segmenter(self) -> str:
        """The name of the segmentation the scores are computed over."""
        assert self.segmentation is not None
        return self.segmentation.name

    @property
    def segmented_predictions(self) -> list[str]:
        """Each prediction as the pack's tokens joined by single spaces."""
        return [" ".join(tokens) for tokens in self.prediction_tokens]

    @property
    def segmented_references(self) -> list[list[str]]:
        """Each reference as the pack's tokens joined by single spaces."""
        return [[" ".join(tokens) for tokens in refs] for refs in self.reference_tokens]

    def __len__(self) -> int:
        return len(self.keys)


@dataclass
class EvalResult:
    """Scores (None where a metric does not apply), the reasons, and what produced them."""

    language: str
    segmenter: str
    n_images: int
    n_references: int
    scores: dict[str, float | None]
    not_applicable: dict[str, str]
    per_image: list[dict[str, Any]]
    details: dict[str, dict[str, Any]]
    versions: dict[str, str]
    lower_is_better: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def display(self, column: str) -> str:
        """A score as the table shows it: ``31.20`` or ``n/a (why)``."""
        value = self.scores.get(column)
        if value is None:
            return f"n/a ({self.not_applicable.get(column, 'not computed')})"
        return f"{value:.2f}"

    def to_json(self, per_image: bool = False) -> dict[str, Any]:
        """A JSON-safe dict; per-image rows only when asked."""
        data: dict[str, Any] = {
            "language": self.language,
            "segmenter": self.segmenter,
            "images": self.n_images,
            "references": self.n_references,
            "scores": {k: (None if v is None else round(v, 4)) for k, v in self.scores.items()},
            "not_applicable": self.not_applicable,
            "lower_is_better": self.lower_is_better,
            "details": self.details,
            "versions": self.versions,
            "notes": self.notes,
        }
        if per_image:
            data["per_image"] = self.per_image
        return data


# -- running metrics ---------------------------------------------------------------------------


def metric_registry(registries: Registries | None = None) -> Any:
    """The metrics registry (from the process-wide plugin host unless given)."""
    if registries is None:
        from polycap.plugins import get_registries

        registries = get_registries()
    return registries.metrics


def check_metrics(names: Sequence[str], registries: Registries | None = None) -> list[str]:
    """``names`` if every one is a registered metric (UnknownName with a did-you-mean else),
    so that a misspelt name fails before any work (training, captioning), not after it."""
    registry = metric_registry(registries)
    for name in names:
        registry.get(name)
    return list(names)


def evaluate(
    ctx: EvalContext, metrics: Sequence[str] | None = None, registries: Registries | None = None
) -> EvalResult:
    """Run ``metrics`` (names; default: every registered one) over ``ctx``."""
    registry = metric_registry(registries)
    names = list(metrics) if metrics else registry.names()
    chosen = [registry.get(name) for name in names]  # UnknownName with a did-you-mean
    chosen.sort(key=lambda m: COLUMN_ORDER.get(m.columns[0], 99) if m.columns else 99)
    if len(ctx) == 0:
        raise BadInput("nothing to evaluate: no image has both a prediction and references")
    scores: dict[str, float | None] = {}
    reasons: dict[str, str] = {}
    details: dict[str, dict[str, Any]] = {}
    lower: list[str] = []
    per_image: list[dict[str, Any]] = [
        {"image": key, "prediction": pred, "references": refs}
        for key, pred, refs in zip(ctx.keys, ctx.predictions, ctx.references, strict=True)
    ]
    for metric in chosen:
        reason = metric.unavailable(ctx)
        result: MetricScores | None = None
        if reason is None:
            try:
                result = metric.compute(ctx)
            except MetricUnavailable as error:
                reason = str(error)
        if result is None:
            for column in metric.columns:
                scores[column] = None
                reasons[column] = reason or "not computed"
            continue
        scores.update(result.corpus)
        if metric.lower_is_better:
            lower.extend(result.corpus)
        if result.details:
            details[metric.name] = result.details
        for column, values in result.per_image.items():
            for row, value in zip(per_image, values, strict=True):
                row[column] = None if value is None else round(float(value), 4)
    return EvalResult(
        language=ctx.pack.code,
        segmenter=ctx.segmenter,
        n_images=len(ctx),
        n_references=sum(len(refs) for refs in ctx.references),
        scores=scores,
        not_applicable=reasons,
        per_image=per_image,
        details=details,
        versions=versions(ctx.pack),
        lower_is_better=lower,
    )


class MetricUnavailable(Exception):
    """Raised by a metric's ``compute`` when it finds it cannot run (shown as n/a)."""


COLUMN_ORDER = {
    name: index
    for index, name in enumerate(
        (
            "BLEU-1",
            "METEOR",
            "ROUGE-L",
            "CIDEr-D",
            "SPICE",
            "chrF",
            "WER",
            "CLIPScore",
            "Fidelity",
        )
    )
}


def context_for(
    pack: LanguagePack,
    matched: Matched,
    clip: ClipOptions | None = None,
    keys: Sequence[str] | None = None,
    segmentation: Segmentation | None = None,
) -> EvalContext:
    """An :class:`EvalContext` from matched predictions (keys default to image file names,
    or full paths where two images share a name; segmentation defaults to the pack's)."""
    return EvalContext(
        pack=pack,
        keys=list(keys) if keys is not None else image_keys(matched.images),
        predictions=matched.predictions,
        references=matched.references,
        images=matched.images,
        clip=clip or ClipOptions(),
        segmentation=segmentation,
    )


def image_keys(images: Sequence[Path]) -> list[str]:
    """File names when they are unique, else the full paths."""
    names = [image.name for image in images]
    if len(set(names)) == len(names):
        return names
    return [str(image) for image in images]
