"""Language fidelity: is a caption in the language asked for at all?

``language-fidelity`` fills two columns, both the share (%) of predictions:

- ``Fidelity``: captions that lingua-language-detector (an offline n-gram identifier) assigns
  to the pack's language, which the pack names as ``identifier_language`` (an ISO 639-1 code),
  among XM3600's 36 languages (:data:`CANDIDATES`) and the pack's;
- ``Script``: for languages with a script of their own (ja: kana and kanji, zh: han, ko: hangul,
  ru: cyrillic), captions whose letters are mostly (> 50 %) in that script: a check that needs no
  model, and the one that catches an English answer to a Japanese prompt even where the
  identifier is unsure.

An empty caption is in no language. :func:`dominant_language` is what ``polycap eval`` uses to
warn when predictions and references are plainly in different languages.
"""

from __future__ import annotations

import importlib.util
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

from polycap.eval.runner import EvalContext
from polycap.parts import MetricScores

MOSTLY = 0.5  # a caption is "in the script" when more than half of its letters are


def _is_kana(ch: str) -> bool:
    return "\u3040" <= ch <= "\u30ff" or "\u31f0" <= ch <= "\u31ff" or "\uff66" <= ch <= "\uff9f"


def _is_han(ch: str) -> bool:
    return (
        "\u3400" <= ch <= "\u4dbf"
        or "\u4e00" <= ch <= "\u9fff"
        or "\uf900" <= ch <= "\ufaff"
        or "\U00020000" <= ch <= "\U0003134f"
        or ch == "\u3005"  # 々
    )


def _is_hangul(ch: str) -> bool:
    return "\uac00" <= ch <= "\ud7af" or "\u1100" <= ch <= "\u11ff" or "\u3130" <= ch <= "\u318f"


def _is_cyrillic(ch: str) -> bool:
    return "\u0400" <= ch <= "\u052f"


SCRIPTS: dict[str, tuple[str, Callable[[str], bool]]] = {
    "ja": ("kana + kanji", lambda ch: _is_kana(ch) or _is_han(ch)),
    "zh": ("han", _is_han),
    "ko": ("hangul", _is_hangul),
    "ru": ("cyrillic", _is_cyrillic),
}


def in_script(text: str, code: str) -> bool:
    """Whether more than half of the letters of ``text`` are in the script of ``code``."""
    rule = SCRIPTS.get(code)
    letters = [ch for ch in text if unicodedata.category(ch).startswith("L")]
    if rule is None or not letters:
        return False
    return sum(1 for ch in letters if rule[1](ch)) / len(letters) > MOSTLY


def lingua_missing() -> str | None:
    if importlib.util.find_spec("lingua") is None:
        return "lingua-language-detector not installed; pip install 'polycap[eval]'"
    return None


# The languages a caption is told apart from: XM3600's 36 as lingua names them (fil = tl,
# no = nb + nn; Cusco Quechua is not among lingua's). All of lingua's 75 would be worse for short
# captions: "кошка спит на диване" is then Bulgarian, a language no captioner here writes.
CANDIDATES = (
    ("ar", "bn", "cs", "da", "de", "el", "en", "es", "fa", "fi", "tl", "fr")
    + ("he", "hi", "hr", "hu", "id", "it", "ja", "ko", "mi", "nl", "nb", "nn")
    + ("pl", "pt", "ro", "ru", "sv", "sw", "te", "th", "tr", "uk", "vi", "zh")
)


@cache
def _detector(extra: str | None = None) -> Any:
    """One lingua detector per process over :data:`CANDIDATES` (and ``extra``, a pack's
    language outside them); its models load lazily, per script met."""
    from lingua import IsoCode639_1, Language, LanguageDetectorBuilder

    codes = [*CANDIDATES, *([extra] if extra and extra not in CANDIDATES else [])]
    languages = []
    for code in codes:
        iso = getattr(IsoCode639_1, code.upper(), None)
        if iso is not None:
            languages.append(Language.from_iso_code_639_1(iso))
    return LanguageDetectorBuilder.from_languages(*languages).build()


def identify(texts: Sequence[str], extra: str | None = None) -> list[str | None]:
    """The ISO 639-1 code lingua assigns to each text (None: empty or undecided); ``extra``:
    a language to consider besides :data:`CANDIDATES`."""
    detector = _detector(extra)
    codes: list[str | None] = []
    for text in texts:
        language = detector.detect_language_of(text) if text.strip() else None
        codes.append(None if language is None else language.iso_code_639_1.name.lower())
    return codes


def script_of(text: str) -> str | None:
    """The script most of the letters of ``text`` are in (``kana`` wherever kana occur, which
    tells Japanese from Chinese), by Unicode character name: LATIN, CYRILLIC, CJK, HANGUL, ..."""
    letters = [ch for ch in text if unicodedata.category(ch).startswith("L")]
    if any(_is_kana(ch) for ch in letters):
        return "kana"
    names = Counter(unicodedata.name(ch, "?").split(" ")[0] for ch in letters)
    return names.most_common(1)[0][0].lower() if names else None


def _dominant(values: Sequence[str | None], share: float) -> tuple[str | None, int]:
    counted = Counter(v for v in values if v is not None)
    if not counted:
        return None, 0
    value, count = counted.most_common(1)[0]
    return (value, count) if count / len(values) >= share else (None, count)


def language_mismatch(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    identifier: bool = False,
    limit: int = 200,
    share: float = 0.8,
) -> str | None:
    """One line when predictions and references are plainly in different languages: at least
    ``share`` of each (first ``limit``) in different scripts, or, with ``identifier``, assigned
    by lingua to different languages; None otherwise."""
    preds = [t for t in predictions[:limit] if t.strip()]
    refs = [t for group in references[:limit] for t in group[:1] if t.strip()]
    if not preds or not refs:
        return None
    checks = [("script", script_of)]
    if identifier and not lingua_missing():
        checks.append(("language", lambda text: identify([text])[0]))
    for what, classify in checks:
        ours, n_ours = _dominant([classify(t) for t in preds], share)
        theirs, n_theirs = _dominant([classify(t) for t in refs], share)
        if ours and theirs and ours != theirs:
            return (
                f"predictions are in {what} {ours!r} ({n_ours} of {len(preds)}), references "
                f"in {theirs!r} ({n_theirs} of {len(refs)}): plainly different languages, so "
                "these scores compare nothing (wrong --lang, or a model of another language?)"
            )
    return None


class LanguageFidelity:
    """``language-fidelity``: the share of captions in the pack's language (lingua) and, for
    ja/zh/ko/ru, in its script."""

    name = "language-fidelity"
    columns = ("Fidelity", "Script")
    lower_is_better = False

    def unavailable(self, ctx: EvalContext) -> str | None:
        code = ctx.pack.identifier_language
        if code is None:
            return f"language pack {ctx.pack.code!r} names no language for the identifier"
        if lingua_missing() and code not in SCRIPTS:
            return lingua_missing()
        return None

    def compute(self, ctx: EvalContext) -> MetricScores:
        code = ctx.pack.identifier_language or ""
        predictions = ctx.predictions
        corpus: dict[str, float] = {}
        per_image: dict[str, list[float]] = {}
        details: dict[str, Any] = {"language": code}
        if not lingua_missing():
            found = identify(predictions, extra=code)
            hits = [100.0 if found_code == code else 0.0 for found_code in found]
            corpus["Fidelity"] = sum(hits) / len(hits)
            per_image["Fidelity"] = hits
            details["identifier"] = (
                "lingua-language-detector, high accuracy, among XM3600's languages"
            )
            details["detected"] = dict(Counter(c or "none" for c in found).most_common())
        if code in SCRIPTS:
            hits = [100.0 if in_script(text, code) else 0.0 for text in predictions]
            corpus["Script"] = sum(hits) / len(hits)
            details["script"] = f"{SCRIPTS[code][0]}: more than half of the letters"
        return MetricScores(corpus, per_image, details)
