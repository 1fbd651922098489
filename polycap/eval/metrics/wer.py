"""Word error rate over the pack's segmentation, counted by jiwer.

The pack segments each caption into words (MeCab for ja, jieba for zh, ...); jiwer aligns
those word lists as they are (no re-splitting on spaces) and counts substitutions, deletions
and insertions. With several references, each image is scored against the reference it
matches best (lowest per-image WER); the corpus WER is the sum of edits over the sum of those
references' lengths. jiwer is in the ``eval`` extra; without it the metric says so.
"""

from __future__ import annotations

from collections.abc import Sequence

from polycap.eval.runner import EvalContext
from polycap.parts import MetricScores


def _as_is(words: list[list[str]]) -> list[list[str]]:
    """jiwer's transform hook: the pack already gave lists of words."""
    return words


def edit_counts(pairs: Sequence[tuple[Sequence[str], Sequence[str]]]) -> list[int]:
    """Word edits (substitutions + deletions + insertions) of each (reference, hypothesis)
    pair, in one jiwer pass; an empty reference costs the hypothesis's length."""
    import jiwer

    counts = [len(hyp) for _, hyp in pairs]
    aligned = [i for i, (ref, _) in enumerate(pairs) if ref]
    if not aligned:
        return counts
    output = jiwer.process_words(
        [list(pairs[i][0]) for i in aligned],
        [list(pairs[i][1]) for i in aligned],
        reference_transform=_as_is,
        hypothesis_transform=_as_is,
    )
    for i, chunks in zip(aligned, output.alignments, strict=True):
        counts[i] = sum(_chunk_edits(chunk) for chunk in chunks)
    return counts


def _chunk_edits(chunk: object) -> int:
    kind = chunk.type  # type: ignore[attr-defined]
    if kind == "equal":
        return 0
    if kind == "insert":
        return chunk.hyp_end_idx - chunk.hyp_start_idx  # type: ignore[attr-defined]
    return chunk.ref_end_idx - chunk.ref_start_idx  # type: ignore[attr-defined]


def corpus_wer(
    references: Sequence[Sequence[Sequence[str]]], hypotheses: Sequence[Sequence[str]]
) -> tuple[float, list[float], list[int]]:
    """(corpus WER, per-image WER, chosen reference index), as fractions."""
    pairs = [(ref, hyp) for refs, hyp in zip(references, hypotheses, strict=True) for ref in refs]
    edits = iter(edit_counts(pairs))
    edits_total = length_total = 0
    per_image: list[float] = []
    chosen: list[int] = []
    for refs in references:
        if not refs:
            raise ValueError("an image without references")
        # the first reference with the lowest rate, as the hand-written loop chose
        rates = [(e / max(len(r), 1), i, e, len(r)) for i, (r, e) in enumerate(zip(refs, edits))]
        _, index, best_edits, length = min(rates, key=lambda rate: (rate[0], rate[1]))
        edits_total += best_edits
        length_total += length
        per_image.append(best_edits / max(length, 1))
        chosen.append(index)
    return edits_total / max(length_total, 1), per_image, chosen


class Wer:
    """WER (%) against the best-matching reference; lower is better."""

    name = "wer"
    columns = ("WER",)
    lower_is_better = True

    def unavailable(self, ctx: EvalContext) -> str | None:
        from importlib.util import find_spec

        if find_spec("jiwer") is None:
            return "needs jiwer: pip install 'polycap[eval]'"
        return None

    def compute(self, ctx: EvalContext) -> MetricScores:
        score, per_image, _ = corpus_wer(ctx.reference_tokens, ctx.prediction_tokens)
        return MetricScores(
            {"WER": 100.0 * score},
            {"WER": [100.0 * v for v in per_image]},
            {"implementation": "jiwer (over the pack's words, best reference)"},
        )
