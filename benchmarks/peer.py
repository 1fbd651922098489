"""The peer: what a user who leaves ClipCap would call instead of polycap's decoder.

``lm.generate(inputs_embeds=prefix, ...)`` from transformers: batched, with a KV cache, rows
kept in the batch until every row has finished. Same Captioner, same prefix, same strategy
settings as polycap's :class:`~polycap.model.generation.GenerationConfig`; a polycap
``logits_hook`` runs inside ``generate`` as a logits processor (:func:`processor`).
"""

from __future__ import annotations

from typing import Any

import torch


def processor(logits_hook: Any, beams: int) -> Any:
    """A transformers ``LogitsProcessor`` calling polycap's ``logits_hook(step, rows,
    scores)``: ``generate`` keeps every row, and the prompt is embeddings only, so the step is
    the number of tokens generated so far and row ``r`` belongs to image ``r // beams``."""
    from transformers import LogitsProcessor

    class Hook(LogitsProcessor):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            rows = torch.arange(scores.shape[0], device=scores.device) // beams
            return logits_hook(input_ids.shape[1], rows, scores)

    return Hook()


def generate_ids(
    model: Any, features: torch.Tensor, config: Any, logits_hook: Any = None
) -> list[list[int]]:
    """Each image's best caption (ids without the end token) by ``model.lm.generate``.

    Sampling draws from torch's global generator, seeded with ``config.seed``."""
    from transformers import GenerationConfig, LogitsProcessorList

    end, pad = int(model.end_token_id), int(model.pad_token_id)
    beams = config.beams if not config.sample else 1
    settings = GenerationConfig(
        max_new_tokens=config.max_length,
        eos_token_id=end,
        pad_token_id=pad,
        num_beams=beams,
        do_sample=config.sample,
        use_cache=config.use_cache,
        length_penalty=1.0,  # score / length, as polycap and ClipCap rank beams
        early_stopping=False,
        repetition_penalty=getattr(config, "repetition_penalty", 1.0),
        no_repeat_ngram_size=getattr(config, "no_repeat_ngram_size", 0),
    )
    if getattr(config, "cache", "dynamic") == "static":
        # transformers' own GPU path: a StaticCache, and generate compiles the forward
        # (torch.compile) when the cache is static and the model is on an accelerator
        settings.cache_implementation = "static"
    if config.sample:
        settings.temperature = config.temperature
        settings.top_k = config.top_k  # 0: off (None would mean transformers' default, 50)
        settings.top_p = config.top_p
    processors = LogitsProcessorList([processor(logits_hook, beams)] if logits_hook else [])
    with torch.inference_mode():
        prefix = model.prefix(features.to(model.device))
        mask = torch.ones(prefix.shape[:2], dtype=torch.long, device=prefix.device)
        if config.sample and config.seed is not None:
            torch.manual_seed(config.seed)
        out = model.lm.generate(
            inputs_embeds=prefix,
            attention_mask=mask,
            generation_config=settings,
            logits_processor=processors,
        )
    rows = out.tolist()  # embeddings as the prompt: only the generated tokens come back
    return [row[: row.index(end)] if end in row else row for row in rows]
