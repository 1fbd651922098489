"""Tiny local set-ups (no network): an untrained but complete captioner on the demo's tiny
models; a synthetic English split with the tiny models built for its training captions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TINY_CLIP_DIM = 64  # polycap.offline.tiny.build_clip's embedding width


def tiny_captioner(
    pack: Any, captions: list[str], root: Path, seed: int = 0, **options: Any
) -> Any:
    """A ``Captioner`` of ``pack`` (prefix length 2; more ``Captioner.build`` ``options``) over
    the tiny GPT-2 and CLIP built for ``captions`` under ``root / "models"``."""
    from polycap.demo.runner import build_tiny_models
    from polycap.model.captioner import Captioner

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


def training_setup(root: Path, images: int, seed: int) -> dict[str, str]:
    """A synthetic English split of ``images`` images (``seed``) under ``root / "data"`` and the
    tiny models for its training captions under ``root``: ``data``, ``lm``, ``encoder``,
    ``pretrained`` (as ``polycap train`` options take them)."""
    import json

    from polycap.builtin.english import ENGLISH
    from polycap.demo.runner import build_tiny_models
    from polycap.offline.synthetic import make_synthetic_set

    split = make_synthetic_set(ENGLISH, root / "data", images, seed=seed)
    captions = [r["caption"] for r in json.loads(split.train_file.read_text())]
    return {"data": str(split.train_file), **build_tiny_models(ENGLISH, captions, root, seed=0)}
