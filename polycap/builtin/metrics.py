"""Built-in caption metrics: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, SPICE, chrF, WER, CLIPScore,
language fidelity."""

from __future__ import annotations

from polycap.hookspecs import Register, hookimpl


@hookimpl
def register_metrics(register: Register) -> None:
    """Each metric object under its name (see ``polycap.eval.runner.Metric``)."""
    from polycap.eval.metrics.clipscore import ClipScore
    from polycap.eval.metrics.fidelity import LanguageFidelity
    from polycap.eval.metrics.reference import Bleu, Chrf, CiderD, Meteor, RougeL, Spice
    from polycap.eval.metrics.wer import Wer

    metrics = (Bleu(), Meteor(), RougeL(), CiderD(), Spice(), Chrf(), Wer(), ClipScore())
    for metric in (*metrics, LanguageFidelity()):
        register(metric.name, metric)
