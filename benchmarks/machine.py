"""What this machine can do, measured, and what a captioner's stages need of it.

- :func:`matmul_gflops`: fp32 matrix-product throughput with torch's current thread count (the
  best of a few 1024 x 1024 products): the ceiling for compute-bound work such as encoding;
- :func:`copy_gb_s`: memory bandwidth, as bytes read + written per second by a large tensor
  copy (256 MB, larger than any cache): the ceiling for a decode step, which reads every
  weight of the decoder;
- :func:`forward_flops`: the FLOPs of one forward pass, counted by
  ``torch.utils.flop_counter.FlopCounterMode`` (matrix products and convolutions);
- :func:`decoder_step_bytes`: what one decode step reads (the decoder's weights; the KV cache
  is added by the caller).

Not a benchmark section itself (no ``BENCHMARKS``); :mod:`benchmarks.end_to_end` puts the bounds
beside its results, and ``load_note`` writes the load-average line every section prints.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any


def load_average() -> float | None:
    return round(os.getloadavg()[0], 1) if hasattr(os, "getloadavg") else None


def overloaded() -> str | None:
    """A warning when the 1-minute load average exceeds the number of cores, else None."""
    load, cores = load_average(), os.cpu_count() or 1
    if load is None or load <= cores:
        return None
    return (
        f"the 1-minute load average is {load:.1f} on {cores} core(s): other programs are "
        "running, so timings will be slow and noisy; run the benchmarks on a quiet machine"
    )


def _best(function: Callable[[], Any], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_gflops(size: int = 2048, repeats: int = 10) -> float:
    """fp32 GFLOP/s of ``size`` x ``size`` matrix products (best of ``repeats``)."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    out = torch.empty(size, size)
    torch.mm(a, b, out=out)  # warm-up
    seconds = _best(lambda: torch.mm(a, b, out=out), repeats)
    return 2 * size**3 / seconds / 1e9


def copy_gb_s(megabytes: int = 256, repeats: int = 5) -> float:
    """GB/s moved (read + written) by copying a ``megabytes`` tensor (best of ``repeats``)."""
    import torch

    source = torch.ones(megabytes * 2**20 // 4)
    target = torch.empty_like(source)
    target.copy_(source)  # warm-up: pages touched
    seconds = _best(lambda: target.copy_(source), repeats)
    return 2 * source.numel() * 4 / seconds / 1e9


def forward_flops(function: Callable[..., Any], module: Any, *inputs: Any) -> int:
    """FLOPs of ``function(*inputs)`` as torch's flop counter counts them. ``module`` (the
    ``nn.Module`` it runs) is put in training mode, under ``no_grad``, while counting: in eval
    mode ``nn.MultiheadAttention`` takes a fused fast path whose projections the counter does
    not see (ViT-B/32 would count 5.9 GFLOPs instead of 8.7)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    was_training = module.training
    counter = FlopCounterMode(display=False)
    try:
        module.train()
        with torch.no_grad(), counter:
            function(*inputs)
    finally:
        module.train(was_training)
    return int(counter.get_total_flops())


def decoder_step_bytes(lm: Any) -> int:
    """Bytes of weights one decode step reads: every parameter once (tied ones once)."""
    seen, total = set(), 0
    for parameter in lm.parameters():
        if parameter.data_ptr() in seen:
            continue
        seen.add(parameter.data_ptr())
        total += parameter.numel() * parameter.element_size()
    return total


def measure(say: Callable[[str], None] = print) -> dict[str, float]:
    """This machine's matmul GFLOP/s and copy GB/s, with torch's current thread count."""
    import torch

    found = {
        "gflops": matmul_gflops(),
        "copy_gb_s": copy_gb_s(),
        "threads": torch.get_num_threads(),
    }
    say(
        f"machine: {found['gflops']:,.1f} GFLOP/s (fp32 matmul), {found['copy_gb_s']:,.1f} "
        f"GB/s (copy), {found['threads']} thread(s)"
    )
    return found
