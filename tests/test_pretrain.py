"""Text pretraining of a tiny decoder (polycap.offline.pretrain): documents and training."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from polycap.offline.synthetic import COLOURS


@pytest.fixture(scope="module")
def english():
    from polycap.plugins import get_registries

    return get_registries().languages.get("en")


def _colours_named(pack, text: str) -> set[str]:
    words = set(re.findall(r"\w+", text))
    return {c for c, term in pack.demo.colour_terms.items() if term in words}


def test_topic_documents_keep_to_one_colour_and_cover_the_palette(english) -> None:
    from polycap.offline.pretrain import topic_documents

    documents = topic_documents(english, 200, seed=3)
    assert len(documents) == 200
    assert all(len(_colours_named(english, d)) == 1 for d in documents)
    assert set().union(*(_colours_named(english, d) for d in documents)) == set(COLOURS)
    assert all(english.caption_separator in d for d in documents)
    assert documents == topic_documents(english, 200, seed=3)


def test_a_share_of_documents_takes_the_retrieval_prompt_form(english) -> None:
    from polycap.offline.pretrain import topic_documents

    opening = english.retrieval_prompt.split("{captions}")[0].strip()
    plain = topic_documents(english, 100, seed=1)
    mixed = topic_documents(english, 100, seed=1, prompt_share=0.5)
    assert not any(opening in d for d in plain)
    assert 25 <= sum(opening in d for d in mixed) <= 75


def _loss(directory: Path, documents: list[str]) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    lm = AutoModelForCausalLM.from_pretrained(directory).eval()
    with torch.no_grad():
        losses = [
            lm(input_ids=ids, labels=ids).loss.item()
            for ids in (tokenizer(d, return_tensors="pt")["input_ids"] for d in documents)
        ]
    return sum(losses) / len(losses)


def test_pretraining_lowers_the_loss_on_unseen_documents_and_saves_in_place(
    english, tmp_path: Path
) -> None:
    import torch

    from polycap.offline import tiny
    from polycap.offline.pretrain import PretrainOptions, pretrain_lm, topic_documents

    torch.manual_seed(0)
    documents = topic_documents(english, 300, seed=0)
    held_out = topic_documents(english, 20, seed=99)
    tokenizer = english.build_tiny_tokenizer(documents, tmp_path / "lm")
    lm = tiny.build_gpt2(english.load_tokenizer(str(tokenizer)), tmp_path / "lm", seed=0)
    before = _loss(lm, held_out)
    assert pretrain_lm(lm, documents, PretrainOptions(steps=60, batch_size=16)) == lm
    after = _loss(lm, held_out)
    assert after < 0.6 * before, (before, after)
