"""Shared pytest fixtures (keep small; tiny models only, never the network)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

# as ``polycap.cli.main`` does for a real process (in-process CLI tests import Hugging Face
# before main runs, so its per-file progress bars would otherwise reach stderr)
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

TINY_CLIP_NAME = "polycap-test-tiny-vit"
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


class TinyClip(NamedTuple):
    name: str  # open_clip model name, registered with open_clip.add_model_config
    weights: Path  # torch.save(state_dict) of random weights (seed 0)
    embed_dim: int


def save_tiny_clip_weights(path: Path, seed: int) -> Path:
    """Random weights of the tiny test CLIP, saved as a plain state dict."""
    import open_clip
    import torch

    torch.manual_seed(seed)
    model = open_clip.create_model(TINY_CLIP_NAME, pretrained=None)
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> TinyClip:
    """A tiny open_clip ViT (embed_dim 32, 32x32 images) registered by name, with a weights
    file, to load through ``load_encoder(tiny_clip.name, pretrained=tiny_clip.weights)``."""
    import open_clip

    directory = tmp_path_factory.mktemp("tiny_clip")
    config = directory / f"{TINY_CLIP_NAME}.json"
    config.write_text(json.dumps(TINY_CLIP_CONFIG))
    if TINY_CLIP_NAME not in open_clip.list_models():
        open_clip.add_model_config(config)
    weights = save_tiny_clip_weights(directory / "tiny_clip.pt", seed=0)
    return TinyClip(TINY_CLIP_NAME, weights, TINY_CLIP_CONFIG["embed_dim"])


@pytest.fixture(scope="module")
def trained() -> tuple:
    """(model, features, texts): the tiny captioner fitted so that decoding gives captions of
    different lengths that end with the end token (``helpers_lm.trained_captioner``)."""
    from helpers_lm import trained_captioner

    return trained_captioner()


@pytest.fixture(scope="module")
def english() -> Any:
    """The built-in English pack, from the registries."""
    from polycap.plugins import get_registries

    return get_registries().languages.get("en")


@pytest.fixture(scope="session", autouse=True)
def _feature_cache_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Never write image features to the real ~/.cache during tests."""
    previous = os.environ.get("POLYCAP_CACHE_DIR")
    os.environ["POLYCAP_CACHE_DIR"] = str(tmp_path_factory.mktemp("polycap-cache"))
    yield
    if previous is None:
        os.environ.pop("POLYCAP_CACHE_DIR", None)
    else:
        os.environ["POLYCAP_CACHE_DIR"] = previous


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny models run faster on one thread than two (thread start-up dominates their matmuls)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
