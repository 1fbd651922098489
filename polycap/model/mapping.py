"""Prefix mappers: a CLIP embedding becomes ``prefix_length`` vectors in the LM's embedding space.

The mappers of ClipCap (Mokady et al., 2021):

- ``mlp``: one hidden layer with Tanh, ``clip_dim -> hidden -> prefix_length * lm_dim``;
- ``transformer``: a linear map to ``clip_length`` vectors, followed by a Transformer encoder
  over those vectors plus ``prefix_length`` learned constants; the outputs at the constants'
  positions are the prefix;
- ``linear``: one ``Linear`` to ``prefix_length * lm_dim`` (the official ``predict.py`` uses it
  for prefixes longer than 10).

Every mapper is built as ``cls(clip_dim, lm_dim, prefix_length, **options)`` and reports
``options()`` so a checkpoint can rebuild it exactly. More mappers come from plugins through
the ``register_mappers`` hook.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from polycap.errors import BadInput


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadInput(f"mapper option {name} must be a positive integer, not {value!r}")
    return value


class MLPMapper(nn.Module):
    """ClipCap's MLP mapper: ``Linear -> Tanh -> Linear`` to ``prefix_length * lm_dim``.

    ``hidden_size`` defaults to ClipCap's ``(lm_dim * prefix_length) // 2``.
    """

    def __init__(
        self, clip_dim: int, lm_dim: int, prefix_length: int, hidden_size: int | None = None
    ) -> None:
        super().__init__()
        self.clip_dim = _positive("clip_dim", clip_dim)
        self.lm_dim = _positive("lm_dim", lm_dim)
        self.prefix_length = _positive("prefix_length", prefix_length)
        out = lm_dim * prefix_length
        self.hidden_size = _positive(
            "hidden_size", hidden_size if hidden_size is not None else max(1, out // 2)
        )
        self.net = nn.Sequential(
            nn.Linear(clip_dim, self.hidden_size), nn.Tanh(), nn.Linear(self.hidden_size, out)
        )

    def options(self) -> dict[str, Any]:
        """Keyword options that rebuild this mapper (with the same three sizes)."""
        return {"hidden_size": self.hidden_size}

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[B, clip_dim] -> [B, prefix_length, lm_dim]``."""
        return self.net(features).view(-1, self.prefix_length, self.lm_dim)


class LinearMapper(nn.Module):
    """One ``Linear`` from ``clip_dim`` to ``prefix_length * lm_dim`` (no options)."""

    def __init__(self, clip_dim: int, lm_dim: int, prefix_length: int) -> None:
        super().__init__()
        self.clip_dim = _positive("clip_dim", clip_dim)
        self.lm_dim = _positive("lm_dim", lm_dim)
        self.prefix_length = _positive("prefix_length", prefix_length)
        self.linear = nn.Linear(clip_dim, lm_dim * prefix_length)

    def options(self) -> dict[str, Any]:
        """No options beyond the three sizes."""
        return {}

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[B, clip_dim] -> [B, prefix_length, lm_dim]``."""
        return self.linear(features).view(-1, self.prefix_length, self.lm_dim)


class TransformerMapper(nn.Module):
    """ClipCap's transformer mapper.

    ``features -> Linear -> [B, clip_length, lm_dim]``, concatenated with a learned constant
    ``[prefix_length, lm_dim]``; a pre-norm Transformer encoder (``num_layers`` layers,
    ``num_heads`` heads, feed-forward ``mlp_ratio * lm_dim``) runs over both, and the outputs
    at the constant's positions are the prefix. ``clip_length`` defaults to ``prefix_length``.
    """

    def __init__(
        self,
        clip_dim: int,
        lm_dim: int,
        prefix_length: int,
        clip_length: int | None = None,
        num_layers: int = 8,
        num_heads: int = 8,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.clip_dim = _positive("clip_dim", clip_dim)
        self.lm_dim = _positive("lm_dim", lm_dim)
        self.prefix_length = _positive("prefix_length", prefix_length)
        self.clip_length = _positive(
            "clip_length", clip_length if clip_length is not None else prefix_length
        )
        self.num_layers = _positive("num_layers", num_layers)
        self.num_heads = _positive("num_heads", num_heads)
        if lm_dim % num_heads:
            raise BadInput(f"mapper option num_heads={num_heads} must divide the LM width {lm_dim}")
        if not mlp_ratio > 0 or not 0.0 <= dropout < 1.0:
            raise BadInput(f"mapper options mlp_ratio={mlp_ratio}, dropout={dropout} out of range")
        self.mlp_ratio = float(mlp_ratio)
        self.dropout = float(dropout)
        self.linear = nn.Linear(clip_dim, self.clip_length * lm_dim)
        self.prefix_const = nn.Parameter(torch.randn(prefix_length, lm_dim))
        layer = nn.TransformerEncoderLayer(
            d_model=lm_dim,
            nhead=num_heads,
            dim_feedforward=max(1, int(lm_dim * mlp_ratio)),
            dropout=dropout,
            activation="relu",
            batch_first=True,
            norm_first=True,
        )
        self.transformer = nn.TransformerEncoder(
            layer, num_layers=num_layers, enable_nested_tensor=False
        )

    def options(self) -> dict[str, Any]:
        """Keyword options that rebuild this mapper (with the same three sizes)."""
        return {
            "clip_length": self.clip_length,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
            "dropout": self.dropout,
        }

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[B, clip_dim] -> [B, prefix_length, lm_dim]``."""
        batch = features.shape[0]
        mapped = self.linear(features).view(batch, self.clip_length, self.lm_dim)
        const = self.prefix_const.to(mapped.dtype).unsqueeze(0).expand(batch, -1, -1)
        out = self.transformer(torch.cat([mapped, const], dim=1))
        return out[:, self.clip_length :]
