"""Chinese: GPT-2 trained on CLUECorpusSmall with a character-level ``BertTokenizer``.

Choices, stated rather than hidden:

- **loading**: ``BertTokenizer.from_pretrained`` + ``AutoModelForCausalLM`` (a
  ``GPT2LMHeadModel``), as the model card of ``uer/gpt2-chinese-cluecorpussmall`` does.
- **end of caption**: ``[SEP]``, which ends every training sequence of the UER models
  (``[CLS] text [SEP]``); padding is ``[PAD]``. No ``[CLS]`` is added: the image prefix
  takes its place.
- **normalisation** (captions as trained and generated): Unicode **NFC, not NFKC**, so
  full-width punctuation stays as Chinese is written (，。！？：；（）) instead of being turned
  into ASCII; white space folded, and removed next to Chinese characters and full-width
  punctuation, where Chinese puts none and where the character tokenizer keeps none (so a
  caption round-trips exactly).
- **decoding**: tokens joined with **no spaces** between characters, ``##`` pieces glued to
  the token before, one space only between two Latin/digit words ("iphone 11"); ``[CLS]``
  ``[SEP]`` ``[UNK]`` ``[PAD]`` ``[MASK]`` never appear in a caption.
- **evaluation** (``eval_tokenize``): NFKC (here, and only here, full-width and ASCII
  variants are folded so "，" and "," match) and lower case, then **jieba** word segmentation
  (default, segmenter ``"jieba"``) or single characters with Latin/digit runs kept whole
  (segmenter ``"characters"``, like sacrebleu's ``zh`` tokenizer): ``CHINESE.with_segmenter(
  "characters")``.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from polycap.errors import UnknownName
from polycap.language import LanguagePack, cut_at_end, load_pretrained
from polycap_zh.demo import CHINESE_DEMO

SEGMENTERS = ("jieba", "characters")
# CJK radicals, symbols and punctuation, kana, bopomofo, ideographs, compatibility forms,
# full-width forms, supplementary ideographs
_WIDE = (
    r"\u2e80-\u2fff\u3000-\u303f\u3040-\u30ff\u3100-\u312f\u3400-\u4dbf\u4e00-\u9fff"
    r"\uf900-\ufaff\ufe30-\ufe4f\uff00-\uffef\U00020000-\U0003134f"
)
_SPACES = re.compile(r"\s+")
_CHARACTER_TOKENS = re.compile(r"[0-9a-z\u00c0-\u024f]+|\S")
_LATIN = re.compile(r"[0-9A-Za-z]")


@cache
def _space_next_to_wide() -> re.Pattern[str]:
    """Compiled on first use (the wide character classes take milliseconds to compile)."""
    return re.compile(rf"(?<=[{_WIDE}])\x20|\x20(?=[{_WIDE}])")


@dataclass
class ChinesePack(LanguagePack):
    """Character-level tokenizer, [SEP] ends a caption, no spaces, jieba for evaluation."""

    def load_tokenizer(self, name_or_path: str) -> Any:
        """The decoder's ``BertTokenizer`` (character vocabulary), by hub id or directory."""
        from transformers import BertTokenizer

        return load_pretrained(BertTokenizer.from_pretrained, name_or_path, "tokenizer")

    def normalize(self, text: str) -> str:
        """NFC (full-width punctuation kept), white space folded and dropped beside CJK."""
        text = _SPACES.sub(" ", unicodedata.normalize("NFC", text)).strip()
        return _space_next_to_wide().sub("", text)

    def end_token_id(self, tokenizer: Any) -> int:
        """``[SEP]``, as in the UER GPT-2 models' training sequences."""
        if tokenizer.sep_token_id is not None:
            return int(tokenizer.sep_token_id)
        return super().end_token_id(tokenizer)

    def decode_caption(self, tokenizer: Any, ids: Sequence[int]) -> str:
        """Ids → characters with no spaces between them; special tokens dropped."""
        ids = cut_at_end(ids, self.end_token_id(tokenizer))
        special = set(tokenizer.all_special_ids)
        tokens = tokenizer.convert_ids_to_tokens([i for i in ids if i not in special])
        return self.normalize(join_tokens(tokens))

    def eval_tokenize(self, text: str) -> list[str]:
        """Words by the pack's segmenter: ``"jieba"`` (default) or ``"characters"``."""
        if self.segmenter == "characters":
            return self.eval_tokenize_chars(text)
        return self.eval_tokenize_jieba(text)

    def eval_tokenize_jieba(self, text: str) -> list[str]:
        """``"两个红色的圆形，在背景上"`` -> ``["两个", "红色", "的", "圆形", ",", "在", ...]``."""
        folded = _fold_for_eval(self.normalize(text))
        if not folded:
            return []
        return [word for word in _jieba().lcut(folded) if word.strip()]

    def eval_tokenize_chars(self, text: str) -> list[str]:
        """``"拿着iPhone 11。"`` -> ``["拿", "着", "iphone", "11", "。"]``."""
        return _CHARACTER_TOKENS.findall(_fold_for_eval(self.normalize(text)))

    def with_segmenter(self, segmenter: str) -> ChinesePack:
        """A copy of this pack that evaluates with ``segmenter`` (``jieba`` / ``characters``)."""
        if segmenter not in SEGMENTERS:
            raise UnknownName(
                f"No Chinese segmenter {segmenter!r}. Choose one of: {', '.join(SEGMENTERS)}."
            )
        return dataclasses.replace(self, segmenter=segmenter)


def join_tokens(tokens: Sequence[str]) -> str:
    """Join BertTokenizer tokens as Chinese is written: no spaces, except between two
    Latin/digit words; ``##`` continuation pieces glued to what precedes them."""
    text = ""
    for token in tokens:
        if token.startswith("##") and len(token) > 2:
            text += token[2:]
            continue
        if text and _LATIN.match(text[-1]) and _LATIN.match(token[0]):
            text += " "
        text += token
    return text


def _fold_for_eval(text: str) -> str:
    return unicodedata.normalize("NFKC", text).lower()


@cache
def _jieba() -> Any:
    """One jieba tokenizer per process, dictionary loaded once, quietly."""
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)
    tokenizer = jieba.Tokenizer()
    tokenizer.initialize()
    return tokenizer


CHINESE = ChinesePack(
    code="zh",
    name="Chinese",
    default_lm="uer/gpt2-chinese-cluecorpussmall",
    segmenter="jieba",
    tokenizer_kind="char",
    demo=CHINESE_DEMO,
    retrieval_prompt="相似的图片：{captions}。这张图片：",
    caption_separator="；",
    identifier_language="zh",
    metadata={
        "tokenizer": "BertTokenizer (character vocabulary)",
        "end_token": "[SEP]",
        "normalisation": "NFC + white space (none beside CJK); full-width punctuation kept",
        "segmenters": list(SEGMENTERS),
    },
)
