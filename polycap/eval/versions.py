"""Versions a score depends on: the scoring packages installed and the language pack's source."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from polycap.language import LanguagePack

VERSION_PACKAGES = (
    "polycap",
    "sacrebleu",
    "pycocoevalcap",
    "open_clip_torch",
    "torch",
    "transformers",
    "fugashi",
    "unidic-lite",
    "jieba",
    "jiwer",
    "lingua-language-detector",
)


def versions(pack: LanguagePack | None = None) -> dict[str, str]:
    """Versions of the packages scores depend on (those installed), and the language pack's."""
    from polycap.version import package_versions

    found = package_versions(VERSION_PACKAGES)
    if pack is not None:
        found["language pack"] = _pack_version(pack)
    return found


def _pack_version(pack: LanguagePack) -> str:
    try:
        from polycap.plugins import get_host

        host = get_host()
        source = host.registries.languages.source(pack.code)
        info = host.infos.get(source)
        if info is not None and info.version:
            return f"{pack.code} ({info.distribution} {info.version})"
        return f"{pack.code} ({source})"
    except Exception:  # a pack passed in directly (tests) is not in the host
        return pack.code
