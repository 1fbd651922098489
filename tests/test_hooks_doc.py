"""docs/ agree with the code: every hook documented with its exact signature and docstring
(like Datasette's test_plugin_hooks_are_documented), and every pack in docs/languages.md."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
from cli_runner import flat

from polycap import hookspecs

DOCS = Path(__file__).resolve().parents[1] / "docs"


def hook_specs() -> dict[str, object]:
    """Every function in polycap.hookspecs marked with @hookspec."""
    return {
        name: function
        for name, function in vars(hookspecs).items()
        if inspect.isfunction(function) and hasattr(function, "polycap_spec")
    }


def signature_text(function) -> str:
    """``def name(arg: Type, ...) -> Return`` as written in the source."""
    signature = inspect.signature(function)
    parameters = ", ".join(
        f"{p.name}: {p.annotation}" if p.annotation is not inspect.Parameter.empty else p.name
        for p in signature.parameters.values()
    )
    return f"def {function.__name__}({parameters}) -> {signature.return_annotation}"


@pytest.fixture(scope="module")
def hooks_doc() -> str:
    return (DOCS / "hooks.md").read_text(encoding="utf-8")


def test_there_are_hooks() -> None:
    assert "register_languages" in hook_specs()


@pytest.mark.parametrize("name", sorted(hook_specs()))
def test_hook_is_documented(name: str, hooks_doc: str) -> None:
    function = hook_specs()[name]
    assert f"\n## {name}\n" in hooks_doc, f"docs/hooks.md has no section '## {name}'"
    section = hooks_doc.split(f"\n## {name}\n", 1)[1].split("\n## ", 1)[0]
    assert signature_text(function) in section, (
        f"docs/hooks.md: the signature of {name} should read: {signature_text(function)}"
    )
    docstring = inspect.getdoc(function) or ""
    assert docstring, f"hook {name} has no docstring"
    assert flat(docstring) in flat(section), (
        f"docs/hooks.md: the section on {name} should quote its docstring: {docstring!r}"
    )


def test_no_documented_hook_is_missing_from_hookspecs(hooks_doc: str) -> None:
    documented = set(re.findall(r"^## (register_\w+)$", hooks_doc, flags=re.MULTILINE))
    assert documented == set(hook_specs())


def test_languages_doc_lists_every_installed_pack() -> None:
    from polycap.plugins import PluginHost

    table = (DOCS / "languages.md").read_text(encoding="utf-8")
    languages = PluginHost().registries.languages
    for code, pack in languages.items():
        row = next((line for line in table.splitlines() if line.startswith(f"| `{code}` |")), None)
        assert row is not None, f"docs/languages.md has no row for {code!r}"
        assert f"`{pack.default_lm}`" in row, (
            f"docs/languages.md: the row for {code} should name its decoder {pack.default_lm}"
        )
