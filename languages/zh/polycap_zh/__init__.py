"""polycap-zh: the Chinese language pack (entry point ``zh`` of group ``polycap``)."""

from __future__ import annotations

from polycap.hookspecs import Register, hookimpl
from polycap_zh.demo import CHINESE_DEMO, describe
from polycap_zh.pack import CHINESE, SEGMENTERS, ChinesePack

__all__ = ["CHINESE", "CHINESE_DEMO", "SEGMENTERS", "ChinesePack", "describe", "register_languages"]


@hookimpl
def register_languages(register: Register) -> None:
    """Register the Chinese pack under ``zh``."""
    register("zh", CHINESE)
