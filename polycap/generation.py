"""Batched caption decoding with the LM's KV cache: greedy, beam search, top-k/top-p sampling.

Every image of a batch is decoded at once. The prefix goes through the LM once; after that
each step feeds one token per sequence and reuses the cached keys/values. Sequences that end
(end token) are dropped from the batch, so the work shrinks as captions finish. The
``use_cache=False`` path re-runs the whole sequence each step and gives the same tokens; it
exists for tests and for LMs without a cache.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from polycap.errors import BadInput
from polycap.lm_keywords import lm_keywords
from polycap.progress import progress_bar

MAX_SAMPLE_RETRIES = 3


@dataclass
class GenerationConfig:
    """How to decode.

    ``beams > 1``: beam search, ranked by length-normalised log-probability (ClipCap's
    ``generate_beam``), ``num_captions <= beams`` distinct captions per image.
    ``sample``: ancestral sampling with ``temperature``, ``top_k`` (0 = off) and ``top_p``
    (1.0 = off); ``seed`` makes it reproducible; ``num_captions`` distinct samples per image
    (fewer when the model keeps repeating itself after a few retries).
    Otherwise greedy. ``max_length``: most tokens per caption, end token included.
    """

    max_length: int = 30
    beams: int = 1
    top_k: int = 0
    top_p: float = 1.0
    temperature: float = 1.0
    sample: bool = False
    num_captions: int = 1
    seed: int | None = None
    use_cache: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """BadInput with one line for settings that make no sense."""
        if self.max_length < 1:
            raise BadInput(f"max_length must be at least 1, not {self.max_length}")
        if self.beams < 1:
            raise BadInput(f"beams must be at least 1, not {self.beams}")
        if self.num_captions < 1:
            raise BadInput(f"num_captions must be at least 1, not {self.num_captions}")
        if self.top_k < 0:
            raise BadInput(f"top_k must be 0 (off) or positive, not {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise BadInput(f"top_p must be in (0, 1], not {self.top_p}")
        if not self.temperature > 0.0:
            raise BadInput(f"temperature must be positive, not {self.temperature}")
        if self.sample and self.beams > 1:
            raise BadInput("choose beam search (beams > 1) or sampling, not both")
        if not self.sample and self.num_captions > self.beams:
            raise BadInput(
                f"{self.num_captions} captions per image need beams >= {self.num_captions} "
                "or sampling"
            )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def strategy(self) -> str:
        return "sample" if self.sample else "beam" if self.beams > 1 else "greedy"


# -- public entry points ------------------------------------------------------------------------
def generate_ids(
    model: Any,
    features: torch.Tensor,
    config: GenerationConfig | None = None,
    generator: torch.Generator | None = None,
) -> list[list[list[int]]]:
    """Token ids per image, per caption (best first), without the end token.

    ``features``: ``[B, clip_dim]`` image embeddings (one image: ``[clip_dim]``).
    ``generator``: the random source for sampling (default: a new one seeded with
    ``config.seed``, or torch's global one when the seed is None).
    """
    config = config or GenerationConfig()
    config.validate()
    if features.dim() == 1:
        features = features.unsqueeze(0)
    if features.shape[0] == 0:
        return []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            decoder = _Decoder(model, config)
            prefix = model.prefix(features.to(model.device))
            if config.sample:
                if generator is None and config.seed is not None:
                    generator = torch.Generator(device=prefix.device).manual_seed(config.seed)
                return decoder.sample(prefix, generator)
            if config.beams > 1:
                return decoder.beam(prefix)
            return [[row] for row in decoder.rows(prefix, decoder.greedy_pick)]
    finally:
        model.train(was_training)


def caption_features(
    model: Any,
    features: torch.Tensor,
    config: GenerationConfig | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> list[list[str]]:
    """Captions per image (``num_captions`` each, fewer if not distinct), decoded by the pack."""
    config = config or GenerationConfig()
    config.validate()
    if features.dim() == 1:
        features = features.unsqueeze(0)
    generator = None
    if config.sample and config.seed is not None:
        generator = torch.Generator(device=model.device).manual_seed(config.seed)
    results: list[list[str]] = []
    starts = range(0, features.shape[0], batch_size)
    with progress_bar("captioning", features.shape[0], progress and len(starts) > 1) as advance:
        for start in starts:
            batch = features[start : start + batch_size]
            for captions in generate_ids(model, batch, config, generator=generator):
                texts: list[str] = []
                for ids in captions:
                    text = model.pack.decode_caption(model.tokenizer, ids)
                    if text not in texts:
                        texts.append(text)
                results.append(texts)
            advance(batch.shape[0])
    return results


# -- the decoder --------------------------------------------------------------------------------
class _Decoder:
    """One decoding run: the LM, special ids and how to call the LM with or without a cache."""

    def __init__(self, model: Any, config: GenerationConfig) -> None:
        self.model = model
        self.lm = model.lm
        self.config = config
        self.end = int(model.end_token_id)
        self.pad = int(model.pad_token_id)
        keywords = lm_keywords(self.lm)
        self.keep_kwarg, self.cache_kwarg = keywords.keep, keywords.cache

    # -- LM calls ---------------------------------------------------------------------------
    def _call(self, **kwargs: Any) -> Any:
        if self.keep_kwarg:
            kwargs[self.keep_kwarg] = 1
        return self.lm(**kwargs)

    def start(self, prefix: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Run the prefix; the logits for the first token and the cache (None without one)."""
        out = self._call(inputs_embeds=prefix, use_cache=self.config.use_cache)
        return out.logits[:, -1], _output_cache(out) if self.config.use_cache else None

    def step(
        self, prefix: torch.Tensor, tokens: torch.Tensor, cache: Any
    ) -> tuple[torch.Tensor, Any]:
        """Logits for the next token after ``tokens`` ``[N, t]`` (of which only the last is
        new when there is a cache)."""
        if cache is not None:
            kwargs = {self.cache_kwarg: cache}
            out = self._call(input_ids=tokens[:, -1:], use_cache=True, **kwargs)
            return out.logits[:, -1], _output_cache(out)
        embeds = torch.cat([prefix, self.model.embed_tokens(tokens)], dim=1)
        out = self._call(inputs_embeds=embeds, use_cache=False)
        return out.logits[:, -1], None

    # -- greedy and sampling: independent rows ----------------------------------------------
    def greedy_pick(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(dim=-1)

    def rows(
        self, prefix: torch.Tensor, pick: Callable[[torch.Tensor], torch.Tensor]
    ) -> list[list[int]]:
        """Decode each row of ``prefix`` on its own (``pick`` chooses the next tokens); rows
        that reach the end token leave the batch."""
        n = prefix.shape[0]
        max_length = self.config.max_length
        out = torch.full((n, max_length), self.pad, dtype=torch.long, device=prefix.device)
        lengths = [max_length] * n
        active = torch.arange(n, device=prefix.device)
        active_list = list(range(n))
        logits, cache = self.start(prefix)
        tokens = torch.empty((n, 0), dtype=torch.long, device=prefix.device)
        for step in range(max_length):
            chosen = pick(logits)
            out[active, step] = chosen
            done_list = (chosen == self.end).tolist()
            for i, flag in enumerate(done_list):
                if flag:
                    lengths[active_list[i]] = step
            if step + 1 == max_length:
                break
            tokens = torch.cat([tokens, chosen[:, None]], dim=1)
            if any(done_list):
                keep = [i for i, flag in enumerate(done_list) if not flag]
                if not keep:
                    break
                index = torch.tensor(keep, device=prefix.device)
                active_list = [active_list[i] for i in keep]
                active = active[index]
                tokens = tokens[index]
                prefix = prefix[index]
                cache = _select_cache(cache, index)
            logits, cache = self.step(prefix, tokens, cache)
        table = out.tolist()
        return [table[i][: lengths[i]] for i in range(n)]

    def sample_pick(
        self, generator: torch.Generator | None
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        config = self.config

        def pick(logits: torch.Tensor) -> torch.Tensor:
            scores = logits.float() / config.temperature
            scores = filter_logits(scores, config.top_k, config.top_p)
            probs = torch.softmax(scores, dim=-1)
            return torch.multinomial(probs, 1, generator=generator).squeeze(1)

        return pick

    def sample(
        self, prefix: torch.Tensor, generator: torch.Generator | None
    ) -> list[list[list[int]]]:
        """``num_captions`` distinct samples per image; images short of distinct samples are
        sampled again, up to MAX_SAMPLE_RETRIES times."""
        wanted = self.config.num_captions
        pick = self.sample_pick(generator)
        found: list[list[list[int]]] = [[] for _ in range(prefix.shape[0])]
        todo = list(range(prefix.shape[0]))
        for _attempt in range(1 + MAX_SAMPLE_RETRIES):
            index = torch.tensor(todo, device=prefix.device)
            rows = self.rows(prefix[index].repeat_interleave(wanted, dim=0), pick)
            for position, image in enumerate(todo):
                for row in rows[position * wanted : (position + 1) * wanted]:
                    if row not in found[image] and len(found[image]) < wanted:
                        found[image].append(row)
            todo = [image for image in todo if len(found[image]) < wanted]
            if not todo:
                break
        return found

    # -- beam search ------------------------------------------------------------------------
    def beam(self, prefix: torch.Tensor) -> list[list[list[int]]]:
        """Batched beam search over images x beams.

        A beam's score is its summed log-probability; candidates are ranked by score / length
        (end token counted), as in ClipCap's ``generate_beam``. A finished beam survives as a
        single candidate with unchanged score and length. An image leaves the batch when all
        its beams have finished.
        """
        config = self.config
        width = config.beams
        images = prefix.shape[0]
        device = prefix.device
        results: list[list[list[int]]] = [[] for _ in range(images)]
        active_images = list(range(images))
        # every beam of an image starts from the same prefix: run it once per image, then give
        # each beam a copy of its image's logits and cache (not width copies of the prefix)
        logits, cache = self.start(prefix)
        expand = torch.arange(images, device=device).repeat_interleave(width)
        logits = logits.index_select(0, expand)
        cache = _reorder_cache(cache, expand)
        prefix = prefix.repeat_interleave(width, dim=0)
        vocab = logits.shape[-1]
        scores = torch.zeros(images, width, device=device)
        scores[:, 1:] = float("-inf")  # all beams start equal: expand from the first only
        lengths = torch.zeros(images, width, device=device)
        finished = torch.zeros(images, width, dtype=torch.bool, device=device)
        tokens = torch.empty((images * width, 0), dtype=torch.long, device=device)
        filler = torch.full((vocab,), float("-inf"), device=device)
        filler[self.end] = 0.0  # a finished beam's one continuation: free, ignored later
        for step in range(config.max_length):
            b = len(active_images)
            logp = torch.log_softmax(logits.float(), dim=-1).view(b, width, vocab)
            logp = torch.where(finished[..., None], filler, logp)
            new_lengths = lengths + (~finished).float()
            totals = scores[..., None] + logp
            ranked = (totals / new_lengths[..., None]).view(b, width * vocab)
            best = ranked.topk(width, dim=1).indices
            source = torch.div(best, vocab, rounding_mode="floor")
            chosen = best % vocab
            scores = totals.view(b, width * vocab).gather(1, best)
            lengths = new_lengths.gather(1, source)
            finished = finished.gather(1, source) | (chosen == self.end)
            rows = (torch.arange(b, device=device)[:, None] * width + source).view(-1)
            tokens = torch.cat([tokens[rows], chosen.view(-1, 1)], dim=1)
            if step + 1 == config.max_length:
                break
            done_images = finished.all(dim=1).tolist()
            if any(done_images):
                self._collect(results, active_images, done_images, tokens, scores, lengths)
                keep = [i for i, flag in enumerate(done_images) if not flag]
                if not keep:
                    return results
                image_index = torch.tensor(keep, device=device)
                row_index = image_index[:, None] * width + torch.arange(width, device=device)
                rows = rows.view(b, width)[image_index].view(-1)
                row_index = row_index.view(-1)
                active_images = [active_images[i] for i in keep]
                scores, lengths, finished = scores[keep], lengths[keep], finished[keep]
                tokens, prefix = tokens[row_index], prefix[row_index]
            cache = _reorder_cache(cache, rows)
            logits, cache = self.step(prefix, tokens, cache)
        self._collect(results, active_images, [True] * len(active_images), tokens, scores, lengths)
        return results

    def _collect(
        self,
        results: list[list[list[int]]],
        active_images: list[int],
        done: list[bool],
        tokens: torch.Tensor,
        scores: torch.Tensor,
        lengths: torch.Tensor,
    ) -> None:
        """Store the best ``num_captions`` distinct beams of each finished image."""
        width = self.config.beams
        normalised = (scores / lengths.clamp_min(1)).tolist()
        table = tokens.tolist()
        for i, flag in enumerate(done):
            if not flag:
                continue
            order = sorted(range(width), key=lambda k, i=i: -normalised[i][k])
            chosen: list[list[int]] = []
            for k in order:
                if normalised[i][k] == float("-inf"):
                    continue
                ids = _cut(table[i * width + k], self.end)
                if ids not in chosen:
                    chosen.append(ids)
                if len(chosen) == self.config.num_captions:
                    break
            results[active_images[i]] = chosen


# -- helpers ------------------------------------------------------------------------------------
def filter_logits(scores: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Mask (to -inf) all but the ``top_k`` best tokens and the smallest set whose probability
    reaches ``top_p`` (the token that crosses it included; at least one token is kept)."""
    if top_k > 0 and top_k < scores.shape[-1]:
        threshold = scores.topk(top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < threshold, float("-inf"))
    if top_p < 1.0:
        ordered, order = scores.sort(dim=-1, descending=True)
        probs = torch.softmax(ordered, dim=-1)
        before = probs.cumsum(dim=-1) - probs  # probability mass ranked above each token
        ordered = ordered.masked_fill(before >= top_p, float("-inf"))
        scores = torch.full_like(scores, float("-inf")).scatter(-1, order, ordered)
    return scores


def _cut(ids: list[int], end: int) -> list[int]:
    return ids[: ids.index(end)] if end in ids else ids


def _output_cache(out: Any) -> Any:
    """The KV cache an LM call returned (``cache`` or, before transformers 5.x,
    ``past_key_values``)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def _reorder_cache(cache: Any, rows: torch.Tensor) -> Any:
    """The cache with its batch rows taken from ``rows`` (beam reordering / pruning)."""
    if cache is None:
        return None
    if hasattr(cache, "reorder_cache"):  # transformers Cache objects (DynamicCache, ...)
        cache.reorder_cache(rows)
        return cache
    return tuple(  # legacy tuple-of-tuples cache
        tuple(tensor.index_select(0, rows.to(tensor.device)) for tensor in layer) for layer in cache
    )


def _select_cache(cache: Any, rows: torch.Tensor) -> Any:
    """The cache restricted to ``rows`` (sequences still being decoded)."""
    if cache is None:
        return None
    if hasattr(cache, "batch_select_indices"):
        cache.batch_select_indices(rows)
        return cache
    return _reorder_cache(cache, rows)
