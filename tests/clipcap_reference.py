"""The official ClipCap modules and decoders, re-stated for the import tests.

Written from reading rmokady/CLIP_prefix_caption (train.py, predict.py): the same module
layout (so ``state_dict()`` has the official key names), the same forward functions, and
``generate2`` / ``generate_beam`` step for step: no KV cache, the whole sequence re-run from
``inputs_embeds`` every step, the stop token kept in the output.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    """``model``: Linear, Tanh, Linear (``sizes`` = (in, hidden, out))."""

    def __init__(self, sizes: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(len(sizes) - 1):
            layers.append(nn.Linear(sizes[i], sizes[i + 1]))
            if i < len(sizes) - 2:
                layers.append(nn.Tanh())
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class MlpTransformer(nn.Module):
    def __init__(self, in_dim: int, h_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, h_dim)
        self.fc2 = nn.Linear(h_dim, in_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))


class MultiHeadAttention(nn.Module):
    """Queries from one Linear, keys and values from one Linear of twice the width."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.to_queries = nn.Linear(dim, dim, bias=False)
        self.to_keys_values = nn.Linear(dim, dim * 2, bias=False)
        self.project = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        heads = self.num_heads
        queries = self.to_queries(x).reshape(b, n, heads, c // heads)
        keys_values = self.to_keys_values(x).reshape(b, n, 2, heads, c // heads)
        keys, values = keys_values[:, :, 0], keys_values[:, :, 1]
        attention = torch.einsum("bnhd,bmhd->bnmh", queries, keys) * self.scale
        attention = attention.softmax(dim=2)
        out = torch.einsum("bnmh,bmhd->bnhd", attention, values).reshape(b, n, c)
        return self.project(out)


class TransformerLayer(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MlpTransformer(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    def __init__(self, dim: int, num_heads: int, num_layers: int, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerLayer(dim, num_heads, mlp_ratio) for _ in range(num_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class TransformerMapper(nn.Module):
    def __init__(
        self, dim_clip: int, dim_embedding: int, prefix_length: int, clip_length: int, layers: int
    ) -> None:
        super().__init__()
        self.clip_length = clip_length
        self.transformer = Transformer(dim_embedding, 8, layers)
        self.linear = nn.Linear(dim_clip, clip_length * dim_embedding)
        self.prefix_const = nn.Parameter(torch.randn(prefix_length, dim_embedding))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x).view(x.shape[0], self.clip_length, -1)
        prefix = self.prefix_const.unsqueeze(0).expand(x.shape[0], *self.prefix_const.shape)
        return self.transformer(torch.cat((x, prefix), dim=1))[:, self.clip_length :]


class ClipCaptionModel(nn.Module):
    """``clip_project`` (mlp / transformer / linear) in front of ``gpt``."""

    def __init__(self, gpt: Any, prefix_length: int, prefix_size: int, kind: str) -> None:
        super().__init__()
        self.prefix_length = prefix_length
        self.gpt = gpt
        width = gpt.transformer.wte.weight.shape[1]
        self.gpt_embedding_size = width
        if kind == "mlp":
            sizes = (prefix_size, (width * prefix_length) // 2, width * prefix_length)
            self.clip_project: nn.Module = MLP(sizes)
        elif kind == "linear":
            self.clip_project = nn.Linear(prefix_size, width * prefix_length)
        else:
            self.clip_project = TransformerMapper(prefix_size, width, prefix_length, 3, 2)

    def embed(self, prefix: torch.Tensor) -> torch.Tensor:
        return self.clip_project(prefix).reshape(-1, self.prefix_length, self.gpt_embedding_size)

    def forward(self, tokens: torch.Tensor, prefix: torch.Tensor) -> Any:
        embedding_cat = torch.cat((self.embed(prefix), self.gpt.transformer.wte(tokens)), dim=1)
        return self.gpt(inputs_embeds=embedding_cat)


def generate2(
    model: ClipCaptionModel, stop_index: int, embed: torch.Tensor, entry_length: int
) -> list[int]:
    """Official greedy decoding (top-p filtering, then argmax), stop token included."""
    tokens = None
    generated = embed
    with torch.no_grad():
        for _ in range(entry_length):
            logits = model.gpt(inputs_embeds=generated).logits[:, -1, :]
            sorted_logits, sorted_indices = torch.sort(logits, descending=True)
            cumulative = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
            remove = cumulative > 0.8
            remove[..., 1:] = remove[..., :-1].clone()
            remove[..., 0] = 0
            logits[:, sorted_indices[remove]] = -float("inf")
            next_token = torch.argmax(logits, -1).unsqueeze(0)
            next_embed = model.gpt.transformer.wte(next_token)
            tokens = next_token if tokens is None else torch.cat((tokens, next_token), dim=1)
            generated = torch.cat((generated, next_embed), dim=1)
            if stop_index == next_token.item():
                break
    return tokens.squeeze(0).tolist()


def generate_beam(
    model: ClipCaptionModel,
    stop_index: int,
    embed: torch.Tensor,
    entry_length: int,
    beam_size: int = 5,
) -> list[list[int]]:
    """Official beam search: every beam's tokens (stop token included), best first."""
    tokens = None
    scores = None
    seq_lengths = torch.ones(beam_size)
    is_stopped = torch.zeros(beam_size, dtype=torch.bool)
    generated = embed
    with torch.no_grad():
        for _ in range(entry_length):
            logits = model.gpt(inputs_embeds=generated).logits[:, -1, :]
            logits = logits.softmax(-1).log()
            if scores is None:
                scores, next_tokens = logits.topk(beam_size, -1)
                generated = generated.expand(beam_size, *generated.shape[1:])
                next_tokens, scores = next_tokens.permute(1, 0), scores.squeeze(0)
                tokens = next_tokens
            else:
                logits[is_stopped] = -float("inf")
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
            next_embed = model.gpt.transformer.wte(next_tokens.squeeze()).view(
                generated.shape[0], 1, -1
            )
            generated = torch.cat((generated, next_embed), dim=1)
            is_stopped = is_stopped + next_tokens.eq(stop_index).squeeze()
            if is_stopped.all():
                break
    scores = scores / seq_lengths
    rows = [row[: int(length)] for row, length in zip(tokens.tolist(), seq_lengths.tolist())]
    return [rows[i] for i in scores.argsort(descending=True).tolist()]


def fit(
    model: ClipCaptionModel, features: torch.Tensor, captions: list[list[int]], steps: int
) -> None:
    """The official objective (cross-entropy on caption tokens after the prefix), a few steps."""
    width = max(len(ids) for ids in captions)
    tokens = torch.zeros(len(captions), width, dtype=torch.long)
    for row, ids in enumerate(captions):
        tokens[row, : len(ids)] = torch.tensor(ids)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-2)
    model.train()
    for _ in range(steps):
        logits = model(tokens, features).logits[:, model.prefix_length - 1 : -1]
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), tokens.flatten(), ignore_index=0
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
