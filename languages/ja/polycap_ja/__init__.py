"""polycap-ja: the Japanese language pack for polycap (entry point ``ja`` in group ``polycap``).

Importing this module is cheap: transformers and fugashi load only when a tokenizer, decoder or
the evaluation segmenter is first used.
"""

from __future__ import annotations

from polycap.hookspecs import Register, hookimpl
from polycap_ja.demo import JAPANESE_DEMO
from polycap_ja.pack import JAPANESE, JapanesePack

__version__ = "0.1.0"
__all__ = ["JAPANESE", "JAPANESE_DEMO", "JapanesePack", "register_languages"]


@hookimpl
def register_languages(register: Register) -> None:
    """Register the Japanese pack as ``ja``."""
    register("ja", JAPANESE)
