"""Batched caption decoding with the LM's KV cache: greedy, beam search, top-k/top-p sampling.

Every image of a batch is decoded at once. The prefix goes through the LM once; after that
each step feeds one token per sequence and reuses the cached keys/values. Sequences that end
(end token) are dropped from the batch, so the work shrinks as captions finish (transformers'
``generate`` keeps them to the end: on captions of COCO-like lengths this is what makes these
loops faster; docs/benchmarks.md). The ``use_cache=False`` path re-runs the whole sequence each
step and gives the same tokens; it exists for tests and for LMs without a cache.

The loops (:func:`decode`) talk to the decoder only through :class:`DecoderStep`
(``start(prefix)``, ``step(tokens, past)``, ``select(past, rows)``), so another runtime (an ONNX
Runtime session) reuses them unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch

from polycap.errors import BadInput
from polycap.language import cut_at_end
from polycap.model.lm_keywords import lm_keywords
from polycap.util.progress import progress_bar

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
    ``cache``: ``"dynamic"`` (the default: the KV cache grows, finished rows leave the batch)
    or ``"static"`` (fixed-shape buffers, every row keeps its slot to the end: what
    ``torch.compile``/CUDA graphs need; the GPU path); ``compile``: run the static-cache step
    through ``torch.compile(mode="reduce-overhead")`` (CUDA graphs on a GPU).
    ``repetition_penalty`` (1.0 = off; e.g. 1.3) divides the positive scores and multiplies the
    negative ones of every token the caption already holds, and ``no_repeat_ngram_size`` (0 =
    off; e.g. 3) forbids any n-gram of that size twice in one caption: transformers' own
    ``RepetitionPenaltyLogitsProcessor`` and ``NoRepeatNGramLogitsProcessor``, applied where
    ``generate`` applies them (before temperature/top-k/top-p; to log-probabilities in beam
    search), in every strategy. Only the caption's own tokens count, not the prefix or a
    retrieval prompt (as ``generate`` with ``inputs_embeds``).
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
    cache: str = "dynamic"
    compile: bool = False
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0

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
        if not self.repetition_penalty > 0.0:
            raise BadInput(
                f"repetition_penalty must be positive (1.0 = off), not {self.repetition_penalty}"
            )
        if self.no_repeat_ngram_size < 0:
            raise BadInput(
                f"no_repeat_ngram_size must be 0 (off) or positive, not {self.no_repeat_ngram_size}"
            )
        if self.cache not in ("dynamic", "static"):
            raise BadInput(f"cache must be 'dynamic' or 'static', not {self.cache!r}")
        if self.compile and self.cache != "static":
            raise BadInput("compile needs the static cache (cache='static')")
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


# -- the model call the decoding loops use ------------------------------------------------------
LogitsHook = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]
"""``hook(step, rows, scores) -> scores``: change the scores of the token chosen at ``step``
(0 = the first caption token). ``rows[i]``: which input row (image) score row ``i`` belongs to,
as rows leave the batch. Greedy and sampling pass float32 logits (before temperature and
top-k/top-p), beam search log-probabilities: where transformers' ``generate`` applies its
logits processors."""


class DecoderStep(Protocol):
    """One decoder behind the decoding loops: anything that turns prefix embeddings and tokens
    into next-token logits, keeping its own state ("past") between calls. Implemented here for
    Hugging Face causal LMs (:class:`CachedLM`, :class:`UncachedLM`); an ONNX Runtime session
    can implement it too and reuse :func:`decode`."""

    def start(self, prefix: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """``prefix`` ``[N, P, D]`` embeddings -> logits ``[N, V]`` for the first token, past."""
        ...

    def step(self, tokens: torch.Tensor, past: Any) -> tuple[torch.Tensor, Any]:
        """``tokens`` ``[N]``, the newest token of each row -> next logits ``[N, V]``, past."""
        ...

    def select(self, past: Any, rows: torch.Tensor) -> Any:
        """``past`` with its rows taken from ``rows`` (pruning finished rows; reordering and
        repeating for beams)."""
        ...


class CachedLM:
    """A Hugging Face causal LM with its KV cache: the prefix once, then one token a step."""

    def __init__(self, lm: Any) -> None:
        self.lm = lm
        self.keywords = lm_keywords(lm)

    def start(self, prefix: torch.Tensor) -> tuple[torch.Tensor, Any]:
        out = self.lm(inputs_embeds=prefix, use_cache=True, **self.keywords.keep_last(1))
        return out.logits[:, -1], _output_cache(out)

    def step(self, tokens: torch.Tensor, past: Any) -> tuple[torch.Tensor, Any]:
        out = self.lm(
            input_ids=tokens[:, None],
            use_cache=True,
            **{self.keywords.cache: past},
            **self.keywords.keep_last(1),
        )
        return out.logits[:, -1], _output_cache(out)

    def select(self, past: Any, rows: torch.Tensor) -> Any:
        return _reorder_cache(past, rows)


class UncachedLM:
    """The same LM without a cache: every step re-runs prefix + all tokens so far (for tests,
    and for LMs without a cache). Its past is ``(prefix, tokens)``."""

    def __init__(self, lm: Any) -> None:
        self.lm = lm
        self.keywords = lm_keywords(lm)

    def _logits(self, embeds: torch.Tensor) -> torch.Tensor:
        out = self.lm(inputs_embeds=embeds, use_cache=False, **self.keywords.keep_last(1))
        return out.logits[:, -1]

    def start(self, prefix: torch.Tensor) -> tuple[torch.Tensor, Any]:
        empty = torch.empty((prefix.shape[0], 0), dtype=torch.long, device=prefix.device)
        return self._logits(prefix), (prefix, empty)

    def step(self, tokens: torch.Tensor, past: Any) -> tuple[torch.Tensor, Any]:
        prefix, history = past
        history = torch.cat([history, tokens[:, None]], dim=1)
        embeds = torch.cat([prefix, self.lm.get_input_embeddings()(history)], dim=1)
        return self._logits(embeds), (prefix, history)

    def select(self, past: Any, rows: torch.Tensor) -> Any:
        prefix, history = past
        return prefix.index_select(0, rows), history.index_select(0, rows)


class StaticCachedLM:
    """The LM with transformers' ``StaticCache``: keys and values in buffers of fixed shape
    (rows x (prefix + max_length) positions), written in place, so that every step has the same
    shapes and addresses and can be compiled (``torch.compile``, CUDA graphs).

    Every row keeps its slot for the whole run: a step always runs all slots (finished rows
    ride along, their outputs ignored), and reordering beams copies keys and values between
    slots in place. Its past is ``(cache, slots, buffer)``: ``slots[i]`` is the slot of the
    loop's row ``i``."""

    def __init__(
        self, lm: Any, max_length: int, compile: bool = False, backend: str | None = None
    ) -> None:
        self.lm = lm
        self.keywords = lm_keywords(lm)
        self.max_length = max_length
        self.forward = lm.forward
        if compile:  # one compiled graph per batch size; prefill runs eagerly
            options: dict[str, Any] = {"backend": backend} if backend else {}
            if not backend:
                options["mode"] = "reduce-overhead"  # CUDA graphs on a GPU
            self.forward = torch.compile(lm.forward, dynamic=False, **options)

    def start(self, prefix: torch.Tensor) -> tuple[torch.Tensor, Any]:
        from transformers import StaticCache

        n, positions = prefix.shape[:2]
        cache = StaticCache(config=self.lm.config, max_cache_len=positions + self.max_length)
        out = self.lm(
            inputs_embeds=prefix,
            use_cache=True,
            **{self.keywords.cache: cache},
            **self.keywords.keep_last(1),
        )
        slots = torch.arange(n, device=prefix.device)
        buffer = torch.zeros(n, 1, dtype=torch.long, device=prefix.device)
        return out.logits[:, -1], (cache, slots, buffer)

    def step(self, tokens: torch.Tensor, past: Any) -> tuple[torch.Tensor, Any]:
        cache, slots, buffer = past
        buffer.index_copy_(0, slots, tokens[:, None])
        out = self.forward(
            input_ids=buffer,
            use_cache=True,
            **{self.keywords.cache: cache},
            **self.keywords.keep_last(1),
        )
        return out.logits[:, -1].index_select(0, slots), past

    def select(self, past: Any, rows: torch.Tensor) -> Any:
        cache, slots, buffer = past
        chosen = slots.index_select(0, rows)
        if rows.numel() > buffer.shape[0]:  # more rows than slots (beams of each prefix): grow
            for layer in cache.layers:
                layer.keys = layer.keys.index_select(0, chosen)
                layer.values = layer.values.index_select(0, chosen)
                layer.batch_size = rows.numel()
                torch._dynamo.mark_static_address(layer.keys)
                torch._dynamo.mark_static_address(layer.values)
            slots = torch.arange(rows.numel(), device=rows.device)
            return cache, slots, buffer.new_zeros(rows.numel(), 1)
        if rows.unique().numel() == rows.numel():
            return cache, chosen, buffer  # rows leave: their slots are simply not read again
        kept = slots[: rows.numel()]  # reordered (beams): copy into the first slots in use
        for layer in cache.layers:
            layer.keys.index_copy_(0, kept, layer.keys.index_select(0, chosen))
            layer.values.index_copy_(0, kept, layer.values.index_select(0, chosen))
        return cache, kept, buffer


def decoder_step(model: Any, config: GenerationConfig) -> DecoderStep:
    """The decoder call for ``model`` under ``config``: the model's own ``decoder_step(config)``
    when it has one (an ONNX Runtime export), else its Hugging Face LM's."""
    own = getattr(model, "decoder_step", None)
    if own is not None:
        return own(config)
    if not config.use_cache:
        return UncachedLM(model.lm)
    if config.cache == "static":
        return StaticCachedLM(model.lm, config.max_length, compile=config.compile)
    return CachedLM(model.lm)


# -- public entry points ------------------------------------------------------------------------
def generate_ids(
    model: Any,
    features: torch.Tensor,
    config: GenerationConfig | None = None,
    generator: torch.Generator | None = None,
    logits_hook: LogitsHook | None = None,
) -> list[list[list[int]]]:
    """Token ids per image, per caption (best first), without the end token.

    ``features``: ``[B, clip_dim]`` image embeddings (one image: ``[clip_dim]``).
    ``generator``: the random source for sampling (default: a new one seeded with
    ``config.seed``, or torch's global one when the seed is None). ``logits_hook``: see
    :data:`LogitsHook`.
    """
    config = config or GenerationConfig()
    config.validate()
    if features.dim() == 1:
        features = features.unsqueeze(0)
    if features.shape[0] == 0:
        return []
    with inference(model):
        prefix = model.prefix(features.to(model.device))
        if config.sample and generator is None and config.seed is not None:
            generator = torch.Generator(device=prefix.device).manual_seed(config.seed)
        return decode(
            decoder_step(model, config),
            prefix,
            config,
            end_token_id=int(model.end_token_id),
            pad_token_id=int(model.pad_token_id),
            generator=generator,
            logits_hook=logits_hook,
        )


@contextmanager
def inference(model: Any) -> Iterator[None]:
    """``model`` in eval mode under ``torch.inference_mode``; its train/eval mode is restored
    afterwards (decoding must not leave a model that is being trained in eval mode)."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def decode(
    decoder: DecoderStep,
    prefix: torch.Tensor,
    config: GenerationConfig,
    *,
    end_token_id: int,
    pad_token_id: int,
    generator: torch.Generator | None = None,
    logits_hook: LogitsHook | None = None,
) -> list[list[list[int]]]:
    """Decode ``prefix`` ``[N, P, D]`` with ``decoder``: token ids per row, per caption (best
    first), without the end token. The loop behind :func:`generate_ids`, for any
    :class:`DecoderStep`."""
    loop = _Loop(decoder, config, end_token_id, pad_token_id, logits_hook)
    if config.sample:
        return loop.sample(prefix, generator)
    if config.beams > 1:
        return loop.beam(prefix)
    return [[row] for row in loop.rows(prefix, loop.greedy_pick)]


def caption_features(
    model: Any,
    features: torch.Tensor,
    config: GenerationConfig | None = None,
    batch_size: int = 64,
    progress: bool = False,
    logits_hook: LogitsHook | None = None,
) -> list[list[str]]:
    """Captions per image (``num_captions`` each, fewer if not distinct), decoded by the pack.
    ``logits_hook`` (see :data:`LogitsHook`) runs in every batch; its rows are the batch's."""
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
            found = generate_ids(model, batch, config, generator=generator, logits_hook=logits_hook)
            for captions in found:
                results.append(distinct_texts(model, captions, config))
            advance(batch.shape[0])
    return results


def distinct_texts(model: Any, rows: list[list[int]], config: GenerationConfig) -> list[str]:
    """One image's generated ``rows`` of ids as text, repeats dropped, in order (a row of
    ``max_length`` ids ran out before its end token: it is not finished)."""
    texts: list[str] = []
    for ids in rows:
        text = model.decode_caption(ids, finished=len(ids) < config.max_length)
        if text not in texts:
            texts.append(text)
    return texts


# -- the decoding loops -------------------------------------------------------------------------
@dataclass
class _Beams:
    """The live state of a batched beam search: per active image, ``width`` beams."""

    active_images: list[int]
    image_rows: torch.Tensor
    scores: torch.Tensor
    lengths: torch.Tensor
    finished: torch.Tensor
    tokens: torch.Tensor


class _Loop:
    """One decoding run over a :class:`DecoderStep`: greedy, sampling or beam search."""

    def __init__(
        self,
        decoder: DecoderStep,
        config: GenerationConfig,
        end: int,
        pad: int,
        logits_hook: LogitsHook | None = None,
    ) -> None:
        self.decoder = decoder
        self.config = config
        self.end = end
        self.pad = pad
        self.hook = logits_hook
        self.processors = repetition_processors(config)

    def process(self, history: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """``scores`` after the repetition processors, given each row's tokens so far."""
        for processor in self.processors:
            scores = processor(history, scores)
        return scores

    # -- greedy and sampling: independent rows ----------------------------------------------
    def greedy_pick(self, logits: torch.Tensor, active: torch.Tensor, total: int) -> torch.Tensor:
        # the first maximum, as argmax; torch.max's kernel is several times faster on the CPU
        return logits.max(dim=-1).indices

    def rows(
        self,
        prefix: torch.Tensor,
        pick: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor],
    ) -> list[list[int]]:
        """Decode each row of ``prefix`` on its own (``pick(logits, active, n)`` chooses the
        next tokens of the ``active`` rows of ``n``); rows that reach the end token leave the
        batch."""
        n = prefix.shape[0]
        max_length = self.config.max_length
        device = prefix.device
        out = torch.full((n, max_length), self.pad, dtype=torch.long, device=device)
        lengths = [max_length] * n
        active = torch.arange(n, device=device)
        active_list = list(range(n))
        logits, past = self.decoder.start(prefix)
        for step in range(max_length):
            if self.processors:
                logits = self.process(out[active, :step], logits.float())
            if self.hook is not None:
                logits = self.hook(step, active, logits.float())
            chosen = pick(logits, active, n)
            out[active, step] = chosen
            done_list = (chosen == self.end).tolist()
            for i, flag in enumerate(done_list):
                if flag:
                    lengths[active_list[i]] = step
            if step + 1 == max_length:
                break
            if any(done_list):
                keep = fill_holes(done_list)
                if not keep:
                    break
                index = torch.tensor(keep, device=device)
                active_list = [active_list[i] for i in keep]
                active, chosen = active[index], chosen[index]
                past = self.decoder.select(past, index)
            logits, past = self.decoder.step(chosen, past)
        table = out.tolist()
        return [table[i][: lengths[i]] for i in range(n)]

    def sample_pick(
        self, generator: torch.Generator | None
    ) -> Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]:
        """Ancestral sampling by the exponential race: ``argmax(p / E)``, ``E ~ Exp(1)``
        drawn for all ``n`` rows every step (finished ones too), so a row's draws do not
        depend on which other rows are still running. This is how ``torch.multinomial``
        draws one sample, so transformers' ``generate`` (which keeps finished rows) samples
        the same tokens from the same seed."""
        config = self.config

        def pick(logits: torch.Tensor, active: torch.Tensor, total: int) -> torch.Tensor:
            scores = filter_logits(logits.float() / config.temperature, config.top_k, config.top_p)
            probs = torch.softmax(scores, dim=-1)
            noise = torch.empty((total, probs.shape[-1]), device=probs.device)
            noise.exponential_(1.0, generator=generator)
            return (probs / noise.index_select(0, active)).argmax(dim=-1)

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
        results: list[list[list[int]]] = [[] for _ in range(prefix.shape[0])]
        logits, past, state = self._beam_start(prefix)
        filler = torch.full((logits.shape[-1],), float("-inf"), device=prefix.device)
        filler[self.end] = 0.0  # a finished beam's one continuation: free, ignored later
        for step in range(self.config.max_length):
            rows = self._beam_advance(step, state, logits, filler)
            if step + 1 == self.config.max_length:
                break
            rows = self._beam_retire(results, state, rows)
            if rows is None:
                return results
            past = self.decoder.select(past, rows)
            logits, past = self.decoder.step(state.tokens[:, -1], past)
        everyone = [True] * len(state.active_images)
        self._collect(
            results, state.active_images, everyone, state.tokens, state.scores, state.lengths
        )
        return results

    def _beam_start(self, prefix: torch.Tensor) -> tuple[torch.Tensor, Any, _Beams]:
        """Run the prefix once per image and give each of its beams a copy of logits and past.

        Every beam of an image starts from the same prefix, so width copies of the prefix
        would only repeat work.
        """
        width = self.config.beams
        images = prefix.shape[0]
        device = prefix.device
        logits, past = self.decoder.start(prefix)
        expand = torch.arange(images, device=device).repeat_interleave(width)
        logits = logits.index_select(0, expand)
        past = self.decoder.select(past, expand)
        scores = torch.zeros(images, width, device=device)
        scores[:, 1:] = float("-inf")  # all beams start equal: expand from the first only
        state = _Beams(
            active_images=list(range(images)),
            image_rows=torch.arange(images, device=device),
            scores=scores,
            lengths=torch.zeros(images, width, device=device),
            finished=torch.zeros(images, width, dtype=torch.bool, device=device),
            tokens=torch.empty((images * width, 0), dtype=torch.long, device=device),
        )
        return logits, past, state

    def _beam_advance(
        self, step: int, state: _Beams, logits: torch.Tensor, filler: torch.Tensor
    ) -> torch.Tensor:
        """Extend every beam by one token, keeping each image's best ``width`` candidates.

        Updates ``state`` in place and returns, per new beam, the row of the beam it extends.
        """
        width = self.config.beams
        b = len(state.active_images)
        vocab = logits.shape[-1]
        logp = torch.log_softmax(logits.float(), dim=-1)
        if self.processors:
            logp = self.process(state.tokens, logp)
        if self.hook is not None:
            logp = self.hook(step, state.image_rows.repeat_interleave(width), logp)
        logp = torch.where(state.finished[..., None], filler, logp.view(b, width, vocab))
        new_lengths = state.lengths + (~state.finished).float()
        totals = state.scores[..., None] + logp
        ranked = (totals / new_lengths[..., None]).view(b, width * vocab)
        best = ranked.topk(width, dim=1).indices
        source = torch.div(best, vocab, rounding_mode="floor")
        chosen = best % vocab
        state.scores = totals.view(b, width * vocab).gather(1, best)
        state.lengths = new_lengths.gather(1, source)
        state.finished = state.finished.gather(1, source) | (chosen == self.end)
        rows = (torch.arange(b, device=logits.device)[:, None] * width + source).view(-1)
        state.tokens = torch.cat([state.tokens[rows], chosen.view(-1, 1)], dim=1)
        return rows

    def _beam_retire(
        self, results: list[list[list[int]]], state: _Beams, rows: torch.Tensor
    ) -> torch.Tensor | None:
        """Collect the images whose beams have all finished and drop them from ``state``.

        Returns the past rows the remaining beams continue from, or None when no image is left.
        """
        done_images = state.finished.all(dim=1).tolist()
        if not any(done_images):
            return rows
        self._collect(
            results, state.active_images, done_images, state.tokens, state.scores, state.lengths
        )
        keep = [i for i, flag in enumerate(done_images) if not flag]
        if not keep:
            return None
        width = self.config.beams
        device = rows.device
        image_index = torch.tensor(keep, device=device)
        row_index = image_index[:, None] * width + torch.arange(width, device=device)
        rows = rows.view(len(done_images), width)[image_index].view(-1)
        state.active_images = [state.active_images[i] for i in keep]
        state.image_rows = state.image_rows[image_index]
        state.scores = state.scores[keep]
        state.lengths = state.lengths[keep]
        state.finished = state.finished[keep]
        state.tokens = state.tokens[row_index.view(-1)]
        return rows

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
                ids = cut_at_end(table[i * width + k], self.end)
                if ids not in chosen:
                    chosen.append(ids)
                if len(chosen) == self.config.num_captions:
                    break
            results[active_images[i]] = chosen


class _Decoder(_Loop):
    """The loops over a Captioner's own LM (kept for callers of the earlier private API)."""

    def __init__(self, model: Any, config: GenerationConfig) -> None:
        super().__init__(
            decoder_step(model, config), config, int(model.end_token_id), int(model.pad_token_id)
        )


# -- helpers ------------------------------------------------------------------------------------
def fill_holes(done: list[bool]) -> list[int]:
    """The rows a batch keeps when the ``done`` ones leave, as ``select`` takes them: each row
    that stays keeps its place, unless it sits past the new end, then it moves into a place a
    finished row left. So only as many rows move as have finished (a cache compacts in place,
    :mod:`polycap.model.kv_cache`), not every row after the first that finished."""
    kept = len(done) - sum(done)
    order = list(range(kept))
    tail = (i for i in range(kept, len(done)) if not done[i])
    for i in range(kept):
        if done[i]:
            order[i] = next(tail)
    return order


def repetition_processors(config: GenerationConfig) -> list[Any]:
    """transformers' logits processors for ``config``'s ``repetition_penalty`` and
    ``no_repeat_ngram_size``, in the order ``generate`` runs them (none when both are off).
    Each is called as ``processor(history, scores)``, ``history`` ``[rows, step]`` the tokens
    each row has generated so far."""
    found: list[Any] = []
    if config.repetition_penalty != 1.0:
        from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

        found.append(RepetitionPenaltyLogitsProcessor(float(config.repetition_penalty)))
    if config.no_repeat_ngram_size > 0:
        from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor

        found.append(NoRepeatNGramLogitsProcessor(int(config.no_repeat_ngram_size)))
    return found


def filter_logits(scores: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Mask (to -inf) all but the ``top_k`` best tokens and the smallest set whose probability
    reaches ``top_p`` (the token that crosses it included; at least one token is kept).
    transformers' own top-k and top-p warpers, so sampling filters exactly as ``generate``."""
    if top_k > 0 and top_k < scores.shape[-1]:
        from transformers.generation.logits_process import TopKLogitsWarper

        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1.0:
        from transformers.generation.logits_process import TopPLogitsWarper

        scores = TopPLogitsWarper(top_p)(None, scores)
    return scores


def _output_cache(out: Any) -> Any:
    """The KV cache an LM call returned (``cache`` or, before transformers 5.x,
    ``past_key_values``)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def _reorder_cache(cache: Any, rows: torch.Tensor) -> Any:
    """The cache with its batch rows taken from ``rows`` (beam reordering / pruning; in place
    where it can be, :func:`polycap.model.kv_cache.reorder`)."""
    from polycap.model.kv_cache import reorder

    return reorder(cache, rows)
