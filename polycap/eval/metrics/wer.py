"""Word error rate over the pack's segmentation (tested against jiwer on the same words).

With several references, each image is scored against the reference it matches best (lowest
per-image WER); the corpus WER is the sum of edits over the sum of those references' lengths.
"""

from __future__ import annotations

from collections.abc import Sequence

from polycap.eval.runner import EvalContext
from polycap.parts import MetricScores


def edit_distance(reference: Sequence[str], hypothesis: Sequence[str]) -> int:
    """Levenshtein distance in words (substitutions, deletions, insertions cost 1)."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref_word in enumerate(reference, 1):
        current = [i]
        for j, hyp_word in enumerate(hypothesis, 1):
            current.append(
                min(
                    previous[j] + 1,  # deletion
                    current[j - 1] + 1,  # insertion
                    previous[j - 1] + (ref_word != hyp_word),  # substitution or match
                )
            )
        previous = current
    return previous[-1]


def best_reference(
    references: Sequence[Sequence[str]], hypothesis: Sequence[str]
) -> tuple[int, int, int]:
    """(index, edits, length) of the reference with the lowest WER for ``hypothesis``."""
    best: tuple[float, int, int, int] | None = None
    for index, reference in enumerate(references):
        edits = edit_distance(reference, hypothesis)
        rate = edits / max(len(reference), 1)
        if best is None or rate < best[0]:
            best = (rate, index, edits, len(reference))
    if best is None:
        raise ValueError("an image without references")
    return best[1], best[2], best[3]


def corpus_wer(
    references: Sequence[Sequence[Sequence[str]]], hypotheses: Sequence[Sequence[str]]
) -> tuple[float, list[float], list[int]]:
    """(corpus WER, per-image WER, chosen reference index), as fractions."""
    edits_total = 0
    length_total = 0
    per_image: list[float] = []
    chosen: list[int] = []
    for refs, hyp in zip(references, hypotheses, strict=True):
        index, edits, length = best_reference(refs, hyp)
        edits_total += edits
        length_total += length
        per_image.append(edits / max(length, 1))
        chosen.append(index)
    return edits_total / max(length_total, 1), per_image, chosen


class Wer:
    """WER (%) against the best-matching reference; lower is better."""

    name = "wer"
    columns = ("WER",)
    lower_is_better = True

    def unavailable(self, ctx: EvalContext) -> str | None:
        return None

    def compute(self, ctx: EvalContext) -> MetricScores:
        score, per_image, _ = corpus_wer(ctx.reference_tokens, ctx.prediction_tokens)
        return MetricScores(
            {"WER": 100.0 * score},
            {"WER": [100.0 * v for v in per_image]},
            {"implementation": "polycap (Levenshtein over the pack's words, best reference)"},
        )
