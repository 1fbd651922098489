"""Text pretraining for a tiny decoder: what a real LM brings before it sees an image.

A real decoder (rinna's GPT-2, ruGPT, SmolLM2) has read text that names every colour, and it
continues a text by repeating what the text is about (in-context copying). A tiny GPT-2 built
with random weights has neither, so a retrieval-augmented captioner on top of it cannot copy a
word from its prompt that it never produced. :func:`pretrain_lm` trains the saved tiny LM on
text documents; :func:`topic_documents` writes such documents in a pack's language: a few
captions of one colour and varying shapes and counts, joined by the pack's caption separator
(no images; ``prompt_share`` of them in the retrieval prompt's form instead).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polycap.offline.synthetic import COLOURS, SHAPES


@dataclass
class PretrainOptions:
    """Length and step size of a text pretraining run."""

    steps: int = 600
    batch_size: int = 32
    lr: float = 3e-3
    seed: int = 0


def topic_documents(
    pack: Any,
    count: int,
    seed: int = 0,
    colours: Sequence[str] = tuple(COLOURS),
    captions_per_document: tuple[int, int] = (2, 5),
    prompt_share: float = 0.0,
) -> list[str]:
    """``count`` documents, each of ``captions_per_document`` (low, high) captions
    (``pack.demo``) of one colour, any shapes; ``prompt_share`` of them are the retrieval
    prompt around all captions but the last, then the last."""
    rng = random.Random(seed)
    low, high = captions_per_document
    documents = []
    for _ in range(count):
        colour = rng.choice(list(colours))
        captions = [
            pack.demo.describe(colour, rng.choice(SHAPES), rng.randint(1, 3), rng)
            for _ in range(rng.randint(low, high))
        ]
        if rng.random() < prompt_share:
            documents.append(f"{pack.format_retrieval_prompt(captions[:-1])} {captions[-1]}")
        else:
            documents.append(pack.normalize(pack.caption_separator.join(captions)))
    return documents


def pretrain_lm(
    directory: str | Path, documents: Sequence[str], options: PretrainOptions | None = None
) -> Path:
    """Train the causal LM saved in ``directory`` (with its tokenizer) on ``documents`` as
    plain next-token prediction, and save it back in place. Returns ``directory``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    options = options or PretrainOptions()
    directory = Path(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    lm = AutoModelForCausalLM.from_pretrained(directory)
    end = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    rows = [tokenizer(text, add_special_tokens=False)["input_ids"] + [end] for text in documents]
    generator = torch.Generator().manual_seed(options.seed)
    optimizer = torch.optim.AdamW(lm.parameters(), lr=options.lr, weight_decay=0.0)
    lm.train()
    for _ in range(options.steps):
        picked = torch.randint(len(rows), (options.batch_size,), generator=generator).tolist()
        ids, labels = _batch([rows[i] for i in picked], pad=end)
        loss = lm(input_ids=ids, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    lm.eval()
    lm.save_pretrained(directory)
    return directory


def _batch(rows: Sequence[Sequence[int]], pad: int) -> tuple[Any, Any]:
    """(ids, labels) right-padded; padding is left out of the loss (label -100)."""
    import torch

    longest = max(len(row) for row in rows)
    ids = torch.full((len(rows), longest), pad, dtype=torch.long)
    labels = torch.full((len(rows), longest), -100, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        labels[i, : len(row)] = torch.tensor(row)
    return ids, labels
