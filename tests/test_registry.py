import pytest

from polycap.errors import DuplicateName, UnknownName
from polycap.registry import Registry


def make_languages() -> Registry[str]:
    registry: Registry[str] = Registry("language pack")
    registry.register("ja", "Japanese", source="polycap-ja")
    registry.register("ru", "Russian", source="polycap-ru")
    return registry


def test_register_and_get():
    registry = make_languages()
    assert registry.get("ja") == "Japanese"
    assert registry.names() == ["ja", "ru"]
    assert "ru" in registry and "zh" not in registry
    assert registry.source("ru") == "polycap-ru"


def test_unknown_name_suggests_the_closest_and_lists_installed():
    with pytest.raises(UnknownName) as error:
        make_languages().get("jp")
    assert str(error.value) == "No language pack 'jp'. Did you mean 'ja'? Installed: ja, ru."


def test_unknown_name_without_close_match_has_no_suggestion():
    with pytest.raises(UnknownName) as error:
        make_languages().get("klingon")
    assert "Did you mean" not in str(error.value)


def test_many_names_are_not_all_dumped():
    registry: Registry[int] = Registry("mapper")
    for index in range(30):
        registry.register(f"mapper{index}", index)
    message = registry.unknown_message("nothing-like-it")
    assert "30 installed" in message and "mapper17" not in message


def test_duplicate_names_the_two_plugins():
    registry = make_languages()
    with pytest.raises(DuplicateName) as error:
        registry.register("ja", "Another Japanese", source="polycap-ja-fork")
    assert "'polycap-ja'" in str(error.value) and "'polycap-ja-fork'" in str(error.value)
    assert registry.get("ja") == "Japanese"
