"""Tiny offline language models for the model / generation tests.

A byte-level BPE tokenizer trained on synthetic captions (GPT2TokenizerFast, saved with
save_pretrained), a 2-layer GPT-2 sized to it (saved with save_pretrained and loaded back
through the pack's own loader), an English pack, and registries built without entry points.
``trained_captioner`` also fits a small model to "concept" features so that decoding gives
captions of different lengths that end with the end token.
"""

from __future__ import annotations

import atexit
import random
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import torch

from polycap.hookspecs import hookimpl
from polycap.language import LanguagePack
from polycap.util.batching import pad_right

END = "<|endoftext|>"
COLOURS = ["red", "green", "blue", "yellow"]
SHAPES = ["circle", "square", "triangle"]
CLIP_DIM = 16


@contextmanager
def torch_threads(count: int = 1) -> Iterator[None]:
    """Run with ``count`` intra-op threads (tiny models on a shared machine: 1 is fastest)."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def captions(n: int = 300, seed: int = 0) -> list[str]:
    """Synthetic captions of varying length."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        colour, shape = rng.choice(COLOURS), rng.choice(SHAPES)
        count = rng.choice(["one", "two", "three"])
        out.append(
            rng.choice(
                [
                    f"a {colour} {shape}",
                    f"{count} {colour} {shape}s on a dark background",
                    f"there is a {colour} {shape} here",
                    f"a picture of {count} {colour} {shape}s",
                ]
            )
        )
    return out


def build_tokenizer(directory: Path) -> Path:
    """Train a byte-level BPE on synthetic captions; save it as a GPT2TokenizerFast."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2TokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(captions(), vocab_size=320, min_frequency=1, special_tokens=[END])
    tokenizer = GPT2TokenizerFast(tokenizer_object=bpe, bos_token=END, eos_token=END, unk_token=END)
    tokenizer.save_pretrained(str(directory))
    return directory


def build_lm(tokenizer: Any, directory: Path, n_embd: int = 32, seed: int = 0) -> Path:
    """A random 2-layer GPT-2 sized to ``tokenizer``, saved with save_pretrained."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=64,
        n_embd=n_embd,
        n_layer=2,
        n_head=2,
        resid_pdrop=0.0,  # no dropout: fitting is deterministic whatever the RNG state
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(str(directory), safe_serialization=True)
    return directory


def english_pack(code: str = "en") -> LanguagePack:
    return LanguagePack(code=code, name="English", default_lm="gpt2")


class _Languages:
    """A toy plugin registering the given packs."""

    def __init__(self, packs: list[LanguagePack]) -> None:
        self.packs = packs

    @hookimpl
    def register_languages(self, register: Any) -> None:
        for pack in self.packs:
            register(pack.code, pack)


def make_registries(*packs: LanguagePack) -> Any:
    """Registries with the built-in mappers and ``packs`` only (no entry points)."""
    from polycap.builtin import mappers
    from polycap.plugins import PluginHost

    host = PluginHost(load_entry_points=False, builtins=False)
    host.add_plugin(mappers, "polycap.builtin.mappers")
    host.add_plugin(_Languages(list(packs)), "toy-languages")
    return host.registries


def _tempdir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="polycap-test-lm-"))
    atexit.register(shutil.rmtree, path, True)
    return path


@cache
def lm_files() -> tuple[Path, Path]:
    """(tokenizer dir, LM dir), built once per test process."""
    root = _tempdir()
    tokenizer_dir = build_tokenizer(root / "tokenizer")
    pack = english_pack()
    lm_dir = build_lm(pack.load_tokenizer(str(tokenizer_dir)), root / "lm")
    return tokenizer_dir, lm_dir


def new_captioner(
    mapper: str = "mlp",
    prefix_length: int = 4,
    train_lm: bool = False,
    mapper_options: dict[str, Any] | None = None,
    seed: int = 0,
    pack: LanguagePack | None = None,
    registries: Any = None,
) -> Any:
    """A fresh (random) captioner over the tiny LM, loaded through the pack's loaders."""
    from polycap.model.captioner import Captioner

    pack = pack or english_pack()
    registries = registries or make_registries(pack)
    tokenizer_dir, lm_dir = lm_files()
    torch.manual_seed(seed)
    return Captioner.build(
        pack=pack,
        tokenizer=pack.load_tokenizer(str(tokenizer_dir)),
        lm=pack.load_decoder(str(lm_dir)),
        encoder_info={
            "backend": "open_clip",
            "name": "tiny",
            "pretrained": None,
            "embed_dim": CLIP_DIM,
        },
        mapper=mapper,
        prefix_length=prefix_length,
        mapper_options=mapper_options,
        train_lm=train_lm,
        lm_source=str(lm_dir),
        registries=registries,
    )


def concept_data(n_concepts: int = 6, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """One random feature vector and one caption per concept (captions of varied length)."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(n_concepts, CLIP_DIM, generator=generator)
    texts = captions(n_concepts, seed=seed + 1)
    return features, texts


def collate(model: Any, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (each ending with the end token) and attention mask."""
    encoded = [model.pack.encode_caption(model.tokenizer, text) for text in texts]
    return pad_right(encoded, model.pad_token_id)


def fit(model: Any, features: torch.Tensor, texts: list[str], steps: int = 60) -> Any:
    """A few optimisation steps so the model maps each concept to its caption."""
    ids, mask = collate(model, texts)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    model.train()
    with torch_threads(1):
        for _ in range(steps):
            model(features, ids, mask).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.eval()
    return model


@cache
def trained_captioner() -> tuple[Any, torch.Tensor, list[str]]:
    """(model, concept features, their captions): an LM + MLP mapper fitted for a few steps."""
    features, texts = concept_data()
    model = fit(new_captioner(train_lm=True, seed=1), features, texts)
    return model, features, texts
