"""The optimizer and the learning-rate schedule of a run.

AdamW (``--lr``, ``--weight-decay``) and a schedule from ``transformers.get_scheduler``
(``--lr-schedule``: linear warm-up then linear decay by default, as ClipCap trains; cosine,
constant and the rest by name) over ``--warmup`` steps and the run's optimizer steps.
"""

from __future__ import annotations

from typing import Any

import torch


def make_optimizer(parameters: list[torch.nn.Parameter], settings: Any) -> Any:
    """AdamW over ``parameters``: the fused implementation (one kernel per step, ~5x faster
    than the per-tensor loop on the CPU) where torch has it for their device, else the
    default one."""
    lr, decay = settings.lr, settings.weight_decay
    try:
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=decay, fused=True)
    except (RuntimeError, ValueError):  # a device or dtype without a fused kernel
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=decay)


def make_scheduler(optimizer: torch.optim.Optimizer, name: str, warmup: int, total: int) -> Any:
    """``transformers.get_scheduler(name)`` over ``total`` optimizer steps, the first
    ``warmup`` of them warming up (a ``LambdaLR``, stepped once per optimizer step)."""
    from transformers import get_scheduler

    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total)


def linear_warmup_decay(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> Any:
    """Linear warm-up to the base lr, then linear decay to zero (``--lr-schedule linear``)."""
    return make_scheduler(optimizer, "linear", warmup, total)


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The learning rate the next optimizer step takes (its first parameter group's)."""
    return float(optimizer.param_groups[0]["lr"])
