"""What the benchmarks run on: models built from configs with random weights, and inputs.

- the decoder: a GPT-2 of the chosen size (vocabulary 50257, like ``gpt2``), built from a
  ``GPT2Config`` and filled with GPT-2's initialisation (normal(0, 0.02), residual projections
  scaled by ``1/sqrt(2 * n_layer)``) — random weights, the shapes and costs of the real model;
- the captioner: polycap's :class:`~polycap.model.captioner.Captioner` (English pack, a small
byte-level
  BPE tokenizer built on the spot, ClipCap's MLP mapper, prefix length 10) around that decoder;
- the image encoder: open_clip ``ViT-B-32`` with ``pretrained=None`` (random weights);
- inputs: random CLIP features, JPEG images of COCO size, captions whose token lengths have a
  long tail (the longest about 3x the median).

Fixed caption length: with random weights a decoder may emit the end token at once or never.
:func:`make_end_unreachable` zeroes the end token's row of the (tied) output embedding, so its
logit is exactly 0 while thousands of other tokens score above 0: neither greedy nor beam search
(in either implementation) can pick it, and every caption runs to the token cap.
"""

from __future__ import annotations

import math
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

VOCAB_SIZE = 50257
PREFIX_LENGTH = 10
DECODER_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"n_layer": 2, "n_embd": 128, "n_head": 2},
    "small": {"n_layer": 12, "n_embd": 768, "n_head": 12},  # GPT-2 small (124M)
    "medium": {"n_layer": 24, "n_embd": 1024, "n_head": 16},  # GPT-2 medium (355M)
}
ENCODER = "ViT-B-32"
MICRO_CLIP_NAME = "polycap-bench-micro-vit"
# the memory benchmark's encoder: small enough that reading, decoding and caching dominate
MICRO_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 16, "width": 64, "head_width": 32, "layers": 1},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@dataclass
class Models:
    """The captioner (with its decoder) and the image encoder a benchmark run uses."""

    captioner: Any
    encoder: Any
    decoder_size: str
    workdir: Path

    @property
    def lm_parameters(self) -> int:
        return sum(p.numel() for p in self.captioner.lm.parameters())


def build_decoder(size: str, seed: int = 0) -> Any:
    """A GPT-2 of ``size`` (see :data:`DECODER_SIZES`) with GPT-2-style random weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    shape = DECODER_SIZES[size]
    config = GPT2Config(vocab_size=VOCAB_SIZE, n_positions=1024, **shape)
    with torch.device("meta"):
        lm = GPT2LMHeadModel(config)
    lm = lm.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    residual_std = 0.02 / math.sqrt(2 * config.n_layer)
    with torch.no_grad():
        for name, parameter in lm.named_parameters():
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                parameter.fill_(1.0)
            elif name.endswith("bias"):
                parameter.zero_()
            else:
                std = residual_std if name.endswith("c_proj.weight") else 0.02
                parameter.normal_(0.0, std, generator=generator)
        for name, buffer in lm.named_buffers():  # attention-mask buffers of transformers 4.x
            if buffer.dtype == torch.bool:
                side = buffer.shape[-1]
                buffer.copy_(torch.tril(torch.ones(side, side, dtype=torch.bool)).view_as(buffer))
            elif name.endswith("masked_bias"):
                buffer.fill_(-1e4)
    lm.tie_weights()
    return lm.eval()


def make_end_unreachable(lm: Any, end_token_id: int) -> None:
    """Zero the end token's output-embedding row: its logit is 0, below thousands of others."""
    with torch.no_grad():
        lm.get_output_embeddings().weight[end_token_id] = 0.0


def build_captioner(size: str, clip_dim: int, workdir: Path, seed: int = 0) -> Any:
    """polycap's Captioner: English pack, a BPE tokenizer, ClipCap's MLP mapper, a GPT-2."""
    from polycap.model.captioner import Captioner
    from polycap.offline import tiny
    from polycap.plugins import get_registries

    registries = get_registries()
    pack = registries.languages.get("en")
    texts = [
        pack.demo.describe(c, s, n, random.Random(i))
        for i, (c, s, n) in enumerate(
            (c, s, n)
            for c in ("red", "green", "blue", "yellow")
            for s in ("circle", "square", "triangle")
            for n in (1, 2, 3)
        )
    ] * 4
    tokenizer_dir = tiny.build_tokenizer("bpe", texts, workdir / "tokenizer")
    tokenizer = pack.load_tokenizer(str(tokenizer_dir))
    lm = build_decoder(size, seed=seed)
    torch.manual_seed(seed)
    model = Captioner.build(
        pack=pack,
        tokenizer=tokenizer,
        lm=lm,
        encoder_info={
            "backend": "open_clip",
            "name": ENCODER,
            "pretrained": None,
            "embed_dim": clip_dim,
        },
        mapper="mlp",
        prefix_length=PREFIX_LENGTH,
        lm_source=f"random GPT-2 {size}",
        registries=registries,
    )
    make_end_unreachable(model.lm, model.end_token_id)
    return model.eval()


def build_encoder(name: str = ENCODER, device: str = "cpu", seed: int = 0) -> Any:
    """An open_clip encoder with random weights (``pretrained=None``) through polycap."""
    from polycap.data.encoding import load_encoder

    torch.manual_seed(seed)
    return load_encoder(name, pretrained=None, device=device)


def build_models(
    size: str, device: str = "cpu", seed: int = 0, workdir: Path | None = None
) -> Models:
    """Encoder and captioner (on ``device``, fp32) for one benchmark run."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="polycap-bench-"))
    encoder = build_encoder(device=device, seed=seed)
    captioner = build_captioner(size, encoder.embed_dim, workdir, seed=seed).to(device)
    return Models(captioner, encoder, size, workdir)


def register_micro_clip(directory: Path) -> Path:
    """Write the micro encoder's open_clip config and register it; returns the config file."""
    import json

    import open_clip

    directory.mkdir(parents=True, exist_ok=True)
    config = directory / f"{MICRO_CLIP_NAME}.json"
    config.write_text(json.dumps(MICRO_CLIP_CONFIG), encoding="utf-8")
    open_clip.add_model_config(config)
    return config


def build_micro_clip(directory: Path, seed: int = 0) -> tuple[str, Path, Path]:
    """The micro encoder with random weights saved to a file (so that polycap caches its
    features): ``(model name, weights file, config file)``."""
    import open_clip

    config = register_micro_clip(directory)
    torch.manual_seed(seed)
    model = open_clip.create_model(MICRO_CLIP_NAME, pretrained=None)
    weights = directory / f"{MICRO_CLIP_NAME}.pt"
    torch.save(model.state_dict(), weights)
    return MICRO_CLIP_NAME, weights, config


# -- inputs ----------------------------------------------------------------------------------
def random_features(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    """``[n, dim]`` stand-in CLIP features (their values do not change decoding cost)."""
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


def write_images(
    directory: Path, n: int, size: tuple[int, int] = (640, 480), seed: int = 0, suffix: str = ".jpg"
) -> list[Path]:
    """``n`` images of ``size`` (COCO-like 640x480 JPEGs by default): smooth colour fields
    with noise, so that they compress and decode like photographs."""
    import numpy as np
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    width, height = size
    ramp_x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :, None]
    ramp_y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    noise = rng.normal(0, 12, size=(height, width, 3)).astype(np.float32)
    paths = []
    for index in range(n):
        base, dx, dy = rng.uniform(0, 255, size=(3, 3)).astype(np.float32) - [0, 128, 128]
        image = base + ramp_x * dx + ramp_y * dy + np.roll(noise, index * 7, axis=(0, 1))
        path = directory / f"image-{index:05d}{suffix}"
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def caption_lengths(
    n: int, median: int = 12, longest_ratio: float = 3.0, seed: int = 0
) -> list[int]:
    """Token lengths with a long tail: log-normal around ``median``, the longest caption
    ``longest_ratio`` x the median (COCO captions in GPT-2 tokens look like this)."""
    rng = random.Random(seed)
    longest = round(median * longest_ratio)
    lengths = [
        min(longest, max(4, round(median * math.exp(rng.gauss(0.0, 0.3))))) for _ in range(n)
    ]
    lengths[rng.randrange(n)] = longest  # the data set's longest caption
    return lengths


def caption_ids(
    lengths: list[int], end_token_id: int, seed: int = 0, vocab_size: int = VOCAB_SIZE
) -> list[list[int]]:
    """Random caption ids of the given lengths, each ending with the end token (as
    ``LanguagePack.encode_caption`` produces them)."""
    rng = random.Random(seed)
    out = []
    for length in lengths:
        ids: list[int] = []
        while len(ids) < length - 1:
            token = rng.randrange(1, vocab_size)
            if token != end_token_id:
                ids.append(token)
        out.append([*ids, end_token_id])
    return out


# -- caption lengths for decoding --------------------------------------------------------------
class ForcedLengths:
    """A ``logits_hook`` (polycap's, and through :func:`benchmarks.peer.processor` the one
    transformers' ``generate`` and the reference loops use) that ends caption ``i`` after
    exactly ``lengths[i]`` tokens, end token included: the end token is forbidden before that
    step and the only choice at it. With random weights this gives every side the same
    caption lengths, so their outputs stay comparable token for token."""

    def __init__(self, lengths: list[int], end_token_id: int) -> None:
        if min(lengths) < 1:
            raise ValueError("caption lengths must be at least 1")
        self.end_steps = torch.tensor(lengths) - 1
        self.end = end_token_id

    def __call__(self, step: int, rows: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        at_end = self.end_steps.to(rows.device)[rows] == step
        end_scores = scores[:, self.end]
        scores = scores.masked_fill(at_end[:, None], float("-inf"))
        scores[:, self.end] = end_scores.masked_fill(~at_end, float("-inf"))
        return scores


def batch_lengths(
    n: int, median: int = 12, longest_ratio: float = 3.0, pool: int = 10_000, seed: int = 0
) -> list[int]:
    """``n`` caption lengths (end token included) drawn at random from a data set of ``pool``
    captions whose lengths follow :func:`caption_lengths` (the data set's longest caption is
    ``longest_ratio`` x its median; a batch holds it only by chance)."""
    lengths = caption_lengths(pool, median=median, longest_ratio=longest_ratio, seed=seed)
    return random.Random(seed + 1).sample(lengths, n)


class BatchedForcedLengths:
    """:class:`ForcedLengths` over consecutive batches of one list of images, for a caption
    path that decodes them a batch at a time (``CaptionPipeline.caption_files``): each batch's
    first step (step 0, every row of the batch present) moves on to the next batch's lengths."""

    def __init__(self, lengths: list[int], end_token_id: int) -> None:
        self.lengths, self.end = lengths, end_token_id
        self.offset = self.size = 0
        self.inner: ForcedLengths | None = None

    def __call__(self, step: int, rows: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if step == 0:
            self.offset += self.size
            self.size = int(rows.numel())
            batch = self.lengths[self.offset : self.offset + self.size]
            self.inner = ForcedLengths(batch, self.end)
        assert self.inner is not None
        return self.inner(step, rows, scores)
