"""Metrics computed by the field's own implementations: sacrebleu and pycocoevalcap.

BLEU, ROUGE-L, CIDEr-D, METEOR and SPICE read the language pack's segmentation (tokens joined
by spaces; sacrebleu with ``tokenize="none"``); chrF reads the normalised raw text (it works
on characters and needs no segmenter).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from polycap.eval.runner import EvalContext, MetricUnavailable
from polycap.parts import MetricScores


def _missing(module: str, extra: str = "eval") -> str | None:
    if importlib.util.find_spec(module) is None:
        return f"{module} not installed; pip install 'polycap[{extra}]'"
    return None


def reference_streams(references: Sequence[Sequence[str]]) -> list[list[str | None]]:
    """Per-image reference lists -> sacrebleu's reference streams (None where an image has
    fewer references than the most)."""
    most = max((len(refs) for refs in references), default=0)
    return [[refs[j] if j < len(refs) else None for refs in references] for j in range(most)]


def coco_dicts(ctx: EvalContext) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    """(gts, res) in pycocoevalcap's shape over the segmented text."""
    gts = {i: list(refs) for i, refs in enumerate(ctx.segmented_references)}
    res = {i: [pred] for i, pred in enumerate(ctx.segmented_predictions)}
    return gts, res


class Bleu:
    """BLEU-1..4: corpus level, all references, sacrebleu on the pack's segmentation.

    Corpus scores use no smoothing (Papineni et al.); the per-image BLEU-4 is sacrebleu's
    sentence BLEU (exponential smoothing, effective order).
    """

    name = "bleu"
    columns = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4")
    lower_is_better = False

    def unavailable(self, ctx: EvalContext) -> str | None:
        return _missing("sacrebleu")

    def compute(self, ctx: EvalContext) -> MetricScores:
        if ctx.segmentation is not None and ctx.segmentation.coco_pipeline:
            return self._coco(ctx)
        from sacrebleu.metrics import BLEU

        hypotheses = ctx.segmented_predictions
        streams = reference_streams(ctx.segmented_references)
        corpus: dict[str, float] = {}
        signature = ""
        for order in range(1, 5):
            bleu = BLEU(tokenize="none", max_ngram_order=order, smooth_method="none", force=True)
            corpus[f"BLEU-{order}"] = float(bleu.corpus_score(hypotheses, streams).score)
            signature = str(bleu.get_signature())
        sentence = BLEU(tokenize="none", effective_order=True, force=True)
        per_image = [
            float(sentence.sentence_score(hyp, list(refs)).score)
            for hyp, refs in zip(hypotheses, ctx.segmented_references, strict=True)
        ]
        return MetricScores(
            corpus,
            {"BLEU-4": per_image},
            {
                "implementation": "sacrebleu",
                "signature": signature,
                "per_image": "sentence BLEU-4, exp smoothing",
            },
        )

    @staticmethod
    def _coco(ctx: EvalContext) -> MetricScores:
        """BLEU-1..4 by pycocoevalcap's scorer (closest reference length), as the COCO caption
        evaluation reports it; its progress lines go nowhere."""
        from pycocoevalcap.bleu.bleu import Bleu as CocoBleu

        gts, res = coco_dicts(ctx)
        with contextlib.redirect_stdout(io.StringIO()):
            scores, per_sentence = CocoBleu(4).compute_score(gts, res, verbose=0)
        corpus = {f"BLEU-{n + 1}": 100.0 * float(score) for n, score in enumerate(scores)}
        return MetricScores(
            corpus,
            {"BLEU-4": [100.0 * float(s) for s in per_sentence[3]]},
            {"implementation": "pycocoevalcap.bleu (COCO caption evaluation, closest ref length)"},
        )


class Chrf:
    """chrF (character 6-grams, beta 2), sacrebleu, on the normalised raw text."""

    name = "chrf"
    columns = ("chrF",)
    lower_is_better = False

    def unavailable(self, ctx: EvalContext) -> str | None:
        return _missing("sacrebleu")

    def compute(self, ctx: EvalContext) -> MetricScores:
        from sacrebleu.metrics import CHRF

        chrf = CHRF()
        score = chrf.corpus_score(ctx.predictions, reference_streams(ctx.references)).score
        signature = str(chrf.get_signature())
        per_image = [
            float(chrf.sentence_score(hyp, list(refs)).score)
            for hyp, refs in zip(ctx.predictions, ctx.references, strict=True)
        ]
        return MetricScores(
            {"chrF": float(score)},
            {"chrF": per_image},
            {
                "implementation": "sacrebleu",
                "signature": signature,
                "input": "normalised text (not segmented)",
            },
        )


class RougeL:
    """ROUGE-L (LCS F-measure, beta 1.2, best reference), pycocoevalcap."""

    name = "rouge-l"
    columns = ("ROUGE-L",)
    lower_is_better = False

    def unavailable(self, ctx: EvalContext) -> str | None:
        return _missing("pycocoevalcap")

    def compute(self, ctx: EvalContext) -> MetricScores:
        from pycocoevalcap.rouge.rouge import Rouge

        gts, res = coco_dicts(ctx)
        score, scores = Rouge().compute_score(gts, res)
        return MetricScores(
            {"ROUGE-L": 100.0 * float(score)},
            {"ROUGE-L": [100.0 * float(s) for s in scores]},
            {"implementation": "pycocoevalcap.rouge"},
        )


class CiderD:
    """CIDEr-D, pycocoevalcap's ``Cider``: tf-idf n-grams 1-4 with idf from the references,
    clipped counts and the Gaussian length penalty (sigma 6), times 10 — the CIDEr-D of the
    COCO server, without stemming. Needs several images: idf over one image is zero."""

    name = "cider-d"
    columns = ("CIDEr-D",)
    lower_is_better = False

    def unavailable(self, ctx: EvalContext) -> str | None:
        return _missing("pycocoevalcap")

    def compute(self, ctx: EvalContext) -> MetricScores:
        from pycocoevalcap.cider.cider import Cider

        gts, res = coco_dicts(ctx)
        score, scores = Cider().compute_score(gts, res)
        return MetricScores(
            {"CIDEr-D": 100.0 * float(score)},
            {"CIDEr-D": [100.0 * float(s) for s in scores]},
            {
                "implementation": "pycocoevalcap.cider (CIDEr-D: clipping, length penalty, "
                "document frequencies from these references)"
            },
        )


def _java_reason(ctx: EvalContext, what: str) -> str | None:
    if ctx.pack.code != "en":
        return f"{what} is defined for English only"
    if shutil.which("java") is None:
        return f"{what} needs Java on PATH"
    return None


class Meteor:
    """METEOR 1.5 (pycocoevalcap's jar, ``-l en -norm``): English only, needs Java."""

    name = "meteor"
    columns = ("METEOR",)
    lower_is_better = False

    def unavailable(self, ctx: EvalContext) -> str | None:
        return _java_reason(ctx, "METEOR") or _missing("pycocoevalcap")

    def compute(self, ctx: EvalContext) -> MetricScores:
        from pycocoevalcap.meteor.meteor import Meteor as CocoMeteor

        gts, res = coco_dicts(ctx)
        res = {key: [text or "."] for key, [text] in res.items()}  # the jar stalls on empty text
        shared = bool(ctx.cache.get("shared"))  # several evaluations: start the jar once
        scorer = ctx.cache.get("meteor")
        if scorer is None:
            try:
                scorer = CocoMeteor()
            except OSError as error:
                raise MetricUnavailable(f"cannot start Java ({error})") from None
            if shared:
                ctx.cache["meteor"] = scorer
        try:
            score, scores = scorer.compute_score(gts, res)
        except (ValueError, OSError, BrokenPipeError) as error:
            ctx.cache.pop("meteor", None)
            _stop(scorer)
            raise MetricUnavailable(f"the METEOR jar failed ({type(error).__name__})") from None
        if not shared:
            _stop(scorer)
        return MetricScores(
            {"METEOR": 100.0 * float(score)},
            {"METEOR": [100.0 * float(s) for s in scores]},
            {"implementation": "pycocoevalcap.meteor (meteor-1.5.jar -l en -norm)"},
        )


def release(cache: dict[str, Any]) -> None:
    """Stop what a shared evaluation cache keeps running (the METEOR jar)."""
    scorer = cache.pop("meteor", None)
    if scorer is not None:
        _stop(scorer)


def _stop(scorer: Any) -> None:
    process = getattr(scorer, "meteor_p", None)
    if process is not None:
        with contextlib.suppress(OSError):
            process.stdin.close()
        process.kill()
        process.wait()


SPICE_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")


class Spice:
    """SPICE (pycocoevalcap): English only, Java, and Stanford CoreNLP 3.6.0 jars already in
    pycocoevalcap's ``spice/lib`` (pycocoevalcap downloads them on first use; polycap does not
    download during an evaluation)."""

    name = "spice"
    columns = ("SPICE",)
    lower_is_better = False

    def unavailable(self, ctx: EvalContext) -> str | None:
        reason = _java_reason(ctx, "SPICE") or _missing("pycocoevalcap")
        if reason:
            return reason
        spec = importlib.util.find_spec("pycocoevalcap")
        lib = Path(next(iter(spec.submodule_search_locations or []), "")) / "spice" / "lib"
        if not all((lib / jar).is_file() for jar in SPICE_JARS):
            return (
                "needs Stanford CoreNLP 3.6.0 in pycocoevalcap/spice/lib, which pycocoevalcap "
                "downloads on first use; not there"
            )
        return None

    def compute(self, ctx: EvalContext) -> MetricScores:
        from pycocoevalcap.spice.spice import Spice as CocoSpice

        gts, res = coco_dicts(ctx)
        try:
            score, scores = CocoSpice().compute_score(gts, res)
        except Exception as error:  # the jar's failures surface as many kinds
            raise MetricUnavailable(f"SPICE failed ({type(error).__name__}: {error})") from None
        per_image = [100.0 * float(s["All"]["f"]) for s in scores]
        return MetricScores(
            {"SPICE": 100.0 * float(score)},
            {"SPICE": per_image},
            {"implementation": "pycocoevalcap.spice"},
        )
