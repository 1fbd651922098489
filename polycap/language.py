"""LanguagePack: the contract a language plugin fulfils.

A pack names its decoder, loads tokenizer and decoder with the libraries' own calls (by hub
id or local directory), normalises text, decides how a caption ends, and segments text for
evaluation. Packs subclass :class:`LanguagePack` and override what differs.
"""

from __future__ import annotations

import random
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polycap.errors import BadInput, first_line

_SPACES = re.compile(r"\s+")
DEFAULT_RETRIEVAL_PROMPT = "Similar images show: {captions}. This image shows:"
DEFAULT_CAPTION_SEPARATOR = "; "


@dataclass(frozen=True)
class DemoLexicon:
    """Words for the synthetic demo: how to say "N <colour> <shape>" in this language.

    ``describe(colour, shape, count, rng)`` returns one caption; colour keys are
    ``red green blue yellow`` and shape keys ``circle square triangle``.
    ``colour_terms`` / ``shape_terms`` map each key to a string whose presence in a
    normalised caption means that colour / shape was named (a stem where words inflect).
    """

    describe: Callable[[str, str, int, random.Random], str]
    colour_terms: dict[str, str]
    shape_terms: dict[str, str]


@dataclass
class LanguagePack:
    """A language: decoder, tokenizer, normalisation, end-of-caption rule, evaluation segmenter."""

    code: str
    name: str
    default_lm: str
    segmenter: str = "whitespace"
    tokenizer_kind: str = "bpe"  # which tiny tokenizer family stands in for the real one offline
    demo: DemoLexicon | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    # retrieval-augmented captioning (polycap.model.augmented): the text put between the image
    # prefix and the caption; ``{captions}`` is replaced by the retrieved captions joined by
    # ``caption_separator``. Packs write it in their own language.
    retrieval_prompt: str = DEFAULT_RETRIEVAL_PROMPT
    caption_separator: str = DEFAULT_CAPTION_SEPARATOR
    # the language as a language identifier knows it (ISO 639-1, e.g. "ja"), for the
    # ``language-fidelity`` metric; None: the metric does not apply to this pack
    identifier_language: str | None = None

    # -- loading -------------------------------------------------------------------------
    def load_tokenizer(self, name_or_path: str) -> Any:
        """The decoder's tokenizer, by hub id, local directory or ``.gguf`` file."""
        from polycap.util.decoders import load_auto_tokenizer

        return load_pretrained(load_auto_tokenizer, name_or_path, "tokenizer")

    def load_decoder(self, name_or_path: str, dtype: Any = None) -> Any:
        """The causal LM (any ``AutoModelForCausalLM``), by hub id, local directory or
        ``.gguf`` file (de-quantised; see :mod:`polycap.util.decoders`)."""
        from polycap.util.decoders import load_causal_lm

        return load_pretrained(load_causal_lm, name_or_path, "decoder", dtype=dtype)

    # -- text ----------------------------------------------------------------------------
    def normalize(self, text: str) -> str:
        """Unicode NFC, trimmed, runs of white space folded to one space."""
        return _SPACES.sub(" ", unicodedata.normalize("NFC", text)).strip()

    def eval_tokenize(self, text: str) -> list[str]:
        """Words for BLEU/CIDEr etc.; the segmenter is named in ``self.segmenter``."""
        return self.normalize(text).split()

    def format_retrieval_prompt(self, captions: Sequence[str]) -> str:
        """The retrieval prompt with ``captions`` filled in, normalised like captions."""
        joined = self.caption_separator.join(captions)
        return self.normalize(self.retrieval_prompt.replace("{captions}", joined))

    # -- captions as token ids -----------------------------------------------------------
    def end_token_id(self, tokenizer: Any) -> int:
        """The token that ends a caption: appended in training, stops generation."""
        for token_id in (tokenizer.eos_token_id, tokenizer.sep_token_id):
            if token_id is not None:
                return int(token_id)
        raise BadInput(f"tokenizer {tokenizer.name_or_path!r} has no end-of-text token")

    def pad_token_id(self, tokenizer: Any) -> int:
        """Padding id for batches (masked out of attention and loss)."""
        if tokenizer.pad_token_id is not None:
            return int(tokenizer.pad_token_id)
        return self.end_token_id(tokenizer)

    def encode_caption(self, tokenizer: Any, text: str) -> list[int]:
        """Normalised caption → token ids, ending with the end-of-caption token."""
        ids = tokenizer(self.normalize(text), add_special_tokens=False)["input_ids"]
        return [*ids, self.end_token_id(tokenizer)]

    def decode_caption(self, tokenizer: Any, ids: Sequence[int]) -> str:
        """Token ids → caption text, cut at the end token, special tokens removed."""
        ids = cut_at_end(ids, self.end_token_id(tokenizer))
        return self.normalize(tokenizer.decode(ids, skip_special_tokens=True))

    # -- offline stand-ins -----------------------------------------------------------------
    def build_tiny_tokenizer(self, texts: Sequence[str], directory: Path) -> Path:
        """Train a small tokenizer of this pack's class on ``texts`` and save it to
        ``directory`` so that :meth:`load_tokenizer` loads it back (tests, demo)."""
        from polycap.offline import tiny

        return tiny.build_tokenizer(
            self.tokenizer_kind, [self.normalize(t) for t in texts], directory
        )


def cut_at_end(ids: Sequence[int], end: int) -> list[int]:
    """``ids`` up to (not including) the first ``end`` token; all of them when there is none."""
    ids = list(ids)
    return ids[: ids.index(end)] if end in ids else ids


def load_pretrained(loader: Callable[..., Any], name_or_path: str, what: str, **kwargs: Any) -> Any:
    """Call a from_pretrained loader; turn 'not found / offline / not a model / corrupt
    weights' into one line."""
    from safetensors import SafetensorError

    if looks_like_a_path(name_or_path) and not Path(name_or_path).expanduser().exists():
        kind = "file" if name_or_path.lower().endswith(".gguf") else "folder"
        raise BadInput(f"{name_or_path}: no such {kind} (cannot load {what} from it)")
    try:
        return loader(name_or_path, **kwargs)
    except SafetensorError as error:
        raise BadInput(
            f"{_weights_file(name_or_path)}: corrupt or truncated weights ({first_line(error)})"
        ) from None
    except (OSError, ValueError) as error:
        raise BadInput(f"cannot load {what} {name_or_path!r}: {first_line(error)}") from error


def looks_like_a_path(name_or_path: str) -> bool:
    """Whether ``name_or_path`` can only be a local path, not a hub id (``name`` or
    ``namespace/name``): it starts with ``/``, ``.`` or ``~``, or has more than one ``/``."""
    return name_or_path.startswith(("/", ".", "~", "\\")) or name_or_path.count("/") > 1


def _weights_file(name_or_path: str) -> Path:
    """The one safetensors file in a local folder, else the folder."""
    folder = Path(name_or_path).expanduser()
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    return files[0] if len(files) == 1 else folder
