"""The plugin host: toy plugins registered explicitly, and real entry points in a subprocess."""

import json
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from polycap.errors import DuplicateName
from polycap.hookspecs import hookimpl
from polycap.language import LanguagePack
from polycap.plugins import PluginHost


def language_plugin(code: str) -> types.SimpleNamespace:
    @hookimpl
    def register_languages(register):
        register(code, LanguagePack(code=code, name=f"Toy {code}", default_lm="toy/lm"))

    return types.SimpleNamespace(register_languages=register_languages)


def test_toy_language_plugin_registers_through_the_hook():
    host = PluginHost(load_entry_points=False)
    host.add_plugin(language_plugin("xx"), name="polycap-xx")
    languages = host.registries.languages
    assert languages.get("xx").name == "Toy xx"
    assert languages.source("xx") == "polycap-xx"
    assert "en" in languages  # built-in English registers through the same hook
    assert host.infos["polycap-xx"].hooks == ["register_languages"]


def test_two_plugins_claiming_one_language_make_only_that_name_unusable(capsys):
    def two_languages(code: str, other: str) -> types.SimpleNamespace:
        @hookimpl
        def register_languages(register):
            for name in (code, other):
                register(name, LanguagePack(code=name, name=f"Toy {name}", default_lm="toy/lm"))

        return types.SimpleNamespace(register_languages=register_languages)

    host = PluginHost(load_entry_points=False)
    host.add_plugin(two_languages("xx", "yy"), name="first-plugin")
    host.add_plugin(two_languages("xx", "zz"), name="second-plugin")
    languages = host.registries.languages  # building the registries does not fail
    warning = capsys.readouterr().err
    assert "'xx'" in warning and "first-plugin" in warning and "second-plugin" in warning
    with pytest.raises(DuplicateName) as error:
        languages.get("xx")
    assert "first-plugin" in str(error.value) and "second-plugin" in str(error.value)
    assert languages.get("yy").name == "Toy yy" and languages.get("zz").name == "Toy zz"
    assert "en" in languages and "xx" not in languages
    assert languages.conflicts() == {"xx": ["first-plugin", "second-plugin"]}


def test_a_misspelt_hook_is_a_load_error_not_a_silent_no_op(capsys):
    @hookimpl
    def register_languagse(register):  # misspelt on purpose
        register("xx", LanguagePack(code="xx", name="Toy xx", default_lm="toy/lm"))

    host = PluginHost(load_entry_points=False)
    host.add_plugin(types.SimpleNamespace(register_languagse=register_languagse), "typo-plugin")
    error = host.infos["typo-plugin"].error
    assert error is not None and "register_languagse" in error
    assert "typo-plugin" in capsys.readouterr().err
    assert "en" in host.registries.languages  # the rest of polycap still works


def test_register_datasets_is_an_alias_of_register_caption_formats():
    from polycap.builtin.formats import JsonLines

    @hookimpl
    def register_datasets(register):
        register("old-style", JsonLines())

    host = PluginHost(load_entry_points=False)
    host.add_plugin(types.SimpleNamespace(register_datasets=register_datasets), "old-plugin")
    formats = host.registries.caption_formats
    assert formats.source("old-style") == "old-plugin" and "coco" in formats
    assert host.registries.datasets is formats


def test_a_hook_that_raises_is_recorded_and_the_rest_still_loads(capsys):
    @hookimpl
    def register_mappers(register):
        raise RuntimeError("boom")

    host = PluginHost(load_entry_points=False)
    host.add_plugin(types.SimpleNamespace(register_mappers=register_mappers), name="bad-mappers")
    mappers = host.registries.mappers
    assert "mlp" in mappers and "transformer" in mappers
    assert "boom" in host.infos["bad-mappers"].error
    assert "bad-mappers" in capsys.readouterr().err


def write_distribution(site: Path, name: str, entry_points: dict[str, str]) -> None:
    """A minimal installed distribution (dist-info with entry points) on a path we control."""
    info = site / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    lines = "\n".join(f"{key} = {value}" for key, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[polycap]\n{lines}\n")


def run_polycap(args: list[str], site: Path) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(site)}
    return subprocess.run(
        [sys.executable, "-m", "polycap", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_broken_entry_point_leaves_the_cli_working(tmp_path):
    write_distribution(tmp_path, "polycap_broken", {"broken": "polycap_no_such_module_here"})
    result = run_polycap(["--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout
    assert "plugin 'broken' failed to load" in result.stderr
    listing = run_polycap(["plugins", "list", "--json"], tmp_path)
    assert listing.returncode == 0
    assert "ModuleNotFoundError" in listing.stdout


def test_duplicate_language_from_entry_points_blocks_only_that_language(tmp_path):
    module = textwrap.dedent("""
        from polycap.hookspecs import hookimpl
        from polycap.language import LanguagePack

        @hookimpl
        def register_languages(register):
            register("en", LanguagePack(code="en", name="Other English", default_lm="x"))
    """)
    (tmp_path / "polycap_other_en.py").write_text(module)
    write_distribution(tmp_path, "polycap_other_en", {"other-en": "polycap_other_en"})
    listing = run_polycap(["plugins", "list"], tmp_path)
    assert listing.returncode == 0, listing.stderr
    assert "'en'" in listing.stderr and "other-en" in listing.stderr
    result = run_polycap(["index", "c.json", "--lang", "en", "-o", str(tmp_path / "b")], tmp_path)
    assert result.returncode == 2
    assert "'en'" in result.stderr and "other-en" in result.stderr
    assert "polycap.builtin.english" in result.stderr
    assert "Traceback" not in result.stderr


def test_load_plugins_variable_loads_only_the_named_entry_points(tmp_path):
    for name in ("alpha", "beta"):
        (tmp_path / f"polycap_{name}.py").write_text("")
        write_distribution(tmp_path, f"polycap_{name}", {name: f"polycap_{name}"})
    env_run = run_polycap_env(tmp_path, {"POLYCAP_LOAD_PLUGINS": "beta"})
    assert env_run.returncode == 0, env_run.stderr
    names = {plugin["name"] for plugin in json.loads(env_run.stdout)}
    assert "beta" in names and "alpha" not in names
    none = run_polycap_env(tmp_path, {"POLYCAP_LOAD_PLUGINS": ""})
    names = {plugin["name"] for plugin in json.loads(none.stdout)}
    assert not names & {"alpha", "beta"} and "polycap.builtin.english" in names


def run_polycap_env(site: Path, extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(site), **extra}
    return subprocess.run(
        [sys.executable, "-m", "polycap", "plugins", "list", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_help_loads_plugins_but_not_the_built_in_parts():
    """``polycap --help`` needs only the plugins' commands: no built-in part (they add no
    commands), no encoder module, no torch."""
    import importlib

    from polycap.plugins import BUILTIN_PLUGINS

    for name in BUILTIN_PLUGINS:
        assert not hasattr(importlib.import_module(name), "register_commands"), name
    probe = (
        "import sys, polycap.cli as cli; from polycap.plugins import get_host; "
        "get_host().register_commands(cli.app); "
        "print(sorted(m for m in ('torch', 'transformers', 'open_clip', 'polycap.data.encoding', "
        "'polycap.builtin.encoders') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.strip() == "[]", done.stdout
