"""An untrained but complete captioner on the demo's tiny local models (no network)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TINY_CLIP_DIM = 64  # polycap.offline.tiny.build_clip's embedding width


def tiny_captioner(
    pack: Any, captions: list[str], root: Path, seed: int = 0, **options: Any
) -> Any:
    """A ``Captioner`` of ``pack`` (prefix length 2; more ``Captioner.build`` ``options``) over
    the tiny GPT-2 and CLIP built for ``captions`` under ``root / "models"``."""
    from polycap.demo import build_tiny_models
    from polycap.model import Captioner

    models = build_tiny_models(pack, captions, root / "models", seed=seed)
    return Captioner.build(
        pack=pack,
        tokenizer=pack.load_tokenizer(models["lm"]),
        lm=pack.load_decoder(models["lm"]),
        encoder_info={
            "backend": "open_clip",
            "name": models["encoder"],
            "pretrained": models["pretrained"],
            "embed_dim": TINY_CLIP_DIM,
        },
        prefix_length=2,
        **options,
    )
