"""Model selection during training: the best checkpoint by a validation score
(``polycap train --best-metric``) and early stopping (``--early-stop N``).

The best-so-far (epoch, step, score) and the count of epochs without improvement live in the
trainer state, so a killed and resumed run keeps the same best and stops at the same epoch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from polycap.errors import BadInput

LOSS = "val_loss"


@dataclass(frozen=True)
class BestMetric:
    """Which history value decides the best epoch (``val_CIDEr-D``, ``val_loss``, ...) and
    whether lower is better."""

    column: str
    lower_is_better: bool
    metric: str | None = None  # the registered metric it comes from (None: val_loss)

    @classmethod
    def resolve(cls, name: str, eval_metrics: Sequence[str], registries: Any = None) -> BestMetric:
        """``--best-metric NAME``: ``val_loss`` (or ``loss``), a metric of ``--eval-metrics``
        (``cider-d``; a metric of several columns means its last, e.g. ``bleu`` = BLEU-4) or one
        of its columns (``BLEU-2``); ``val_`` prefix and case optional. BadInput otherwise."""
        from polycap.plugins import get_registries

        wanted = name.strip().lower().removeprefix("val_")
        if wanted == "loss":
            return cls(LOSS, lower_is_better=True)
        registry = (registries or get_registries()).metrics
        for metric_name in eval_metrics:
            metric = registry.get(metric_name)
            columns = list(metric.columns)
            by_name = {column.lower(): column for column in columns}
            if wanted == metric_name.lower() and columns:
                column = by_name.get(wanted, columns[-1])
            elif wanted in by_name:
                column = by_name[wanted]
            else:
                continue
            lower = bool(metric.lower_is_better)
            return cls(f"val_{column}", lower_is_better=lower, metric=metric_name)
        chosen = ", ".join(eval_metrics) if eval_metrics else "none"
        raise BadInput(
            f"--best-metric {name}: not among the validation scores (--eval-metrics: {chosen}); "
            f"add it to --eval-metrics, or use val_loss"
        )

    def score(self, record: dict[str, Any]) -> float | None:
        """The epoch's score, None when it has none (no validation split, metric n/a)."""
        value = record.get(self.column)
        if value is None or math.isnan(float(value)):
            return None
        return float(value)

    def improves(self, score: float, best: float | None) -> bool:
        if best is None:
            return True
        return score < best if self.lower_is_better else score > best


@dataclass
class Selection:
    """Keeps the best epoch and decides early stopping, over a run's train state."""

    metric: BestMetric
    patience: int = 0  # epochs without improvement before stopping; 0 = never stop early

    def update(self, state: Any, record: dict[str, Any]) -> bool:
        """After an epoch's record: move ``state.best`` / ``state.since_best``; True when this
        epoch is the new best (its model should become ``best/``)."""
        score = self.metric.score(record)
        best = state.best["score"] if state.best else None
        if score is None or not self.metric.improves(score, best):
            state.since_best += 1
            return False
        state.best = {
            "metric": self.metric.column,
            "epoch": record["epoch"],
            "step": record["step"],
            "score": score,
        }
        state.since_best = 0
        return True

    def should_stop(self, state: Any) -> bool:
        return bool(self.patience) and state.since_best >= self.patience

    def describe_stop(self, state: Any) -> str:
        best = state.best
        kept = f"best {best['score']:.4f} at epoch {best['epoch']}" if best else "no score so far"
        return (
            f"stopped early at epoch {state.epoch}: no {self.metric.column} improvement for "
            f"{state.since_best} epoch(s) ({kept})"
        )


def make_selection(settings: Any, registries: Any, pack: Any) -> Selection | None:
    """The run's best-epoch keeper: by ``--best-metric``, or by val_loss when only
    ``--early-stop`` is given; None when neither is. BadInput when the metric is not among
    the validation scores, cannot be computed here (e.g. SPICE without CoreNLP), or there is
    no validation split."""
    if settings.best_metric is None and not settings.early_stop:
        return None
    name = settings.best_metric or LOSS
    metric = BestMetric.resolve(name, settings.eval_metrics, registries)
    if settings.val_fraction <= 0:
        option = f"--best-metric {name}" if settings.best_metric else "--early-stop"
        raise BadInput(f"{option}: needs a validation split (--val-fraction is 0)")
    if metric.metric is not None:
        reason = unavailable_reason(registries.metrics.get(metric.metric), pack)
        if reason is not None:
            raise BadInput(
                f"--best-metric {name}: cannot be computed here ({reason}); "
                "choose another metric, or val_loss"
            )
    return Selection(metric, patience=settings.early_stop)


def unavailable_reason(metric: Any, pack: Any) -> str | None:
    """Why ``metric`` cannot score validation captions of ``pack``'s language here (its own
    ``unavailable`` on a one-caption probe, as validation calls it: no images), or None."""
    from polycap.eval.runner import EvalContext

    probe = EvalContext(pack=pack, keys=["probe"], predictions=["a"], references=[["a"]])
    return metric.unavailable(probe)
