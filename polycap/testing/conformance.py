"""The conformance suite every language pack runs (the English pack included).

Two ways to use it:

- pytest: subclass :class:`LanguagePackConformance` in a module named ``test_*.py``, set
  ``code`` (and ``distribution`` for an installed pack), ``sample_texts`` and ``eval_cases``;
  every ``test_*`` method below then runs against the pack;
- anything else: call the ``check_*`` functions, which raise ``AssertionError`` with a message
  that names the pack, the text and what was expected.

The loader checks build a tokenizer of the pack's own class with ``pack.build_tiny_tokenizer``
and a tiny GPT-2 with :func:`polycap.offline.tiny.build_gpt2`, save both to a temporary directory
and load them back through ``pack.load_tokenizer`` / ``pack.load_decoder``: the same code that
loads the real decoder from the hub, with no network.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest

from polycap.errors import PolycapError
from polycap.language import DemoLexicon, LanguagePack
from polycap.plugins import BUILTIN_PLUGINS, ENTRY_POINT_GROUP, PluginHost, canonical_name

DEMO_COLOURS = ("red", "green", "blue", "yellow")
DEMO_SHAPES = ("circle", "square", "triangle")
_CODE = re.compile(r"^[a-z][a-z0-9_-]*$")


def _require(condition: bool, message: str) -> None:
    """``assert`` that survives ``python -O``."""
    if not condition:
        raise AssertionError(message)


# -- finding the pack ------------------------------------------------------------------------


def _fresh_host() -> Any:
    return PluginHost(load_entry_points=False, builtins=False)


def _entry_point(code: str, distribution: str) -> importlib.metadata.EntryPoint:
    found = [
        ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == code
    ]
    _require(
        bool(found),
        f"no entry point {code!r} in group {ENTRY_POINT_GROUP!r}: is "
        f"{distribution} installed (pip install -e .)?",
    )
    mine = [
        ep
        for ep in found
        if ep.dist is not None and canonical_name(ep.dist.name) == canonical_name(distribution)
    ]
    names = ", ".join(sorted({ep.dist.name for ep in found if ep.dist is not None}))
    _require(bool(mine), f"entry point {code!r} belongs to {names}, not to {distribution}")
    return mine[0]


def _builtin_module(code: str) -> Any:
    for module_name in BUILTIN_PLUGINS:
        module = importlib.import_module(module_name)
        if not hasattr(module, "register_languages"):
            continue
        codes: list[str] = []
        module.register_languages(lambda name, _item, _codes=codes: _codes.append(name))
        if code in codes:
            return module
    raise AssertionError(f"no built-in plugin registers the language {code!r}")


def check_plugin_metadata(code: str, distribution: str | None = None) -> LanguagePack:
    """The plugin that should provide ``code`` loads on its own and registers a pack under it.

    ``distribution`` (e.g. ``"polycap-ru"``) names the installed distribution whose entry point
    of group ``polycap`` is called ``code``; ``None`` means a built-in pack. The plugin is
    registered in a fresh plugin manager, so other installed plugins cannot interfere.
    """
    if distribution is None:
        module = _builtin_module(code)
    else:
        entry_point = _entry_point(code, distribution)
        module = entry_point.load()
    host = _fresh_host()
    host.add_plugin(module, code)
    languages = host.registries.languages
    info = host.infos[code]
    _require(info.error is None, f"plugin {code!r} failed: {info.error}")
    _require(
        "register_languages" in info.hooks,
        f"plugin {code!r} does not implement register_languages (hooks: {info.hooks})",
    )
    _require(
        code in languages,
        f"plugin {code!r} registers no language pack {code!r} "
        f"(it registers: {', '.join(languages.names()) or 'nothing'})",
    )
    pack = languages.get(code)
    _require(
        isinstance(pack, LanguagePack),
        f"{code!r} is a {type(pack).__name__}, not a polycap.language.LanguagePack",
    )
    _require(pack.code == code, f"pack registered as {code!r} says its code is {pack.code!r}")
    return pack


def load_pack(code: str, distribution: str | None = None) -> LanguagePack:
    """The pack ``code`` from its own plugin (see :func:`check_plugin_metadata`)."""
    return check_plugin_metadata(code, distribution)


def check_pack_fields(pack: LanguagePack) -> None:
    """Code, name, decoder id, segmenter and tokenizer kind are filled in and valid; the
    retrieval prompt holds ``{captions}`` once and the caption separator is not empty."""
    from polycap.offline.tiny import TOKENIZER_KINDS

    _require(bool(_CODE.match(pack.code)), f"pack code {pack.code!r} is not a lower-case code")
    _require(bool(pack.name.strip()), f"pack {pack.code!r} has no name")
    _require(bool(pack.default_lm.strip()), f"pack {pack.code!r} has no default decoder")
    _require(
        bool(pack.segmenter.strip()), f"pack {pack.code!r} does not name its evaluation segmenter"
    )
    _require(
        pack.tokenizer_kind in TOKENIZER_KINDS,
        f"pack {pack.code!r}: tokenizer_kind {pack.tokenizer_kind!r} is not one of "
        f"{', '.join(TOKENIZER_KINDS)}",
    )
    _require(
        pack.retrieval_prompt.count("{captions}") == 1,
        f"pack {pack.code!r}: retrieval_prompt {pack.retrieval_prompt!r} must hold "
        "'{captions}' exactly once (where the retrieved captions go)",
    )
    _require(bool(pack.caption_separator), f"pack {pack.code!r}: caption_separator is empty")


# -- tiny models -----------------------------------------------------------------------------


def training_texts(pack: LanguagePack, samples: Sequence[str], seed: int = 0) -> list[str]:
    """``samples`` plus the pack's demo captions: what the tiny tokenizer is trained on."""
    texts = list(samples)
    if pack.demo is not None:
        rng = random.Random(seed)
        for colour in DEMO_COLOURS:
            for shape in DEMO_SHAPES:
                for count in (1, 2, 3):
                    texts.extend(pack.demo.describe(colour, shape, count, rng) for _ in range(3))
    return texts


def build_tiny_decoder(
    pack: LanguagePack, texts: Sequence[str], directory: Path, architecture: str = "gpt2"
) -> Path:
    """A tokenizer of the pack's class trained on ``texts`` plus a tiny decoder sized to it
    (``architecture``: ``gpt2`` or ``llama``), saved together in ``directory`` like a hub
    repository. Returns ``directory``."""
    from polycap.offline import tiny

    tokenizer_dir = Path(pack.build_tiny_tokenizer(list(texts), Path(directory)))
    tokenizer = pack.load_tokenizer(str(tokenizer_dir))
    return Path(tiny.DECODER_BUILDERS[architecture](tokenizer, tokenizer_dir))


# -- checks ----------------------------------------------------------------------------------


def check_round_trip(pack: LanguagePack, tokenizer: Any, texts: Sequence[str]) -> None:
    """``decode_caption(encode_caption(text)) == normalize(text)`` for the pack's own texts."""
    _require(len(texts) > 0, f"pack {pack.code!r}: no sample texts to round-trip")
    for text in texts:
        expected = pack.normalize(text)
        _require(
            pack.normalize(expected) == expected,
            f"pack {pack.code!r}: normalize is not idempotent on {text!r}",
        )
        ids = pack.encode_caption(tokenizer, text)
        _require(
            all(isinstance(i, int) for i in ids),
            f"pack {pack.code!r}: encode_caption({text!r}) gave non-int ids {ids!r}",
        )
        decoded = pack.decode_caption(tokenizer, ids)
        _require(
            decoded == expected,
            f"pack {pack.code!r}: round trip of {text!r} gave {decoded!r}, expected {expected!r}",
        )


def check_end_of_caption(pack: LanguagePack, tokenizer: Any, text: str, other: str) -> None:
    """Encoding ends with the end token (once); decoding stops there and shows no specials."""
    end = pack.end_token_id(tokenizer)
    _require(
        isinstance(end, int) and 0 <= end < len(tokenizer),
        f"pack {pack.code!r}: end token id {end!r} is not in the vocabulary",
    )
    _require(
        isinstance(pack.pad_token_id(tokenizer), int),
        f"pack {pack.code!r}: pad_token_id is not an int",
    )
    ids = pack.encode_caption(tokenizer, text)
    _require(
        ids[-1] == end,
        f"pack {pack.code!r}: encode_caption({text!r}) ends with "
        f"{ids[-1]}, not the end token {end}",
    )
    _require(
        end not in ids[:-1],
        f"pack {pack.code!r}: end token {end} inside the caption {text!r}: {ids}",
    )
    expected = pack.normalize(text)
    tail = pack.encode_caption(tokenizer, other)
    after_end = pack.decode_caption(tokenizer, [*ids, *tail])
    _require(
        after_end == expected,
        f"pack {pack.code!r}: decoding did not stop at the end "
        f"token: got {after_end!r}, expected {expected!r}",
    )
    unfinished = pack.decode_caption(tokenizer, ids[:-1])
    _require(
        unfinished == expected,
        f"pack {pack.code!r}: a caption without end token "
        f"decodes to {unfinished!r}, expected {expected!r}",
    )
    specials = [token for token in getattr(tokenizer, "all_special_tokens", []) if token]
    junk = [*ids[:-1], *(i for i in getattr(tokenizer, "all_special_ids", []) if i != end)]
    decoded = pack.decode_caption(tokenizer, junk)
    leaked = [token for token in specials if token in decoded]
    _require(
        not leaked,
        f"pack {pack.code!r}: special tokens {leaked} leak into the decoded caption {decoded!r}",
    )


# the same classes under their transformers 4 and transformers 5 names
_RENAMED = {
    "PreTrainedTokenizerFast": "TokenizersBackend",
    "TokenizersBackend": "PreTrainedTokenizerFast",
    "PreTrainedTokenizer": "PythonBackend",
    "PythonBackend": "PreTrainedTokenizer",
}


def is_tokenizer_of(tokenizer: Any, name: str) -> bool:
    """Whether ``tokenizer`` is a ``name`` as the installed transformers defines it: an
    instance of that class (or of a subclass), its fast or slow twin (``GPT2Tokenizer`` /
    ``GPT2TokenizerFast``: transformers 5 keeps one class under both names, 4 has two), or a
    class renamed between versions (``PreTrainedTokenizerFast`` is ``TokenizersBackend`` in
    transformers 5). Never a comparison of class names alone."""
    import transformers

    if name in _RENAMED:  # the generic bases: slow and fast are different kinds
        names = {name, _RENAMED[name]}
    else:
        base = name.removesuffix("Fast")
        names = {name, base, base + "Fast"}
    for candidate in names:
        cls = getattr(transformers, candidate, None)
        if isinstance(cls, type) and isinstance(tokenizer, cls):
            return True
    return any(cls.__name__ in names for cls in type(tokenizer).__mro__)


def check_loader(
    pack: LanguagePack, directory: Path, text: str, tokenizer_class: str | None = None
) -> None:
    """Tokenizer and decoder load from a local directory; one forward pass works; a missing
    directory is a clear one-line error, not a traceback."""
    import torch

    tokenizer = pack.load_tokenizer(str(directory))
    if tokenizer_class is not None:
        _require(
            is_tokenizer_of(tokenizer, tokenizer_class),
            f"pack {pack.code!r} loaded a {type(tokenizer).__name__}, expected a "
            f"{tokenizer_class} (or a subclass, or its fast/slow twin)",
        )
    decoder = pack.load_decoder(str(directory))
    _require(
        decoder.config.vocab_size >= len(tokenizer),
        f"pack {pack.code!r}: decoder vocabulary ({decoder.config.vocab_size}) is smaller "
        f"than the tokenizer's ({len(tokenizer)})",
    )
    ids = pack.encode_caption(tokenizer, text)
    with torch.no_grad():
        logits = decoder(input_ids=torch.tensor([ids])).logits
    _require(
        tuple(logits.shape[:2]) == (1, len(ids)),
        f"pack {pack.code!r}: unexpected logits shape {tuple(logits.shape)}",
    )
    missing = str(Path(directory) / "no-such-model")
    for loader in (pack.load_tokenizer, pack.load_decoder):
        try:
            loader(missing)
        except PolycapError as error:
            _require(
                "\n" not in str(error) and "no-such-model" in str(error),
                f"pack {pack.code!r}: unclear error for a missing model: {error}",
            )
        else:
            raise AssertionError(f"pack {pack.code!r}: {loader.__name__} loaded a missing path")


def check_eval_tokenize(pack: LanguagePack, cases: Sequence[tuple[str, Sequence[str]]]) -> None:
    """``eval_tokenize`` gives the expected words for the pack's fixtures; empty text, none."""
    _require(len(cases) > 0, f"pack {pack.code!r}: no eval_tokenize fixtures")
    _require(pack.eval_tokenize("") == [], f"pack {pack.code!r}: eval_tokenize('') is not []")
    for text, expected in cases:
        got = pack.eval_tokenize(text)
        _require(
            isinstance(got, list) and all(isinstance(t, str) for t in got),
            f"pack {pack.code!r}: eval_tokenize({text!r}) is not a list of str: {got!r}",
        )
        _require(
            all(t and not any(c.isspace() for c in t) for t in got),
            f"pack {pack.code!r}: eval_tokenize({text!r}) has empty or spaced tokens {got}",
        )
        _require(
            got == list(expected),
            f"pack {pack.code!r} ({pack.segmenter}): "
            f"eval_tokenize({text!r}) gave {got}, "
            f"expected {list(expected)}",
        )


def check_demo_lexicon(pack: LanguagePack, seeds: int = 5) -> None:
    """The demo vocabulary covers every colour and shape, and every caption it writes names
    exactly its own colour and shape as the demo's scorer sees them."""
    from polycap.offline.synthetic import score_captions

    demo = pack.demo
    _require(isinstance(demo, DemoLexicon), f"pack {pack.code!r} has no DemoLexicon")
    assert isinstance(demo, DemoLexicon)  # for type checkers
    _require(
        set(demo.colour_terms) == set(DEMO_COLOURS),
        f"pack {pack.code!r}: colour_terms keys {sorted(demo.colour_terms)}, "
        f"expected {sorted(DEMO_COLOURS)}",
    )
    _require(
        set(demo.shape_terms) == set(DEMO_SHAPES),
        f"pack {pack.code!r}: shape_terms keys {sorted(demo.shape_terms)}, "
        f"expected {sorted(DEMO_SHAPES)}",
    )
    for colour in DEMO_COLOURS:
        for shape in DEMO_SHAPES:
            for count in (1, 2, 3):
                for seed in range(seeds):
                    caption = demo.describe(colour, shape, count, random.Random(seed))
                    _require(
                        isinstance(caption, str) and bool(caption.strip()),
                        f"pack {pack.code!r}: empty demo caption for {colour} {shape}",
                    )
                    scores = score_captions(pack, {"x": caption}, {"x": (colour, shape, count)})
                    _require(
                        scores["pair_accuracy"] == 1.0,
                        f"pack {pack.code!r}: demo caption {caption!r} for {count} {colour} "
                        f"{shape} is not scored as naming exactly that colour and shape",
                    )
                    again = demo.describe(colour, shape, count, random.Random(seed))
                    _require(
                        again == caption,
                        f"pack {pack.code!r}: describe() ignores its random generator",
                    )


# -- the pytest suite ------------------------------------------------------------------------


class LanguagePackConformance:
    """Subclass as ``class TestConformance(LanguagePackConformance)`` and fill in the fields.

    ``code``: the pack's language code; ``distribution``: its distribution (``None`` for a
    built-in pack); ``sample_texts``: a few sentences in the language (captions, with its
    punctuation, digits, letters that need normalising); ``eval_cases``: ``(text, expected
    eval tokens)`` pairs; ``tokenizer_class``: the class the loader should return, if fixed.
    """

    code: ClassVar[str] = ""
    distribution: ClassVar[str | None] = None
    sample_texts: ClassVar[Sequence[str]] = ()
    eval_cases: ClassVar[Sequence[tuple[str, Sequence[str]]]] = ()
    tokenizer_class: ClassVar[str | None] = None

    @pytest.fixture(scope="class")
    @classmethod
    def pack(cls) -> LanguagePack:
        """The pack, loaded from its own plugin."""
        return load_pack(cls.code, cls.distribution)

    @pytest.fixture(scope="class")
    @classmethod
    def tiny_dir(cls, pack: LanguagePack, tmp_path_factory: Any) -> Path:
        """Tokenizer of the pack's class + tiny GPT-2, saved locally."""
        directory = tmp_path_factory.mktemp(f"tiny-{cls.code}")
        return build_tiny_decoder(pack, training_texts(pack, cls.sample_texts), directory)

    @pytest.fixture(scope="class")
    @classmethod
    def tokenizer(cls, pack: LanguagePack, tiny_dir: Path) -> Any:
        """The tiny tokenizer, loaded through the pack's loader."""
        return pack.load_tokenizer(str(tiny_dir))

    @pytest.fixture(scope="class", params=["gpt2", "llama"])
    @classmethod
    def decoder_dir(cls, request: Any, pack: LanguagePack, tmp_path_factory: Any) -> Path:
        """Tokenizer of the pack's class + a tiny decoder of each architecture."""
        directory = tmp_path_factory.mktemp(f"tiny-{cls.code}-{request.param}")
        texts = training_texts(pack, cls.sample_texts)
        return build_tiny_decoder(pack, texts, directory, request.param)

    def test_fixtures_provided(self) -> None:
        _require(bool(self.code), "set `code` on the conformance test class")
        _require(len(self.sample_texts) >= 3, "give at least 3 sample_texts in the language")
        _require(len(self.eval_cases) >= 2, "give at least 2 eval_cases")

    def test_plugin_metadata(self) -> None:
        check_plugin_metadata(self.code, self.distribution)

    def test_pack_fields(self, pack: LanguagePack) -> None:
        check_pack_fields(pack)

    def test_round_trip(self, pack: LanguagePack, tokenizer: Any) -> None:
        check_round_trip(pack, tokenizer, self.sample_texts)

    def test_end_of_caption(self, pack: LanguagePack, tokenizer: Any) -> None:
        texts = list(self.sample_texts)
        for text, other in zip(texts, [*texts[1:], texts[0]], strict=True):
            check_end_of_caption(pack, tokenizer, text, other)

    def test_loader(self, pack: LanguagePack, tiny_dir: Path) -> None:
        check_loader(pack, tiny_dir, self.sample_texts[0], self.tokenizer_class)

    def test_eval_tokenize(self, pack: LanguagePack) -> None:
        check_eval_tokenize(pack, self.eval_cases)

    def test_demo_lexicon(self, pack: LanguagePack) -> None:
        check_demo_lexicon(pack)

    def test_decoder_contract(self, pack: LanguagePack, decoder_dir: Path, tmp_path: Path) -> None:
        from polycap.testing.decoder_contract import check_decoder_contract

        check_decoder_contract(pack, decoder_dir, self.sample_texts, tmp_path)
