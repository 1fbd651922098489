"""The Japanese language pack: rinna's GPT-2, its sentencepiece tokenizer, MeCab for evaluation."""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from polycap.language import LanguagePack, cut_at_end, load_pretrained
from polycap_ja.demo import JAPANESE_DEMO

# Characters written without spaces between them: CJK punctuation, kana, kanji, full-width forms.
_JA = (
    r"\u3000-\u303f\u3040-\u309f\u30a0-\u30ff\u31f0-\u31ff"  # punctuation, kana
    r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"  # kanji, full-width forms
)


@cache
def _space_between_ja() -> re.Pattern[str]:
    """Compiled on first use (the wide character classes take milliseconds to compile)."""
    return re.compile(rf"(?<=[{_JA}])\s+(?=[{_JA}])")


_SPACES = re.compile(r"\s+")


@dataclass
class JapanesePack(LanguagePack):
    """Japanese, decoded by ``rinna/japanese-gpt2-medium`` (or any GPT-2 with a T5Tokenizer).

    Normalisation (:meth:`normalize`): Unicode NFKC (full-width ASCII and digits become
    half-width, half-width katakana full-width), lower-case (rinna's vocabulary has lower-case
    Latin letters only; its README sets ``do_lower_case = True``), white space folded; spaces
    *between two Japanese characters* are removed (Japanese is written without them, MeCab ignores
    them, and rinna's tokenizer would spend a "▁" token on each), while spaces next to Latin
    words or numbers are kept ("iphone 15 の写真").
    """

    def load_tokenizer(self, name_or_path: str) -> Any:
        """``T5Tokenizer.from_pretrained`` as rinna documents it, with ``do_lower_case = True``.

        With transformers 5 (tokenizers backend) two details of rinna's documented setup need
        help: ``do_lower_case`` is no longer honoured, so a ``Lowercase`` normaliser is added,
        and the Unigram model's unknown-token id is hard-wired to 2, which in rinna's vocabulary
        is ``</s>`` -- an unknown character would end the caption; it is set to ``<unk>``'s id.
        """
        from transformers import T5Tokenizer

        tokenizer = load_pretrained(T5Tokenizer.from_pretrained, name_or_path, "tokenizer")
        # rinna's README: "due to some bug of tokenizer config loading"
        tokenizer.do_lower_case = True
        _fix_tokenizers_backend(tokenizer)
        return tokenizer

    def normalize(self, text: str) -> str:
        """NFKC, lower-case, spaces between Japanese characters removed, others folded."""
        text = unicodedata.normalize("NFKC", text).lower()
        text = _space_between_ja().sub("", text)
        return _SPACES.sub(" ", text).strip()

    def eval_tokenize(self, text: str) -> list[str]:
        """Words by MeCab (fugashi) with the unidic-lite dictionary: "赤い丸" -> ["赤い", "丸"]."""
        return [word.surface for word in _tagger()(self.normalize(text)) if word.surface.strip()]

    def decode_caption(self, tokenizer: Any, ids: Sequence[int]) -> str:
        """Token ids -> clean text: cut at ``</s>``, no special tokens, no "▁", Japanese spacing."""
        ids = cut_at_end(ids, self.end_token_id(tokenizer))
        text = tokenizer.decode(ids, skip_special_tokens=True)
        return self.normalize(text.replace("\u2581", " "))


@cache
def _tagger() -> Any:
    """One fugashi Tagger on unidic-lite per process, created on first use (loads a dictionary)."""
    import fugashi
    import unidic_lite

    dicdir = unidic_lite.DICDIR
    return fugashi.Tagger(f'-d "{dicdir}" -r "{dicdir}/mecabrc"')


def _fix_tokenizers_backend(tokenizer: Any) -> None:
    """Make a tokenizers-backed T5Tokenizer behave like rinna's sentencepiece one (see above).

    A slow (sentencepiece) tokenizer, as transformers 4 gives, needs nothing and is left alone.
    """
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is None or not hasattr(backend, "to_str"):
        return
    from tokenizers import Tokenizer

    state = json.loads(backend.to_str())
    changed = False
    model = state.get("model") or {}
    unk_id = tokenizer.convert_tokens_to_ids(tokenizer.unk_token) if tokenizer.unk_token else None
    if model.get("type") == "Unigram" and unk_id is not None and model.get("unk_id") != unk_id:
        model["unk_id"] = unk_id
        changed = True
    normalizer = state.get("normalizer")
    if not _has_lowercase(normalizer):
        lowercase = {"type": "Lowercase"}
        steps = [lowercase] if normalizer is None else [normalizer, lowercase]
        state["normalizer"] = {"type": "Sequence", "normalizers": steps}
        changed = True
    if changed:
        tokenizer._tokenizer = Tokenizer.from_str(json.dumps(state))


def _has_lowercase(normalizer: dict[str, Any] | None) -> bool:
    if not normalizer:
        return False
    if normalizer.get("type") == "Lowercase":
        return True
    return any(_has_lowercase(n) for n in normalizer.get("normalizers", []))


JAPANESE = JapanesePack(
    code="ja",
    name="Japanese",
    default_lm="rinna/japanese-gpt2-medium",
    segmenter="MeCab (fugashi) + unidic-lite",
    tokenizer_kind="sentencepiece",
    demo=JAPANESE_DEMO,
    retrieval_prompt="似た画像:{captions}。この画像:",
    caption_separator="、",
    identifier_language="ja",
)
