"""Tiny stand-ins for the real models, built offline in a second: tokenizers, GPT-2, Llama, CLIP.

They are saved to disk and then loaded by the *same* code that loads the real models
(``AutoTokenizer`` / the pack's loader, ``AutoModelForCausalLM``,
``open_clip.create_model_and_transforms``), so tests and the demo exercise real loading paths.

Tokenizer kinds mirror the real decoders' tokenizers:

- ``bpe``: byte-level BPE in ``GPT2TokenizerFast`` (``gpt2``, ``rugpt3small``), eos/bos/unk
  ``<|endoftext|>``, no pad token (like GPT-2).
- ``sentencepiece``: a sentencepiece unigram model in ``T5Tokenizer`` with rinna's special tokens
  and ids (``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, ``[PAD]`` 3, ``[CLS]`` 4, ``[SEP]`` 5, ``[MASK]`` 6).
- ``char``: a ``BertTokenizer`` over a character vocabulary (``uer/gpt2-chinese-cluecorpussmall``).
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from polycap.util.atomic import atomic_file

TOKENIZER_KINDS = ("bpe", "sentencepiece", "char")
GPT2_EOS = "<|endoftext|>"
RINNA_SPECIALS = ("<unk>", "<s>", "</s>", "[PAD]", "[CLS]", "[SEP]", "[MASK]")
BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

TINY_CLIP_NAME = "polycap-tiny-vit"
# Vision tower sized so that its *random* features tell the synthetic images' colour and shape
# apart (tests/test_tiny.py trains a probe on them); the text tower is minimal (open_clip
# requires one).
TINY_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {
        "image_size": 64,
        "patch_size": 8,
        "width": 128,
        "head_width": 32,
        "layers": 3,
    },
    "text_cfg": {
        "context_length": 32,
        "vocab_size": 49408,
        "width": 64,
        "heads": 2,
        "layers": 1,
    },
}


# -- tokenizers --------------------------------------------------------------------------------


def build_tokenizer(kind: str, texts: Iterable[str], directory: str | Path) -> Path:
    """Train a small tokenizer of ``kind`` on ``texts`` and save it to ``directory`` (created) so
    that ``AutoTokenizer.from_pretrained(directory)`` and the pack's loader load it; deterministic.

    ``bpe`` is saved with ``save_pretrained``; ``sentencepiece`` and ``char`` are written as
    their hub repositories ship them (``spiece.model`` / ``vocab.txt`` plus
    ``tokenizer_config.json``), so loading goes through the same conversion as for the real
    rinna and uer tokenizers. Returns ``directory``.
    """
    texts = [text for text in texts if text.strip()]
    if not texts:
        raise ValueError("build_tokenizer needs at least one non-empty text")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    builders = {"bpe": _build_bpe, "sentencepiece": _build_sentencepiece, "char": _build_char}
    try:
        builder = builders[kind]
    except KeyError:
        raise ValueError(
            f"unknown tokenizer kind {kind!r}; expected one of {', '.join(TOKENIZER_KINDS)}"
        ) from None
    builder(texts, directory)
    return directory


def train_byte_level_bpe(
    texts: Sequence[str], special_tokens: Sequence[str], merges: int = 300
) -> Any:
    """A GPT-2-style byte-level BPE (``tokenizers.Tokenizer``) trained on ``texts``: the
    special tokens take ids 0.. in order, then the 256 bytes, then up to ``merges`` merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=256 + len(special_tokens) + merges,
        min_frequency=2,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return backend


def _build_bpe(texts: Sequence[str], directory: Path) -> None:
    from tokenizers import processors
    from transformers import GPT2TokenizerFast

    backend = train_byte_level_bpe(texts, [GPT2_EOS])
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer = GPT2TokenizerFast(
        tokenizer_object=backend, bos_token=GPT2_EOS, eos_token=GPT2_EOS, unk_token=GPT2_EOS
    )
    tokenizer.save_pretrained(str(directory))


def _build_sentencepiece(texts: Sequence[str], directory: Path) -> None:
    import sentencepiece as spm

    characters = {char for text in texts for char in text if not char.isspace()}
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),  # no file paths end up in the model: same texts, same bytes
        model_writer=model,
        model_type="unigram",
        vocab_size=max(len(characters) + len(RINNA_SPECIALS) + 20, 300),
        hard_vocab_limit=False,  # a few hundred captions may not fill the vocabulary
        character_coverage=1.0,
        num_threads=1,
        shuffle_input_sentence=False,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        pad_piece="[PAD]",
        control_symbols=["[CLS]", "[SEP]", "[MASK]"],
        minloglevel=2,
    )
    (directory / "spiece.model").write_bytes(model.getvalue())
    specials = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "mask_token": "[MASK]",
    }
    config = {
        "tokenizer_class": "T5Tokenizer",
        "do_lower_case": True,
        "extra_ids": 0,
        "additional_special_tokens": [],
        **specials,
    }
    write_config_json(directory / "tokenizer_config.json", config)
    write_config_json(directory / "special_tokens_map.json", specials)


def _build_char(texts: Sequence[str], directory: Path) -> None:
    characters = sorted({char for text in texts for char in text if not char.isspace()})
    # "##c" too: BertTokenizer splits runs of non-CJK characters (digits, Latin) into wordpieces
    vocab = [*BERT_SPECIALS, *characters, *(f"##{char}" for char in characters)]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    names = ("pad_token", "unk_token", "cls_token", "sep_token", "mask_token")
    specials = dict(zip(names, BERT_SPECIALS))
    config = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": False,
        "tokenize_chinese_chars": True,
        "strip_accents": None,
        **specials,
    }
    write_config_json(directory / "tokenizer_config.json", config)
    write_config_json(directory / "special_tokens_map.json", specials)


def write_config_json(path: Path, data: Any) -> None:
    """A tokenizer's JSON config file as hub repositories ship them (indented, UTF-8)."""
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


# -- decoder -----------------------------------------------------------------------------------


def _special_ids(tokenizer: Any) -> dict[str, Any]:
    """bos/eos/pad ids of ``tokenizer`` for a model config (eos: eos or sep; bos: bos, cls or
    eos)."""
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    return {
        "bos_token_id": bos if bos is not None else eos,
        "eos_token_id": eos,
        "pad_token_id": tokenizer.pad_token_id,
    }


def _save_decoder(
    model_class: Any, config: Any, tokenizer: Any, directory: Path, seed: int
) -> Path:
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model_class(config).save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory


def _tokenizer(tokenizer: Any) -> Any:
    from transformers import AutoTokenizer

    if isinstance(tokenizer, (str, Path)):
        return AutoTokenizer.from_pretrained(str(tokenizer))
    return tokenizer


def build_gpt2(
    tokenizer: Any,
    directory: str | Path,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 2,
    n_positions: int = 128,
    seed: int = 0,
) -> Path:
    """A randomly initialised GPT-2 sized to ``tokenizer`` (an object or a directory), saved with
    ``save_pretrained`` (safetensors) to ``directory`` together with the tokenizer, like a hub
    repository. Returns ``directory``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = _tokenizer(tokenizer)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        **_special_ids(tokenizer),
    )
    return _save_decoder(GPT2LMHeadModel, config, tokenizer, Path(directory), seed)


def build_llama(
    tokenizer: Any,
    directory: str | Path,
    n_layer: int = 2,
    hidden_size: int = 64,
    n_head: int = 4,
    n_kv_head: int = 2,
    max_positions: int = 128,
    seed: int = 0,
) -> Path:
    """A randomly initialised Llama-architecture LM (RMSNorm, rotary positions, SwiGLU, grouped
    KV heads, untied head: SmolLM2's family) sized to ``tokenizer``, saved like
    :func:`build_gpt2`. Returns ``directory``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _tokenizer(tokenizer)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=n_layer,
        num_attention_heads=n_head,
        num_key_value_heads=n_kv_head,
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
        **_special_ids(tokenizer),
    )
    return _save_decoder(LlamaForCausalLM, config, tokenizer, Path(directory), seed)


DECODER_BUILDERS = {"gpt2": build_gpt2, "llama": build_llama}


# -- image encoder -----------------------------------------------------------------------------


def register_tiny_clip_config(
    directory: str | Path | None = None, name: str = TINY_CLIP_NAME
) -> str:
    """Write the tiny open_clip model config as ``directory/<name>.json`` (default: a folder in
    the temp directory) and register it with ``open_clip.add_model_config``; safe to call again,
    and needed once in every process that creates the model by name. Returns the model name."""
    import open_clip

    directory = Path(directory) if directory is not None else _default_config_dir()
    directory.mkdir(parents=True, exist_ok=True)
    config_file = directory / f"{name}.json"
    text = json.dumps(TINY_CLIP_CONFIG, indent=2)
    if not config_file.exists() or config_file.read_text(encoding="utf-8") != text:
        config_file.write_text(text, encoding="utf-8")
    open_clip.add_model_config(config_file)
    return name


def build_clip(
    directory: str | Path, seed: int = 0, name: str = TINY_CLIP_NAME
) -> tuple[str, Path]:
    """Register the tiny open_clip config, build it with seeded random weights and save the
    state dict to ``directory/<name>-seed<seed>.pt``. Returns ``(model_name, weights_path)`` for
    ``open_clip.create_model_and_transforms(model_name, pretrained=str(weights_path))``."""
    import open_clip
    import torch

    directory = Path(directory)
    name = register_tiny_clip_config(directory, name)
    weights = directory / f"{name}-seed{seed}.pt"
    root_logger = logging.getLogger()
    level = root_logger.level
    root_logger.setLevel(logging.ERROR)  # open_clip warns "no pretrained weights": intended here
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = open_clip.create_model(name, pretrained=None)
    finally:
        root_logger.setLevel(level)
    with atomic_file(weights) as temporary:
        torch.save(model.state_dict(), temporary)
    return name, weights


def _default_config_dir() -> Path:
    import tempfile

    return Path(tempfile.gettempdir()) / "polycap-open-clip-configs"
