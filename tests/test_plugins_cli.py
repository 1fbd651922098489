"""``polycap plugins``: list, install (curated names, paths, broken plugins), uninstall, new.

The end-to-end tests install into a *fresh* virtual environment, never into the one running
the tests: ``python -m venv --without-pip`` plus a ``.pth`` file that adds this environment's
site-packages (torch, transformers, pip, setuptools, polycap) behind the new one's, so a pack
installs there with ``--no-deps --no-build-isolation`` in seconds and offline.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from polycap import plugin_install
from polycap.errors import BadInput, UnknownName
from polycap.plugin_install import Probe
from polycap.testing import LanguagePackConformance

ENV = {
    **os.environ,
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    "PIP_NO_INPUT": "1",
    "PYTHONWARNINGS": "ignore",
}


def polycap_cli(
    *args: str, python: str | Path = sys.executable, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m polycap ARGS`` in a new process, as a user would run it."""
    return subprocess.run(
        [str(python), "-m", "polycap", *args],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=cwd,
        check=False,
        timeout=600,
    )


def fresh_venv(directory: Path) -> Path:
    """A new venv that sees this one's packages behind its own; returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(directory)], check=True)
    python = directory / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    parent = sysconfig.get_paths()["purelib"]
    Path(site, "_polycap_parent_env.pth").write_text(
        f"import site; site.addsitedir({parent!r})\n", encoding="utf-8"
    )
    return python


# -- resolving names -----------------------------------------------------------------------------


def test_curated_names_install_from_the_checkout(monkeypatch, tmp_path) -> None:
    (tmp_path / "ru").mkdir()
    (tmp_path / "ru" / "pyproject.toml").write_text("[project]\nname='polycap-ru'\n")
    monkeypatch.setattr(plugin_install, "checkout_languages", lambda: tmp_path)
    target = plugin_install.resolve("ru")
    assert (target.origin, target.pip_args) == ("checkout", ["-e", str(tmp_path / "ru")])
    # a curated pack missing from the checkout, or no checkout at all: the package index
    assert plugin_install.resolve("zh").pip_args == ["polycap-zh"]
    monkeypatch.setattr(plugin_install, "checkout_languages", lambda: None)
    assert plugin_install.resolve("RU").pip_args == ["polycap-ru"]


def test_the_projects_plugins_install_by_short_name(monkeypatch) -> None:
    """faiss and hf-encoders are the project's plugins: from plugins/ in a checkout, else their
    distributions on the index; never ``pip install faiss`` (another project)."""
    plugins = plugin_install.checkout_plugins()
    assert plugins is not None
    for name in ("faiss", "hf-encoders", "FAISS"):
        target = plugin_install.resolve(name)
        folder = plugins / name.lower()
        assert (target.origin, target.pip_args) == ("checkout", ["-e", str(folder)])
    calls: list[list[str]] = []
    plugin_install.install(["faiss"], pip=calls.append, prober=lambda: Probe())
    assert calls == [["install", "--no-build-isolation", "-e", str(plugins / "faiss")]]
    monkeypatch.setattr(plugin_install, "checkout_plugins", lambda: None)
    assert plugin_install.resolve("faiss").pip_args == ["polycap-faiss"]
    assert plugin_install.resolve("hf-encoders").pip_args == ["polycap-hf-encoders"]
    with pytest.raises(UnknownName, match="faiss, hf-encoders"):
        plugin_install.resolve("xq")


def test_the_projects_plugins_uninstall_by_short_name() -> None:
    if plugin_install.installed_distribution("polycap-faiss") is None:
        pytest.skip("polycap-faiss is not installed here")
    calls: list[list[str]] = []
    assert plugin_install.uninstall(["faiss"], pip=calls.append) == ["polycap-faiss"]


def test_the_probe_is_not_shadowed_by_a_polycap_folder_here(monkeypatch, tmp_path) -> None:
    """Run from a folder holding a polycap/ checkout (here: a broken one), the fresh process
    still loads the installed polycap."""
    (tmp_path / "polycap").mkdir()
    (tmp_path / "polycap" / "__init__.py").write_text("raise ImportError('the wrong polycap')\n")
    monkeypatch.chdir(tmp_path)
    found = plugin_install.probe()
    assert found.error is None, found.error
    assert "ru" in found.by_name()


def test_checkout_packs_build_offline_with_installed_setuptools() -> None:
    calls: list[list[str]] = []
    plugin_install.install(["ru"], pip=calls.append, prober=lambda: Probe())
    assert calls[0][:2] == ["install", "--no-build-isolation"]
    assert calls[0][2:] == ["-e", str(plugin_install.checkout_languages() / "ru")]


def test_this_checkout_is_detected() -> None:
    languages = plugin_install.checkout_languages()
    assert languages is not None and (languages / "ru" / "pyproject.toml").is_file()


def test_other_names_pass_through_to_pip(tmp_path) -> None:
    assert plugin_install.resolve("polycap-uk").pip_args == ["polycap-uk"]
    assert plugin_install.resolve("polycap-uk>=0.2").pip_args == ["polycap-uk>=0.2"]
    url = "git+https://example.org/polycap-uk.git"
    assert plugin_install.resolve(url).pip_args == [url]
    assert plugin_install.resolve(str(tmp_path)).pip_args == [str(tmp_path)]
    assert plugin_install.resolve(str(tmp_path), editable=True).pip_args == ["-e", str(tmp_path)]
    with pytest.raises(BadInput, match="no such file"):
        plugin_install.resolve(str(tmp_path / "missing"))


def test_unknown_short_name_is_refused_with_a_hint() -> None:
    with pytest.raises(UnknownName, match=r"No curated language pack 'jp'\. Did you mean 'ja'\?"):
        plugin_install.resolve("jp")


def test_unknown_name_never_reaches_pip() -> None:
    def pip(args):
        raise AssertionError(f"pip must not run: {args}")

    with pytest.raises(UnknownName):
        plugin_install.install(["ru", "xq"], pip=pip, prober=lambda: Probe())


def test_cli_unknown_name_exits_2_with_one_line() -> None:
    result = polycap_cli("plugins", "install", "xq")
    assert result.returncode == 2
    assert "No curated language pack 'xq'" in result.stderr
    assert "Traceback" not in result.stderr and "pip install" not in result.stderr


# -- install report ------------------------------------------------------------------------------


def _record(name: str, error: str | None = None, version: str = "0.1.0") -> dict:
    return {
        "name": name,
        "distribution": f"polycap-{name}",
        "version": version,
        "hooks": ["register_languages"],
        "provides": [] if error else [f"language pack {name}"],
        "error": error,
    }


def test_install_reports_what_a_fresh_process_sees(tmp_path) -> None:
    probes = iter(
        [
            Probe([_record("ru")]),
            Probe([_record("ru"), _record("uk"), _record("bad", "ImportError: no libfoo")]),
        ]
    )
    calls: list[list[str]] = []
    report = plugin_install.install(
        [str(tmp_path)],
        plugin_install.PipOptions(no_deps=True, no_build_isolation=True),
        pip=lambda args: calls.append(list(args)),
        prober=lambda: next(probes),
    )
    assert calls == [["install", "--no-deps", "--no-build-isolation", str(tmp_path)]]
    assert [r["name"] for r in report.changed] == ["uk", "bad"]
    assert [r["name"] for r in report.broken] == ["bad"]


def test_probe_lists_plugins_in_a_fresh_process() -> None:
    found = plugin_install.probe()
    assert found.error is None
    names = found.by_name()
    assert names["polycap.builtin.english"]["provides"] == ["language pack en"]
    assert names["ru"]["distribution"] == "polycap-ru"
    assert names["zh"]["provides"] == ["language pack zh"]


def test_cli_list_json() -> None:
    result = polycap_cli("plugins", "list", "--json")
    assert result.returncode == 0, result.stderr
    records = {r["name"]: r for r in json.loads(result.stdout)}
    assert records["ru"]["provides"] == ["language pack ru"]
    assert records["zh"]["version"] == "0.1.0"


# -- uninstall -----------------------------------------------------------------------------------


def test_uninstall_maps_names_to_distributions() -> None:
    calls: list[list[str]] = []
    removed = plugin_install.uninstall(["ru", "polycap-zh", "zh"], pip=calls.append)
    assert removed == ["polycap-ru", "polycap-zh"]
    assert calls == [["uninstall", "-y", "polycap-ru", "polycap-zh"]]
    with pytest.raises(BadInput, match="polycap itself"):
        plugin_install.uninstall(["polycap"], pip=calls.append)
    with pytest.raises(BadInput, match="no installed plugin"):
        plugin_install.uninstall(["polycap-nonexistent"], pip=calls.append)
    assert len(calls) == 1


# -- new -----------------------------------------------------------------------------------------


def test_new_pack_writes_a_clean_pack(tmp_path) -> None:
    made = plugin_install.new_pack("pt-br", "Brazilian Portuguese", tmp_path / "pack")
    assert (made.distribution, made.module) == ("polycap-pt-br", "polycap_pt_br")
    names = sorted(str(p.relative_to(made.directory)) for p in made.files)
    assert names == [
        "README.md",
        "polycap_pt_br/__init__.py",
        "polycap_pt_br/demo.py",
        "polycap_pt_br/pack.py",
        "pyproject.toml",
        "tests/test_polycap_pt_br.py",
    ]
    module = (made.directory / "polycap_pt_br" / "__init__.py").read_text(encoding="utf-8")
    pack = (made.directory / "polycap_pt_br" / "pack.py").read_text(encoding="utf-8")
    assert "class BrazilianPortuguesePack(LanguagePack)" in pack
    assert "from polycap_pt_br.pack import PACK" in module
    assert 'register("pt-br", PACK)' in module
    assert 'pt-br = "polycap_pt_br"' in (made.directory / "pyproject.toml").read_text()
    for path in made.files:
        assert "{{" not in path.read_text(encoding="utf-8"), path
        if path.suffix == ".py":
            compile(path.read_text(encoding="utf-8"), str(path), "exec")
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if Path(ruff).exists():
        checked = subprocess.run(
            [
                ruff,
                "check",
                "--no-cache",
                "--isolated",
                "--line-length",
                "100",
                "--select",
                "E,F,W,I,B,UP,SIM",
                ".",
            ],
            cwd=made.directory,  # as the pack's author runs it: its own module is first-party
            capture_output=True,
            text=True,
            check=False,
        )
        assert checked.returncode == 0, checked.stdout


def test_new_pack_refuses_bad_codes_and_used_directories(tmp_path) -> None:
    with pytest.raises(BadInput, match="not a language code"):
        plugin_install.new_pack("Pt BR", directory=tmp_path / "a")
    with pytest.raises(BadInput, match="language name"):
        plugin_install.new_pack("xx", 'say "hi"', directory=tmp_path / "b")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "file").write_text("x")
    result = polycap_cli("plugins", "new", "xx", "--dir", str(tmp_path / "used"))
    assert result.returncode == 2 and "not empty" in result.stderr
    assert plugin_install.new_pack("ru", directory=tmp_path / "c").conflict == "polycap-ru"
    assert plugin_install.new_pack("en", directory=tmp_path / "d").conflict == "polycap (built in)"


# -- end to end, in a fresh venv -----------------------------------------------------------------


@pytest.mark.slow
def test_new_pack_installs_lists_and_passes_its_tests(tmp_path) -> None:
    started = time.perf_counter()
    made = polycap_cli(
        "plugins", "new", "xx", "--name", "Testish", "--dir", str(tmp_path / "polycap-xx")
    )
    assert made.returncode == 0, made.stderr
    python = fresh_venv(tmp_path / "venv")
    installed = polycap_cli(
        "plugins",
        "install",
        "-e",
        "--no-deps",
        "--no-build-isolation",
        str(tmp_path / "polycap-xx"),
        python=python,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert "Added plugin 'xx' (polycap-xx 0.1.0): language pack xx" in installed.stdout

    listed = polycap_cli("plugins", "list", "--json", python=python)
    records = {r["name"]: r for r in json.loads(listed.stdout)}
    assert records["xx"]["distribution"] == "polycap-xx"
    assert records["xx"]["provides"] == ["language pack xx"] and records["xx"]["error"] is None

    tests = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=tmp_path / "polycap-xx",
        capture_output=True,
        text=True,
        env=ENV,
        check=False,
        timeout=600,
    )
    assert tests.returncode == 0, tests.stdout[-3000:]
    suite = [name for name in dir(LanguagePackConformance) if name.startswith("test_")]
    summary = tests.stdout.strip().splitlines()[-1]
    passed = re.match(r"(\d+) passed in ", summary)  # nothing skipped, failed or deselected
    assert passed and int(passed.group(1)) >= len(suite), summary
    print(f"plugins new -> passing pack: {time.perf_counter() - started:.1f} s")

    removed = polycap_cli("plugins", "uninstall", "xx", "-y", python=python)
    assert removed.returncode == 0, removed.stderr
    listed = polycap_cli("plugins", "list", "--json", python=python)
    assert "xx" not in {r["name"] for r in json.loads(listed.stdout)}


BROKEN_PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "polycap-broken"
version = "0.0.1"

[project.entry-points.polycap]
broken = "polycap_broken"

[tool.setuptools]
packages = ["polycap_broken"]
"""


def test_installing_a_plugin_that_fails_to_import(tmp_path) -> None:
    package = tmp_path / "polycap-broken"
    (package / "polycap_broken").mkdir(parents=True)
    (package / "pyproject.toml").write_text(BROKEN_PYPROJECT)
    (package / "polycap_broken" / "__init__.py").write_text(
        'raise ImportError("polycap_broken needs libfoo, which is missing")\n'
    )
    python = fresh_venv(tmp_path / "venv")

    installed = polycap_cli(
        "plugins", "install", "-e", "--no-deps", "--no-build-isolation", str(package), python=python
    )
    assert installed.returncode == 1
    message = " ".join(installed.stderr.split())
    assert "plugin 'broken' (polycap-broken 0.0.1) fails to load" in message
    assert "ImportError: polycap_broken needs libfoo" in message
    assert "polycap plugins uninstall polycap-broken" in message
    assert "Traceback" not in installed.stderr

    helped = polycap_cli("--help", python=python)
    assert helped.returncode == 0 and "plugins" in helped.stdout
    listed = polycap_cli("plugins", "list", "--json", python=python)
    assert listed.returncode == 0
    records = {r["name"]: r for r in json.loads(listed.stdout)}
    assert "libfoo" in records["broken"]["error"]
    assert records["ru"]["error"] is None
