"""Russian: ruGPT-3 small (GPT-2 architecture, byte-level BPE), ``</s>`` ends a caption.

Choices, stated rather than hidden:

- **normalisation** (captions as trained and generated): Unicode NFC (so a decomposed
  ``е + U+0308`` becomes ``ё``, ``и + U+0306`` becomes ``й``), runs of white space folded to
  one space, ends trimmed. Nothing else: case, punctuation, «ёлочки» quotes and **ё stay as
  written**, because ruGPT-3 saw ё in its training text and a caption with ё is correct
  Russian.
- **evaluation** (``eval_tokenize``, for BLEU/CIDEr/METEOR): NFC, lower case, **ё folded to
  е** (references are written both ways; "жёлтый" and "желтый" must match), then words —
  runs of letters/digits, inner hyphens kept ("жёлто-зелёный" is one word) — and every other
  non-space character as a token of its own, like sacrebleu's ``intl`` tokenizer.
- **end of caption**: ruGPT-3's tokenizer has ``<pad>`` 0, ``<s>`` 1, ``</s>`` 2, ``<unk>``
  3, ``<mask>`` 4, and its pretraining texts end in ``</s>`` (ai-forever/ru-gpts); older
  copies of the tokenizer config name ``<|endoftext|>`` instead, so the end token is ``</s>``
  whenever the vocabulary has it, else the tokenizer's eos. Padding is ``<pad>``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polycap.language import LanguagePack, load_pretrained
from polycap_ru.demo import RUSSIAN_DEMO

END_TOKEN = "</s>"
# ruGPT-3's special tokens, in vocabulary order (ids 0..4)
SPECIAL_TOKENS = {
    "pad_token": "<pad>",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "mask_token": "<mask>",
}
_WORDS = re.compile(r"\w+(?:-\w+)*|[^\w\s]")


@dataclass
class RussianPack(LanguagePack):
    """ruGPT-3 loaded with ``GPT2Tokenizer`` as its model card does; ё kept, folded for eval."""

    def load_tokenizer(self, name_or_path: str) -> Any:
        """ruGPT-3's tokenizer (``GPT2Tokenizer``), by hub id or local directory."""
        from transformers import GPT2Tokenizer

        return load_pretrained(GPT2Tokenizer.from_pretrained, name_or_path, "tokenizer")

    def end_token_id(self, tokenizer: Any) -> int:
        """``</s>`` (id 2 in ruGPT-3), else the tokenizer's own eos."""
        token_id = tokenizer.convert_tokens_to_ids(END_TOKEN)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            return token_id
        return super().end_token_id(tokenizer)

    def eval_tokenize(self, text: str) -> list[str]:
        """``"Жёлто-зелёный «круг»."`` -> ``["желто-зеленый", "«", "круг", "»", "."]``."""
        return _WORDS.findall(fold_yo(self.normalize(text).lower()))

    def build_tiny_tokenizer(self, texts: Sequence[str], directory: Path) -> Path:
        """A byte-level BPE with ruGPT-3's special tokens and ids, saved as ruGPT-3's hub
        repository is (``vocab.json`` + ``merges.txt`` + configs)."""
        return build_rugpt_style_tokenizer([self.normalize(t) for t in texts], directory)


def fold_yo(text: str) -> str:
    """ё → е, Ё → Е (evaluation only)."""
    return text.replace("ё", "е").replace("Ё", "Е")


def build_rugpt_style_tokenizer(texts: Sequence[str], directory: Path, merges: int = 300) -> Path:
    """Train a small GPT-2 byte-level BPE on ``texts`` with ``<pad> <s> </s> <unk> <mask>`` as
    ids 0-4 and write it to ``directory`` in the files ``GPT2Tokenizer`` reads."""
    from polycap.offline import tiny

    texts = [text for text in texts if text.strip()]
    if not texts:
        raise ValueError("build_rugpt_style_tokenizer needs at least one non-empty text")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    backend = tiny.train_byte_level_bpe(texts, list(SPECIAL_TOKENS.values()), merges)
    backend.model.save(str(directory))  # vocab.json + merges.txt
    config = {
        "tokenizer_class": "GPT2Tokenizer",
        "add_bos_token": False,
        "add_prefix_space": False,
        "errors": "replace",
        **SPECIAL_TOKENS,
    }
    tiny.write_config_json(directory / "tokenizer_config.json", config)
    tiny.write_config_json(directory / "special_tokens_map.json", SPECIAL_TOKENS)
    return directory


RUSSIAN = RussianPack(
    code="ru",
    name="Russian",
    default_lm="ai-forever/rugpt3small_based_on_gpt2",
    segmenter="lowercase, ё→е, regex words + punctuation (sacrebleu intl-like)",
    tokenizer_kind="bpe",
    demo=RUSSIAN_DEMO,
    retrieval_prompt="На похожих изображениях: {captions}. На этом изображении:",
    caption_separator="; ",
    identifier_language="ru",
    metadata={
        "tokenizer": "GPT2Tokenizer (byte-level BPE)",
        "end_token": END_TOKEN,
        "normalisation": "NFC + white space; ё kept (folded to е only for evaluation)",
    },
)
