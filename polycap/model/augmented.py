"""Retrieval-augmented captioning (SmallCap-style): the captions of each image's nearest bank
images go into a prompt between the CLIP prefix and the caption, and the LM continues with the
caption. The LM input is ``[mapper prefix][prompt tokens][caption tokens]``; the loss covers the
caption tokens only.

Retrieval is the bank's own image kNN (:func:`polycap.retrieval.search.retrieve`, numpy or
FAISS as the bank was built); while training, an image's own bank entry and every caption equal
to one of its own references are removed from what it retrieves (no leakage).

Prompt lengths differ per image. In a batch each row is left-padded (the padding goes in front
of the prefix), padding masked out of attention, and position ids counted over real tokens
only, so each row sees exactly what it would see alone: ``[pad..][prefix][prompt][caption]``.
:class:`PaddedCachedLM` carries that mask and the positions through the KV-cache decoding loops
of :mod:`polycap.model.generation` (greedy, beam, sampling), unchanged.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from polycap.errors import BadInput
from polycap.model.lm_keywords import lm_keywords
from polycap.retrieval.bank import Bank
from polycap.retrieval.search import DEFAULT_CHUNK, retrieve

if TYPE_CHECKING:
    import torch

    from polycap.language import LanguagePack
    from polycap.model.generation import GenerationConfig
    from polycap.retrieval.bank import Bank

DEFAULT_K = 4
DEFAULT_MAX_PROMPT_TOKENS = 64
EXTRA_NEIGHBOURS = 4  # images searched beyond k, so that k remain after excluding an image's own


@dataclass
class RetrievalSetup:
    """What a retrieval-augmented checkpoint records (polycap.json ``retrieval``): the bank it
    was trained with (absolute path + identity), captions per prompt ``k``, the pack's template
    and separator at training time, and the prompt's token budget."""

    bank: str
    identity: dict[str, Any]
    k: int = DEFAULT_K
    template: str = ""
    separator: str = "; "
    max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RetrievalSetup:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    @classmethod
    def for_bank(cls, bank: Bank, pack: LanguagePack, k: int = DEFAULT_K) -> RetrievalSetup:
        if k < 1:
            raise BadInput(f"--retrieval-k must be at least 1, not {k}")
        return cls(
            str(Path(bank.path).resolve()),
            bank_identity(bank),
            k,
            pack.retrieval_prompt,
            pack.caption_separator,
        )


def bank_identity(bank: Bank) -> dict[str, Any]:
    """What tells one bank from another: sizes, creation time and a hash of its meta.json."""
    digest = hashlib.sha256((Path(bank.path) / "meta.json").read_bytes()).hexdigest()[:16]
    meta = bank.meta
    return {
        "captions": int(meta["captions"]),
        "images": int(meta["images"]),
        "created": meta.get("created"),
        "meta_sha256": digest,
    }


def retrieval_setup(model: Any) -> RetrievalSetup | None:
    """The model's recorded retrieval setup, or None for a plain captioner."""
    record = getattr(model, "config", {}).get("retrieval")
    return RetrievalSetup.from_json(record) if record else None


def open_bank(model: Any, bank: str | Path | None = None) -> Bank:
    """``bank`` (another one: domain transfer) or the bank the model recorded, opened and
    checked against the model's language and image encoder."""

    setup = retrieval_setup(model)
    if setup is None:
        raise BadInput("the model is not retrieval-augmented (trained without --retrieval-bank)")
    if bank is None:
        recorded = recorded_bank(model, setup)
        if not recorded.exists():
            raise BadInput(
                f"{setup.bank}: the bank the model was trained with is gone; pass --bank"
            )
        opened = Bank.open(recorded)
        if bank_identity(opened) != setup.identity:
            raise BadInput(
                f"{setup.bank}: not the bank the model was trained with (it was rebuilt); "
                "pass --bank to use it anyway"
            )
    else:
        opened = Bank.open(bank)
    return check_bank(model, opened)


def recorded_bank(model: Any, setup: RetrievalSetup) -> Path:
    """The recorded bank's folder: an absolute path as it is; a relative one (a bank bundled
    in an exported model) inside the model's folder, never outside it."""
    import os

    path = Path(setup.bank)
    directory = getattr(model, "directory", None)
    if path.is_absolute() or directory is None:
        return path
    real_root = os.path.realpath(directory)
    if os.path.commonpath([real_root, os.path.realpath(Path(directory) / path)]) != real_root:
        raise BadInput(f"{directory}: its bank {setup.bank!r} lies outside the model's folder")
    return Path(directory) / path


def check_bank(model: Any, opened: Bank) -> Bank:
    """``opened`` if its captions are in the model's language and its image embeddings have
    the size of the model's encoder; else BadInput naming the bank."""
    language = model.config["language"]
    if opened.language != language:
        raise BadInput(f"{opened.path}: bank is in {opened.language!r}, the model in {language!r}")
    recorded = model.config["encoder"]
    if int(opened.meta["embed_dim"]) != int(recorded["embed_dim"]):
        raise BadInput(
            f"{opened.path}: bank embeddings have {opened.meta['embed_dim']} dimensions, "
            f"the model's encoder {recorded['embed_dim']}"
        )
    return opened


# -- retrieval ---------------------------------------------------------------------------------


@dataclass
class Exclusions:
    """Per query row: the bank image to skip (its own entry) and captions it must not see
    (its references, normalised)."""

    images: list[str | None]
    captions: list[set[str]] = field(default_factory=list)


def _same_file(name: str) -> str:
    return os.path.realpath(name)


def neighbour_captions(
    bank: Bank,
    features: torch.Tensor,
    k: int,
    exclude: Exclusions | None = None,
    chunk_size: int | None = None,
) -> list[list[str]]:
    """The ``k`` captions of each row's nearest bank images (image kNN, nearest first), minus
    each row's own image and references when ``exclude`` is given."""

    extra = EXTRA_NEIGHBOURS if exclude is not None else 0
    if exclude is not None:
        extra += max((len(c) for c in exclude.captions), default=0)
    found = retrieve(
        bank,
        features,
        mode="image",
        k=k + extra * 4,
        neighbours=k + extra,
        chunk_size=chunk_size or DEFAULT_CHUNK,
    )
    results: list[list[str]] = []
    for row, candidates in enumerate(found):
        if exclude is not None:
            own = exclude.images[row]
            own = _same_file(own) if own else None
            banned = exclude.captions[row] if exclude.captions else set()
            candidates = [
                c
                for c in candidates
                if c.caption not in banned and (own is None or _same_file(c.image or "") != own)
            ]
        results.append([c.caption for c in candidates[:k]])
    return results


def prompt_token_ids(
    pack: LanguagePack, tokenizer: Any, captions: Sequence[str], setup: RetrievalSetup
) -> list[int]:
    """Token ids of the prompt around ``captions`` (the recorded template): the nearest captions
    first, dropping the farthest until the prompt fits ``max_prompt_tokens``."""
    template = setup.template or pack.retrieval_prompt
    chosen = list(captions)
    while True:
        joined = setup.separator.join(chosen)
        text = pack.normalize(template.replace("{captions}", joined))
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= setup.max_prompt_tokens or not chosen:
            return list(ids[: setup.max_prompt_tokens])
        chosen.pop()


# -- the LM input ------------------------------------------------------------------------------


def left_padded(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) ``[B, L]``, each row right-aligned (padding on the left, mask 0 there)."""
    import torch

    longest = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), longest), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, longest - len(row) :] = torch.tensor(list(row), dtype=torch.long)
            mask[i, longest - len(row) :] = 1
    return ids, mask


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids counted over real tokens only (padding gets the position before it)."""
    return (mask.long().cumsum(dim=-1) - 1).clamp_min(0)


def with_prompt(
    model: Any, prefix: torch.Tensor, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[padding][prefix][prompt]`` embeddings per row and their attention mask, from a
    left-padded prompt batch: each row's padding moves in front of its prefix, so every row's
    last position is a real token (the one the first caption token is predicted from)."""
    import torch

    prompt_ids = prompt_ids.to(prefix.device)
    prompt_mask = prompt_mask.to(prefix.device).long()
    rows, width = prefix.shape[:2]
    embeds = torch.cat([prefix, model.embed_tokens(prompt_ids).to(prefix.dtype)], dim=1)
    pads = (prompt_mask == 0).sum(dim=1, keepdim=True)  # [B, 1]
    slot = torch.arange(embeds.shape[1], device=prefix.device).expand(rows, -1)
    # position j takes: a pad (prompt slot j) for j < pads, then the prefix, then the prompt
    index = torch.where(
        slot < pads, width + slot, torch.where(slot < pads + width, slot - pads, slot)
    )
    embeds = embeds.gather(1, index[..., None].expand(-1, -1, embeds.shape[-1]))
    mask = (slot >= pads).long()
    return embeds, mask


class PaddedCachedLM:
    """A :class:`~polycap.model.generation.DecoderStep` over rows whose context has padding: the
    attention mask and each row's next position travel in the past with the KV cache (and are
    pruned / reordered with it). ``use_cache=False`` re-runs the whole sequence every step (the
    reference the cached path is tested against)."""

    def __init__(self, lm: Any, mask: torch.Tensor | None, use_cache: bool = True) -> None:

        self.lm = lm
        self.keywords = lm_keywords(lm)
        self.mask = mask
        self.use_cache = use_cache

    def start(self, prefix: torch.Tensor) -> tuple[torch.Tensor, Any]:
        import torch

        if self.mask is None:  # no padding (rows of one length)
            mask = torch.ones(prefix.shape[:2], dtype=torch.long, device=prefix.device)
        else:
            mask = self.mask.to(prefix.device)
        out = self.lm(
            inputs_embeds=prefix,
            attention_mask=mask,
            position_ids=positions(mask),
            use_cache=self.use_cache,
            **self.keywords.keep_last(1),
        )
        cache = _output_cache(out) if self.use_cache else prefix
        return out.logits[:, -1], (cache, mask)

    def step(self, tokens: torch.Tensor, past: Any) -> tuple[torch.Tensor, Any]:
        import torch

        cache, mask = past
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        if not self.use_cache:
            embeds = torch.cat([cache, self.lm.get_input_embeddings()(tokens[:, None])], dim=1)
            out = self.lm(
                inputs_embeds=embeds,
                attention_mask=mask,
                position_ids=positions(mask),
                use_cache=False,
                **self.keywords.keep_last(1),
            )
            return out.logits[:, -1], (embeds, mask)
        out = self.lm(
            input_ids=tokens[:, None],
            attention_mask=mask,
            position_ids=positions(mask)[:, -1:],
            use_cache=True,
            **{self.keywords.cache: cache},
            **self.keywords.keep_last(1),
        )
        return out.logits[:, -1], (_output_cache(out), mask)

    def select(self, past: Any, rows: torch.Tensor) -> Any:
        from polycap.model.generation import _reorder_cache

        cache, mask = past
        rows = rows.to(mask.device)
        cache = _reorder_cache(cache, rows) if self.use_cache else cache.index_select(0, rows)
        return cache, mask.index_select(0, rows)


def _output_cache(out: Any) -> Any:
    from polycap.model.generation import _output_cache as cache_of

    return cache_of(out)


# -- decoding ----------------------------------------------------------------------------------


def generate_augmented_ids(
    model: Any,
    features: torch.Tensor,
    prompts: Sequence[Sequence[int]],
    config: GenerationConfig,
    generator: torch.Generator | None = None,
) -> list[list[list[int]]]:
    """Token ids per image, per caption, for ``features`` ``[B, D]`` with their prompt ids
    (one list per image), decoded in one batch with the KV cache."""
    import torch

    from polycap.model.generation import decode, inference

    config.validate()
    if config.cache != "dynamic":
        raise BadInput("retrieval-augmented decoding uses the dynamic KV cache (cache='dynamic')")
    if features.shape[0] == 0:
        return []
    with inference(model):
        prefix = model.prefix(features.to(model.device))
        ids, mask = left_padded(prompts, int(model.pad_token_id))
        embeds, full_mask = with_prompt(model, prefix, ids, mask)
        width = prefix.shape[1]
        ends = {"end_token_id": int(model.end_token_id)}
        ends["pad_token_id"] = int(model.pad_token_id)
        if not config.sample:
            step = PaddedCachedLM(model.lm, full_mask, use_cache=config.use_cache)
            return decode(step, embeds, config, **ends)
        if generator is None and config.seed is not None:
            generator = torch.Generator(device=prefix.device).manual_seed(config.seed)
        # sampling repeats and re-draws rows inside the loop: decode rows of one prompt
        # length together, without padding
        results: list[list[list[int]]] = [[] for _ in prompts]
        for length in sorted({len(p) for p in prompts}):
            rows = [i for i, p in enumerate(prompts) if len(p) == length]
            index = torch.tensor(rows, device=prefix.device)
            kept = embeds.index_select(0, index)[:, embeds.shape[1] - width - length :]
            step = PaddedCachedLM(model.lm, None, use_cache=config.use_cache)
            found = decode(step, kept, config, generator=generator, **ends)
            for row, ids in zip(rows, found, strict=True):
                results[row] = ids
        return results


@dataclass
class AugmentedCaptions:
    """Captions per image and the retrieved captions each prompt was built from."""

    captions: list[list[str]]
    retrieved: list[list[str]]


def caption_augmented(
    model: Any,
    features: torch.Tensor,
    bank: Bank,
    config: GenerationConfig | None = None,
    batch_size: int = 64,
    k: int | None = None,
) -> AugmentedCaptions:
    """Retrieve for each image from ``bank``, build its prompt and decode, in batches."""
    from polycap.model.generation import GenerationConfig, distinct_texts

    config = config or GenerationConfig()
    setup = retrieval_setup(model)
    if setup is None:
        raise BadInput("the model is not retrieval-augmented (trained without --retrieval-bank)")
    if features.dim() == 1:
        features = features.unsqueeze(0)
    captions: list[list[str]] = []
    retrieved = neighbour_captions(bank, features, k or setup.k)
    for start in range(0, features.shape[0], batch_size):
        batch = features[start : start + batch_size]
        prompts = [
            prompt_token_ids(model.pack, model.tokenizer, texts, setup)
            for texts in retrieved[start : start + batch_size]
        ]
        for rows in generate_augmented_ids(model, batch, prompts, config):
            captions.append(distinct_texts(model, rows, config))
    return AugmentedCaptions(captions, retrieved)


# -- training ----------------------------------------------------------------------------------


def training_neighbours(
    bank: Bank,
    features: Any,
    own_captions: dict[str, list[str]],
    pack: LanguagePack,
    k: int,
    block: int = 4096,
) -> list[list[str]]:
    """The retrieved captions for every row of a feature store (``features.paths()`` order),
    without the row's own bank image and without any caption equal to one of its references
    (``own_captions``: resolved image path -> its captions)."""
    paths = [str(p) for p in features.paths()]
    found: list[list[str]] = []
    for start, rows in zip(range(0, len(paths), block), features.blocks(size=block), strict=False):
        names = paths[start : start + len(rows)]
        exclude = Exclusions(
            images=names,
            captions=[
                {pack.normalize(t) for t in own_captions.get(_same_file(n), [])} for n in names
            ],
        )
        found += neighbour_captions(bank, rows, k, exclude)
    return found


def training_prompts(
    bank: Bank,
    features: Any,
    own_captions: dict[str, list[str]],
    pack: LanguagePack,
    tokenizer: Any,
    setup: RetrievalSetup,
) -> list[list[int]]:
    """Prompt ids for every row of a feature store, from :func:`training_neighbours`."""
    return [
        prompt_token_ids(pack, tokenizer, texts, setup)
        for texts in training_neighbours(bank, features, own_captions, pack, setup.k)
    ]
