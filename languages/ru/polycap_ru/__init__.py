"""polycap-ru: the Russian language pack (entry point ``ru`` of group ``polycap``)."""

from __future__ import annotations

from polycap.hookspecs import Register, hookimpl
from polycap_ru.demo import RUSSIAN_DEMO, describe
from polycap_ru.pack import RUSSIAN, RussianPack

__all__ = ["RUSSIAN", "RUSSIAN_DEMO", "RussianPack", "describe", "register_languages"]


@hookimpl
def register_languages(register: Register) -> None:
    """Register the Russian pack under ``ru``."""
    register("ru", RUSSIAN)
