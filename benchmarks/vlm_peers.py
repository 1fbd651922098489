"""The captioners users pick on a CPU, built offline: SmolVLM-256M and Florence-2-base.

Both are built by transformers (``Idefics3ForConditionalGeneration``,
``Florence2ForConditionalGeneration``) from their published configurations with random weights
(nothing is downloaded), saved with ``save_pretrained`` and loaded back with
``from_pretrained`` as a user's script does; each is run as its model card shows:
``processor(images=..., text=prompt)`` then ``model.generate(**inputs)``.

The configuration values below are the published ones (``config.json`` /
``preprocessor_config.json`` / ``processor_config.json`` of HuggingFaceTB/SmolVLM-256M-Instruct
and microsoft/Florence-2-base, the latter in transformers' native layout). Two things are built
locally instead of downloaded: the tokenizer (a small byte-level BPE trained here, with the
special tokens each processor needs; the model keeps its published vocabulary size, so the
output projection costs what it costs in the real model) and, for that reason, the image
token's id, which is the local tokenizer's.

Caption lengths: with random weights a model may stop at once or never, so generation runs
with :class:`ForcedEos`, a ``LogitsProcessor`` that forbids the end token before each row's
drawn length and forces it at that length (as :class:`benchmarks.workload.ForcedLengths` does
for polycap): every side produces the same number of tokens per caption.

``python -m benchmarks.vlm_peers FOLDER IMAGE [DEVICE]``: a user's cold script (load the saved
model and processor, caption one image, print it), timed by :mod:`benchmarks.end_to_end`.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

# HuggingFaceTB/SmolVLM-256M-Instruct: config.json (Idefics3: SigLIP-B/16-512 + SmolLM2-135M)
SMOLVLM_CONFIG: dict[str, Any] = {
    "scale_factor": 4,
    "tie_word_embeddings": False,
    "text_config": {
        "model_type": "llama",
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "head_dim": 64,
        "vocab_size": 49280,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "rope_theta": 100000,
        "tie_word_embeddings": False,
    },
    "vision_config": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "image_size": 512,
        "patch_size": 16,
        "layer_norm_eps": 1e-6,
    },
}
# its preprocessor_config.json (Idefics3ImageProcessor) and processor_config.json
SMOLVLM_IMAGE_PROCESSOR: dict[str, Any] = {
    "do_convert_rgb": True,
    "do_image_splitting": True,
    "do_normalize": True,
    "do_pad": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "max_image_size": {"longest_edge": 512},
    "resample": 1,
    "rescale_factor": 1 / 255,
    "size": {"longest_edge": 2048},
}
SMOLVLM_IMAGE_SEQ_LEN = 64
# the model card's chat template applied to [image, "Can you describe this image?"]
SMOLVLM_PROMPT = (
    "<|im_start|>User:<image>Can you describe this image?<end_of_utterance>\nAssistant:"
)
SMOLVLM_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<fake_token_around_image>",
    "<image>",
    "<end_of_utterance>",
    "<global-img>",
    *[f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)],
]

# microsoft/Florence-2-base (DaViT + BART-base), as florence-community/Florence-2-base lays it
# out for transformers: vocabulary 51289 plus the <image> token the conversion appends
FLORENCE_CONFIG: dict[str, Any] = {
    "vision_config": {
        "model_type": "florence_vision",
        "depths": [1, 1, 9, 1],
        "embed_dim": [128, 256, 512, 1024],
        "num_heads": [4, 8, 16, 32],
        "num_groups": [4, 8, 16, 32],
        "patch_size": [7, 3, 3, 3],
        "patch_stride": [4, 2, 2, 2],
        "patch_padding": [3, 1, 1, 1],
        "patch_prenorm": [False, True, True, True],
        "window_size": 12,
        "projection_dim": 768,
        "max_position_embeddings": 50,
        "max_temporal_embeddings": 100,
    },
    "text_config": {
        "model_type": "bart",
        "vocab_size": 51289 + 1,
        "d_model": 768,
        "encoder_layers": 6,
        "decoder_layers": 6,
        "encoder_attention_heads": 12,
        "decoder_attention_heads": 12,
        "encoder_ffn_dim": 3072,
        "decoder_ffn_dim": 3072,
        "max_position_embeddings": 1024,
        "bos_token_id": 0,
        "pad_token_id": 1,
        "eos_token_id": 2,
        "decoder_start_token_id": 2,
        "forced_bos_token_id": 0,
    },
}
# its preprocessor_config.json (CLIPImageProcessor, 768 x 768, 577 image tokens)
FLORENCE_IMAGE_PROCESSOR: dict[str, Any] = {
    "do_resize": True,
    "size": {"height": 768, "width": 768},
    "do_center_crop": False,
    "crop_size": {"height": 768, "width": 768},
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
    "resample": 3,
    "image_seq_length": 577,
}
FLORENCE_PROMPT = "<CAPTION>"  # the model card's captioning task
FLORENCE_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<image>"]

PEERS = {"smolvlm": "SmolVLM-256M", "florence": "Florence-2-base"}
CORPUS = [
    "a man riding a wave on top of a surfboard",
    "a plate of food with broccoli and rice on a table",
    "two dogs playing with a frisbee in the grass",
    "a red double decker bus driving down a city street",
    "a cat sitting on a laptop keyboard next to a cup of coffee",
    "What does the image describe? Can you describe this image? Assistant: User:",
] * 8


def build_tokenizer(
    specials: list[str], model_tokens: dict[str, str] | None = None, **named: str
) -> Any:
    """A small byte-level BPE (``PreTrainedTokenizerFast``) with ``specials`` as added special
    tokens; ``named`` maps roles (bos_token, eos_token, pad_token, unk_token) to them and
    ``model_tokens`` model-specific roles (``image_token``, read by Florence's processor)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    extra = [token for token in specials if token not in named.values()]
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        extra_special_tokens=extra,
        model_specific_special_tokens=model_tokens or {},
        **named,
    )


def build_smolvlm(folder: Path, seed: int = 0) -> Path:
    """SmolVLM-256M with random weights and its processor, saved to ``folder``."""
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
    )

    tokenizer = build_tokenizer(
        SMOLVLM_SPECIALS,
        eos_token="<end_of_utterance>",
        bos_token="<|im_start|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    config = Idefics3Config(**SMOLVLM_CONFIG, image_token_id=image_token)
    config.text_config.eos_token_id = tokenizer.eos_token_id
    config.text_config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config).eval()
    processor = Idefics3Processor(
        Idefics3ImageProcessor(**SMOLVLM_IMAGE_PROCESSOR),
        tokenizer,
        image_seq_len=SMOLVLM_IMAGE_SEQ_LEN,
    )
    return _save(folder, "smolvlm", model, processor, SMOLVLM_PROMPT)


def build_florence(folder: Path, seed: int = 0) -> Path:
    """Florence-2-base with random weights and its processor, saved to ``folder``."""
    from transformers import (
        CLIPImageProcessor,
        Florence2Config,
        Florence2ForConditionalGeneration,
        Florence2Processor,
    )

    tokenizer = build_tokenizer(
        FLORENCE_SPECIALS,
        {"image_token": "<image>"},
        bos_token="<s>",
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
    )
    settings = json.loads(json.dumps(FLORENCE_CONFIG))
    for role in ("bos", "pad", "eos"):
        settings["text_config"][f"{role}_token_id"] = getattr(tokenizer, f"{role}_token_id")
    settings["text_config"]["decoder_start_token_id"] = tokenizer.eos_token_id
    settings["text_config"]["forced_bos_token_id"] = tokenizer.bos_token_id
    config = Florence2Config(**settings, image_token_id=tokenizer.image_token_id)
    torch.manual_seed(seed)
    model = Florence2ForConditionalGeneration(config).eval()
    image_processor = CLIPImageProcessor(**FLORENCE_IMAGE_PROCESSOR)
    processor = Florence2Processor(image_processor, tokenizer)
    return _save(folder, "florence", model, processor, FLORENCE_PROMPT)


def quiet() -> None:
    """No progress bars from transformers' saving and loading in the benchmark's output."""
    from transformers.utils import logging

    logging.disable_progress_bar()


def _save(folder: Path, kind: str, model: Any, processor: Any, prompt: str) -> Path:
    quiet()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    (folder / "bench-peer.json").write_text(json.dumps({"kind": kind, "prompt": prompt}))
    return folder


class Peer:
    """A saved peer loaded as a user's script loads it (``from_pretrained``, offline)."""

    def __init__(self, folder: Path, small_images: bool = False, device: str = "cpu") -> None:
        """``small_images`` (smoke runs only): SmolVLM without splitting images into tiles."""
        from transformers import AutoProcessor

        quiet()
        info = json.loads((folder / "bench-peer.json").read_text())
        self.kind, self.prompt = info["kind"], info["prompt"]
        self.name = PEERS[self.kind]
        if self.kind == "smolvlm":
            from transformers import Idefics3ForConditionalGeneration as Model
        else:
            from transformers import Florence2ForConditionalGeneration as Model  # type: ignore
        self.processor = AutoProcessor.from_pretrained(folder)
        if small_images and self.kind == "smolvlm":
            self.processor.image_processor.do_image_splitting = False
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        self.model = Model.from_pretrained(folder, dtype=dtype).to(device).eval()
        self.device = device
        self.eos = int(self.processor.tokenizer.eos_token_id)
        self.pad = int(self.processor.tokenizer.pad_token_id)

    def caption(self, images: list[Any], lengths: list[int] | None = None) -> list[str]:
        """Captions of PIL ``images`` (greedy); ``lengths``: new tokens per caption, the end
        token included (forced), else the model stops by itself (at most 30 tokens)."""
        from transformers import LogitsProcessorList

        inputs = self.processor(
            images=images if self.kind == "florence" else [[image] for image in images],
            text=[self.prompt] * len(images),
            return_tensors="pt",
        ).to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        processors = LogitsProcessorList([ForcedEos(lengths, self.eos)] if lengths else [])
        with torch.inference_mode():
            out = self.model.generate(
                **inputs,
                max_new_tokens=max(lengths) if lengths else 30,
                do_sample=False,
                num_beams=1,
                logits_processor=processors,
                pad_token_id=self.pad,
                eos_token_id=self.eos,
            )
        # decoder-only: the prompt comes back first; Florence: the decoder's start token
        out = out[:, inputs["input_ids"].shape[1] if self.kind == "smolvlm" else 1 :]
        self.last_lengths = [_length(row, self.eos) for row in out.tolist()]
        return self.processor.batch_decode(out, skip_special_tokens=True)


def _length(row: list[int], eos: int) -> int:
    """Tokens generated, the end token included (padding after it not counted)."""
    return row.index(eos) + 1 if eos in row else len(row)


def forced_eos_processor_class() -> type:
    from transformers import LogitsProcessor

    class _ForcedEos(LogitsProcessor):
        """Forbid ``eos`` before each row's length and force it at that length; the first
        call's sequence length is the start (prompt, or the decoder's start tokens)."""

        def __init__(self, lengths: list[int], eos: int) -> None:
            self.ends = torch.tensor(lengths) - 1
            self.eos = eos
            self.start: int | None = None

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            if self.start is None:
                self.start = input_ids.shape[1]
            step = input_ids.shape[1] - self.start
            at_end = self.ends.to(scores.device)[: scores.shape[0]] == step
            eos_scores = scores[:, self.eos].clone()
            scores = scores.masked_fill(at_end[:, None], float("-inf"))
            scores[:, self.eos] = eos_scores.masked_fill(~at_end, float("-inf"))
            return scores

    return _ForcedEos


def ForcedEos(lengths: list[int], eos: int) -> Any:  # noqa: N802 - reads as a class
    return forced_eos_processor_class()(lengths, eos)


def main(argv: list[str]) -> None:
    """Cold script: load the peer saved in ``argv[0]``, caption the image ``argv[1]`` (on
    the device ``argv[2]``, default cpu)."""
    started = time.perf_counter()
    from PIL import Image

    peer = Peer(Path(argv[0]), device=argv[2] if len(argv) > 2 else "cpu")
    with Image.open(argv[1]) as image:
        caption = peer.caption([image.convert("RGB")], [12])[0]
    print(f"{Path(argv[1]).name}: {caption!r} ({time.perf_counter() - started:.2f} s)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
