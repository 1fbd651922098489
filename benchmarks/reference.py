"""Re-implementations of the ClipCap reference loops (rmokady/CLIP_prefix_caption).

These are the baselines the benchmark measures polycap against. They follow the reference
code's behaviour step for step, written against a polycap
:class:`~polycap.model.captioner.Captioner` (its mapper and its Hugging Face causal LM) so that
both sides run the same weights:

- :func:`greedy` is ``generate2`` (predict.py / the inference notebook): one image at a time;
  each step runs the LM over the *whole* sequence (prefix embeddings + every token so far,
  default ``forward`` call: no cache kept, logits for every position), applies the top-p
  filter on the last logits, takes the argmax, appends that token's embedding and stops at
  the stop token or after ``entry_length`` steps.
- :func:`beam` is ``generate_beam``: one image at a time, ``beam_size`` beams, no cache;
  scores are summed ``softmax().log()`` probabilities ranked by score / length (the stop token
  counted); a stopped beam can only be extended by token 0 at no cost and its length stops
  growing; the beams are returned best first, each cut to its length.
- :func:`extract_features` is ``parse_coco.py``: for every *caption* entry, read its image
  from disk, preprocess it, and run the image encoder on that one image.
- :class:`PaddedCaptions` + :func:`train_step` are ``ClipCocoDataset`` and the ``train`` loop
  of train.py: every caption padded to ``min(mean + 10 * std, max)`` of the data set's
  lengths (in practice the longest caption), a mask of ones over the prefix and the caption,
  shuffled fixed-size batches, fp32, loss = cross-entropy of the logits after the prefix.

One deliberate difference: ClipCap writes padding as token id 0 and passes
``ignore_index=0`` to the loss, which also drops every real token with id 0. Here padding is
ignored through the mask, so real tokens always count; the work done is the same, and the loss
is the one polycap computes (the equivalence tests compare them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

Hook = Callable[[int, torch.Tensor], torch.Tensor]


# -- decoding --------------------------------------------------------------------------------
@torch.no_grad()
def greedy(
    lm: Any,
    prefix_embed: torch.Tensor,
    stop_token_id: int,
    entry_length: int = 67,
    top_p: float = 0.8,
    temperature: float = 1.0,
    hook: Hook | None = None,
) -> list[int]:
    """ClipCap ``generate2`` for one image: ``prefix_embed`` ``[1, prefix_length, width]``.

    Returns the generated token ids, the stop token included when it was reached. ``hook``
    (``hook(step, logits)``, the benchmark's forced caption lengths) changes the last logits
    before the top-p filter.
    """
    embed_tokens = lm.get_input_embeddings()
    generated = prefix_embed
    tokens: torch.Tensor | None = None
    for step in range(entry_length):
        logits = lm(inputs_embeds=generated).logits
        logits = logits[:, -1, :] / (temperature if temperature > 0 else 1.0)
        if hook is not None:
            logits = hook(step, logits.float())
        ranked, ranked_ids = torch.sort(logits, descending=True)
        beyond = torch.cumsum(F.softmax(ranked, dim=-1), dim=-1) > top_p
        beyond[..., 1:] = beyond[..., :-1].clone()  # keep the token that crosses top_p
        beyond[..., 0] = False
        logits[:, ranked_ids[beyond]] = float("-inf")
        next_token = torch.argmax(logits, -1).unsqueeze(0)
        tokens = next_token if tokens is None else torch.cat((tokens, next_token), dim=1)
        generated = torch.cat((generated, embed_tokens(next_token)), dim=1)
        if next_token.item() == stop_token_id:
            break
    assert tokens is not None
    return tokens.squeeze(0).tolist()


@torch.no_grad()
def beam(
    lm: Any,
    prefix_embed: torch.Tensor,
    stop_token_id: int,
    beam_size: int = 5,
    entry_length: int = 67,
    temperature: float = 1.0,
    hook: Hook | None = None,
) -> list[list[int]]:
    """ClipCap ``generate_beam`` for one image: the beams' token ids, best first, each cut to
    its length (the stop token included when it was reached). ``hook(step, logprobs)``
    changes the log-probabilities."""
    embed_tokens = lm.get_input_embeddings()
    device = prefix_embed.device
    generated = prefix_embed
    tokens: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    seq_lengths = torch.ones(beam_size, device=device)
    is_stopped = torch.zeros(beam_size, device=device, dtype=torch.bool)
    for step in range(entry_length):
        logits = lm(inputs_embeds=generated).logits
        logits = logits[:, -1, :] / (temperature if temperature > 0 else 1.0)
        logits = logits.softmax(-1).log()
        if hook is not None:
            logits = hook(step, logits)
        if scores is None:  # first step: one sequence becomes beam_size beams
            scores, next_tokens = logits.topk(beam_size, -1)
            generated = generated.expand(beam_size, *generated.shape[1:])
            next_tokens, scores = next_tokens.permute(1, 0), scores.squeeze(0)
            tokens = next_tokens
        else:
            assert tokens is not None
            logits[is_stopped] = float("-inf")
            logits[is_stopped, 0] = 0
            scores_sum = scores[:, None] + logits
            seq_lengths[~is_stopped] += 1
            average = scores_sum / seq_lengths[:, None]
            average, next_tokens = average.view(-1).topk(beam_size, -1)
            source = next_tokens // scores_sum.shape[1]
            seq_lengths = seq_lengths[source]
            next_tokens = (next_tokens % scores_sum.shape[1]).unsqueeze(1)
            tokens = torch.cat((tokens[source], next_tokens), dim=1)
            generated = generated[source]
            scores = average * seq_lengths
            is_stopped = is_stopped[source]
        next_embed = embed_tokens(next_tokens.squeeze()).view(generated.shape[0], 1, -1)
        generated = torch.cat((generated, next_embed), dim=1)
        is_stopped = is_stopped + next_tokens.eq(stop_token_id).squeeze()
        if is_stopped.all():
            break
    assert tokens is not None and scores is not None
    scores = scores / seq_lengths
    rows = tokens.tolist()
    order = scores.argsort(descending=True).tolist()
    return [rows[k][: int(seq_lengths[k])] for k in order]


def strip_stop(ids: Sequence[int], stop_token_id: int) -> list[int]:
    """Ids up to (not including) the first stop token: how polycap returns captions."""
    ids = list(ids)
    return ids[: ids.index(stop_token_id)] if stop_token_id in ids else ids


def _image_hook(logits_hook: Any, image: int) -> Hook | None:
    """A polycap ``logits_hook(step, rows, scores)`` seen from one image's loop."""
    if logits_hook is None:
        return None

    def hook(step: int, scores: torch.Tensor) -> torch.Tensor:
        rows = torch.full((scores.shape[0],), image, dtype=torch.long, device=scores.device)
        return logits_hook(step, rows, scores)

    return hook


def caption_greedy(
    model: Any,
    features: torch.Tensor,
    entry_length: int,
    logits_hook: Any = None,
    images: Sequence[int] | None = None,
) -> list[list[int]]:
    """``generate2`` over a set of images, one image at a time (ids without the stop token).
    ``images``: the images' row numbers for ``logits_hook`` (default 0, 1, ...)."""
    out = []
    for index, row in enumerate(features):
        with torch.no_grad():
            prefix = model.prefix(row[None])
        image = images[index] if images is not None else index
        ids = greedy(
            model.lm,
            prefix,
            model.end_token_id,
            entry_length=entry_length,
            hook=_image_hook(logits_hook, image),
        )
        out.append(strip_stop(ids, model.end_token_id))
    return out


def caption_beam(
    model: Any,
    features: torch.Tensor,
    entry_length: int,
    beam_size: int = 5,
    logits_hook: Any = None,
    images: Sequence[int] | None = None,
) -> list[list[int]]:
    """``generate_beam`` over a set of images, one at a time: each image's best beam."""
    out = []
    for index, row in enumerate(features):
        with torch.no_grad():
            prefix = model.prefix(row[None])
        image = images[index] if images is not None else index
        beams = beam(
            model.lm,
            prefix,
            model.end_token_id,
            beam_size=beam_size,
            entry_length=entry_length,
            hook=_image_hook(logits_hook, image),
        )
        out.append(strip_stop(beams[0], model.end_token_id))
    return out


# -- features --------------------------------------------------------------------------------
def read_image(path: str | Path) -> Any:
    """``skimage.io.imread`` + ``PIL.Image.fromarray``, as parse_coco.py reads each image."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB"))
    return Image.fromarray(array)


@torch.no_grad()
def extract_features(
    clip_model: Any, preprocess: Any, caption_images: Sequence[Path], device: str = "cpu"
) -> torch.Tensor:
    """parse_coco.py: one forward pass per caption entry, one image each.

    ``caption_images``: the image path of every caption (an image with five captions appears
    five times). Returns ``[len(caption_images), D]`` float32 features, on the CPU.
    """
    rows = []
    for path in caption_images:
        pixels = preprocess(read_image(path)).unsqueeze(0).to(device)
        rows.append(clip_model.encode_image(pixels).float().cpu())
    return torch.cat(rows, dim=0)


# -- training --------------------------------------------------------------------------------
class PaddedCaptions(torch.utils.data.Dataset):
    """ClipCocoDataset: each caption padded to the data set's ``max_seq_len``.

    ``token_ids``: caption ids; ``feature_rows``: each caption's row in ``features``.
    Items are ``(tokens, mask, prefix)``: tokens padded with 0, a float mask over
    ``prefix_length + max_seq_len`` positions, the image's feature row.
    """

    def __init__(
        self,
        token_ids: Sequence[Sequence[int]],
        feature_rows: Sequence[int],
        features: torch.Tensor,
        prefix_length: int,
    ) -> None:
        self.captions_tokens = [torch.tensor(ids, dtype=torch.int64) for ids in token_ids]
        self.feature_rows = list(feature_rows)
        self.features = features
        self.prefix_length = prefix_length
        lengths = torch.tensor([len(ids) for ids in token_ids]).float()
        self.max_seq_len = min(int(lengths.mean() + lengths.std() * 10), int(lengths.max()))

    def __len__(self) -> int:
        return len(self.captions_tokens)

    def pad_tokens(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.captions_tokens[item]
        padding = self.max_seq_len - tokens.shape[0]
        if padding > 0:
            tokens = torch.cat((tokens, torch.zeros(padding, dtype=torch.int64) - 1))
        elif padding < 0:
            tokens = tokens[: self.max_seq_len]
        mask = tokens.ge(0)
        tokens = tokens.clone()
        tokens[~mask] = 0
        mask = torch.cat((torch.ones(self.prefix_length), mask.float()), dim=0)
        return tokens, mask

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        tokens, mask = self.pad_tokens(item)
        return tokens, mask, self.features[self.feature_rows[item]]


def batches(dataset: PaddedCaptions, batch_size: int, seed: int) -> Iterator[Any]:
    """``DataLoader(dataset, batch_size, shuffle=True, drop_last=True)`` with a seeded order."""
    generator = torch.Generator().manual_seed(seed)
    yield from torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, drop_last=True, generator=generator
    )


def caption_loss(
    model: Any, tokens: torch.Tensor, mask: torch.Tensor, features: torch.Tensor
) -> torch.Tensor:
    """ClipCaptionModel.forward + the loss of train.py on one padded batch."""
    prefix_length = model.prefix_length
    prefix = model.prefix(features)
    embedding_text = model.lm.get_input_embeddings()(tokens)
    embedding_cat = torch.cat((prefix, embedding_text), dim=1)
    outputs = model.lm(inputs_embeds=embedding_cat, attention_mask=mask)
    logits = outputs.logits[:, prefix_length - 1 : -1]
    labels = tokens.masked_fill(mask[:, prefix_length:] == 0, -100)
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.flatten(), ignore_index=-100
    )


def train_step(model: Any, batch: Any, optimizer: Any, scheduler: Any) -> float:
    """One iteration of train.py's loop (zero_grad, forward, loss, backward, step)."""
    tokens, mask, features = (tensor.to(model.device) for tensor in batch)
    model.zero_grad()
    loss = caption_loss(model, tokens, mask, features)
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()
    return float(loss.detach())
