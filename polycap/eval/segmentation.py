"""How captions are cut into words before BLEU, METEOR, ROUGE-L, CIDEr and WER: the one choice
that decides whether two papers' numbers can be compared.

- ``pack`` (default): the language pack's own segmenter (MeCab for ja, jieba for zh, ...);
- ``ptb``: the COCO caption evaluation's pipeline, as English papers report it: pycocoevalcap's
  ``PTBTokenizer`` (Stanford CoreNLP 3.4.1 in Java: lower-cased, punctuation removed), and BLEU by
  pycocoevalcap's own scorer, so BLEU-1..4, METEOR, ROUGE-L and CIDEr equal that pipeline's.
  On Japanese or Chinese it shows what an English-tokenizer harness reports (a caption written
  without spaces is then one "word").
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from polycap.errors import BadInput

if TYPE_CHECKING:
    from polycap.language import LanguagePack

SEGMENTATIONS = ("pack", "ptb")
PTB_NAME = "PTB (pycocoevalcap PTBTokenizer: lower case, punctuation removed)"


@dataclass(frozen=True)
class Segmentation:
    """``name`` (shown with every score), ``tokenize_all`` (texts -> words of each, in one
    call: PTB starts one Java process for all), ``coco_pipeline`` (BLEU computed by
    pycocoevalcap as the COCO caption evaluation does, instead of sacrebleu)."""

    name: str
    tokenize_all: Callable[[Sequence[str]], list[list[str]]]
    coco_pipeline: bool = False


def pack_segmentation(pack: LanguagePack) -> Segmentation:
    """The pack's ``eval_tokenize``, text by text."""
    return Segmentation(pack.segmenter, lambda texts: [pack.eval_tokenize(t) for t in texts])


def ptb_segmentation() -> Segmentation:
    """pycocoevalcap's PTBTokenizer over all texts at once (needs Java on PATH)."""
    if shutil.which("java") is None:
        raise BadInput("--tokenizer ptb needs Java on PATH (pycocoevalcap's PTBTokenizer)")
    return Segmentation(PTB_NAME, _ptb_tokenize, coco_pipeline=True)


def _ptb_tokenize(texts: Sequence[str]) -> list[list[str]]:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    if not texts:
        return []
    tokenized = PTBTokenizer().tokenize({i: [{"caption": text}] for i, text in enumerate(texts)})
    return [tokenized.get(i, [""])[0].split() for i in range(len(texts))]


def choose_segmentation(name: str, pack: LanguagePack) -> Segmentation:
    """``--tokenizer NAME``: ``pack`` or ``ptb``; BadInput otherwise."""
    if name == "pack":
        return pack_segmentation(pack)
    if name == "ptb":
        return ptb_segmentation()
    raise BadInput(f"--tokenizer {name}: unknown; choose one of {', '.join(SEGMENTATIONS)}")
