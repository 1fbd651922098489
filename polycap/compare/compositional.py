"""Retrieval vs generation on the synthetic compositional split (colour-shape pairs seen only
in the test set), with the accuracy on seen and unseen pairs: the demo's closing comparison."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from polycap.compare.comparison import CompareOptions, CompareSettings, Comparison, compare
from polycap.data.captions import load_captions
from polycap.inference.pipeline import encoder_for
from polycap.offline.synthetic import score_captions
from polycap.retrieval.bank import Bank, BankOptions, build_bank

if TYPE_CHECKING:
    from polycap.language import LanguagePack
    from polycap.retrieval.bank import Bank

DEFAULT_HELDOUT_PAIRS: tuple[tuple[str, str], ...] = (
    ("red", "triangle"),
    ("green", "circle"),
    ("blue", "square"),
)
SPLIT_METRICS = ("bleu", "rouge-l", "cider-d", "chrf", "wer")


@dataclass
class SplitComparison:
    """:class:`Comparison` on the synthetic split, plus pair accuracy on seen / unseen pairs."""

    comparison: Comparison
    pair_scores: dict[str, dict[str, dict[str, float]]]
    heldout_pairs: tuple[tuple[str, str], ...]
    bank_path: Path
    report: Path | None = None

    def table(self) -> tuple[list[str], list[list[str]]]:
        """The comparison table (pair accuracies are rows in it)."""
        return self.comparison.table()

    def verdict(self) -> list[str]:
        """One sentence per group of test images (seen / unseen pairs): which method named
        the right colour-shape pair most often, with every method's accuracy."""
        lines = []
        for group, label in (("seen", "pairs seen in training"), ("unseen", "unseen pairs")):
            scored = {
                method: scores[group]["pair_accuracy"]
                for method, scores in self.pair_scores.items()
                if scores.get(group, {}).get("n")
            }
            if not scored:
                continue
            best = max(scored.values())
            winners = [m for m, value in scored.items() if value == best]
            others = ", ".join(f"{m} {100 * v:.1f} %" for m, v in scored.items())
            lead = f"{winners[0]} wins"
            if len(winners) > 1:
                lead = f"{', '.join(winners[:-1])} and {winners[-1]} tie"
            lines.append(f"On {label}: {lead} ({others}).")
        return lines

    def to_json(self) -> dict[str, Any]:
        data = self.comparison.to_json(per_image=True)
        data["pair_accuracy"] = self.pair_scores
        data["verdict"] = self.verdict()
        data["heldout_pairs"] = [list(p) for p in self.heldout_pairs]
        data["report"] = str(self.report) if self.report else None
        return data


def unseen_pair_accuracy(
    pack: LanguagePack,
    captions: dict[str, str],
    truths: dict[str, tuple[str, str, int]],
    heldout_pairs: Sequence[tuple[str, str]],
) -> dict[str, dict[str, float]]:
    """``score_captions`` on the images whose (colour, shape) pair was held out of training
    ("unseen") and on the others ("seen"); captions keyed by image file name."""
    held = {tuple(p) for p in heldout_pairs}
    groups: dict[str, dict[str, str]] = {"seen": {}, "unseen": {}}
    for name, caption in captions.items():
        colour, shape, _ = truths[name]
        groups["unseen" if (colour, shape) in held else "seen"][name] = caption
    return {group: score_captions(pack, chosen, truths) for group, chosen in groups.items()}


def compare_on_split(
    pack: LanguagePack,
    split: Any,
    model: Any,
    workdir: Path,
    options: CompareOptions | None = None,
    report: bool = True,
    **fields: Any,
) -> SplitComparison:
    """Retrieval (bank of the training captions, the model's encoder) vs generation on the
    test images of a :class:`~polycap.offline.synthetic.SyntheticSplit`, with seen/unseen pair
    accuracy. Writes ``workdir/bank`` and ``workdir/compare.html``. ``options`` (or its
    ``fields`` by keyword): :class:`CompareOptions`; ``settings`` default to the split's metrics
    (:data:`SPLIT_METRICS`) on the CPU, ``generation`` to 24 tokens; the encoder and banks are
    the split's own. ``augmented``: a retrieval-augmented captioner on the same encoder, a
    third column (it retrieves from the same bank of the training captions)."""
    from polycap.model.generation import GenerationConfig

    opts = replace(options or CompareOptions(), **fields)
    workdir = Path(workdir)
    settings = opts.settings or CompareSettings(metrics=SPLIT_METRICS)
    encoder = encoder_for(model, device=settings.device)
    bank = training_bank(pack, split, encoder, workdir / "bank", settings.cache_dir)
    comparison = compare(
        load_captions(split.test_file),
        pack,
        model,
        bank,
        opts,
        augmented_bank=bank if opts.augmented is not None else None,
        generation=opts.generation or GenerationConfig(max_length=24),
        settings=settings,
        encoder=encoder,
    )
    held = tuple(split.heldout_pairs)
    pair_scores, marks = _score_pairs(pack, comparison, split.truths, held)
    path = None
    if report:
        path = comparison.write_report(
            workdir / "compare.html",
            f"Retrieval vs generation on unseen colour-shape pairs ({pack.name})",
            marks,
        )
    return SplitComparison(comparison, pair_scores, held, bank.path, path)


def training_bank(
    pack: LanguagePack, split: Any, encoder: Any, path: Path, cache_dir: Path | None = None
) -> Bank:
    """A bank of ``split``'s training captions at ``path`` (replaced), built with ``encoder``
    (float32, features cached under ``cache_dir``)."""

    options = BankOptions(dtype="float32", cache_dir=cache_dir, force=True, progress=False)
    build_bank(load_captions(split.train_file), encoder, path, pack, options)
    return Bank.open(path)


def _score_pairs(
    pack: LanguagePack, comparison: Any, truths: dict[str, Any], held: tuple[tuple[str, str], ...]
) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, dict[str, dict[str, bool]]]]:
    """Seen/unseen pair accuracy of each method of ``comparison`` (also put into its extra
    columns) and, per method and image, whether the caption names the right pair."""
    pair_scores: dict[str, dict[str, dict[str, float]]] = {}
    marks: dict[str, dict[str, dict[str, bool]]] = {}
    names = [p.name for p in comparison.images]
    for method in comparison.methods:
        captions = dict(zip(names, method.captions, strict=True))
        scores = unseen_pair_accuracy(pack, captions, truths, held)
        pair_scores[method.name] = scores
        method.extra["seen-pair accuracy %"] = 100 * scores["seen"]["pair_accuracy"]
        if held:
            method.extra["unseen-pair accuracy %"] = 100 * scores["unseen"]["pair_accuracy"]
        marks[method.name] = {
            key: {"pair": _pair_ok(pack, captions[name], truths[name])}
            for key, name in zip(comparison.keys, names, strict=True)
        }
    return pair_scores, marks


def _pair_ok(pack: LanguagePack, caption: str, truth: tuple[str, str, int]) -> bool:
    return score_captions(pack, {"x": caption}, {"x": truth})["pair_accuracy"] == 1.0
