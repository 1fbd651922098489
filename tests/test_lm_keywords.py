"""The LM keywords that limit the output projection: the same caption logits and loss whichever
form the LM takes, and a contiguous input to the projection when training."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from helpers_lm import collate, new_captioner

from polycap.model.lm_keywords import LMKeywords

TEXTS = ["a red square", "three yellow squares on a dark background", "a blue circle"]


class OldKeywordLM(torch.nn.Module):
    """An LM as transformers before 4.50 had it: ``num_logits_to_keep``, an int only."""

    def __init__(self, lm: Any) -> None:
        super().__init__()
        self.inner = lm

    def get_input_embeddings(self) -> Any:
        return self.inner.get_input_embeddings()

    def forward(self, num_logits_to_keep: int = 0, **kwargs: Any) -> Any:
        assert isinstance(num_logits_to_keep, int)
        return self.inner(logits_to_keep=num_logits_to_keep, **kwargs)


def caption_logits(model: Any, keywords: LMKeywords | None) -> tuple[torch.Tensor, float]:
    ids, mask = collate(model, TEXTS)
    features = torch.randn(len(TEXTS), 16, generator=torch.Generator().manual_seed(0))
    if keywords is not None:
        model._lm_keywords = keywords
    try:
        with torch.no_grad():
            out = model(features, ids, mask)
    finally:
        model.__dict__.pop("_lm_keywords", None)
    return out.logits, float(out.loss)


@pytest.mark.parametrize("keep", ["num_logits_to_keep", None], ids=["int", "none"])
def test_every_keyword_form_gives_the_same_caption_logits(keep) -> None:
    model = new_captioner(seed=3).eval()
    expected, loss = caption_logits(model, None)  # transformers 5: positions as a tensor
    assert expected.shape[:2] == collate(model, TEXTS)[0].shape
    inner = model.lm
    if keep == "num_logits_to_keep":
        model.lm = OldKeywordLM(inner)
    try:
        logits, other_loss = caption_logits(model, LMKeywords(keep, "cache"))
    finally:
        model.lm = inner
    assert torch.allclose(logits, expected, atol=1e-5) and abs(loss - other_loss) < 1e-5


def test_the_output_projection_gets_contiguous_hidden_states_when_training() -> None:
    """With gradients, torch.matmul runs a strided 3-d input as a batched product with the
    weight expanded per row (several times slower than one matrix product): the positions go
    to the LM as a tensor, which gathers them into a contiguous tensor."""
    model = new_captioner(seed=3).train()
    seen: list[bool] = []
    head = model.lm.get_output_embeddings()
    handle = head.register_forward_pre_hook(lambda _, args: seen.append(args[0].is_contiguous()))
    try:
        ids, mask = collate(model, TEXTS)
        model(torch.randn(len(TEXTS), 16), ids, mask).loss.backward()
    finally:
        handle.remove()
    assert seen == [True]
    assert model._lm_keywords.keep == "logits_to_keep"
