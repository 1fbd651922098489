"""The Makefile finds any Python >= 3.10 (or the one PYTHON= names), and only `make test`
installs the browser. Checked with ``make -n`` (what would run) against a scratch venv path."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make here")


def make(tmp_path: Path, *args: str, dry: bool = True) -> subprocess.CompletedProcess[str]:
    """make in the checkout with only ``tmp_path/bin``, /usr/bin and /bin on PATH."""
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"}
    env.pop("PYTHON", None)
    command = ["make", "-C", str(ROOT), *(["-n"] if dry else []), f"VENV={tmp_path}/venv", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, check=False)


@pytest.fixture
def pythons(tmp_path: Path) -> Path:
    """``bin/python3.13`` that is too old (exits 1 on the version check) and ``python3.12``,
    this Python (3.10 or newer)."""
    (tmp_path / "bin").mkdir()
    old = tmp_path / "bin" / "python3.13"
    old.write_text("#!/bin/sh\nexit 1\n")
    old.chmod(0o755)
    (tmp_path / "bin" / "python3.12").symlink_to(sys.executable)
    return tmp_path


def test_the_newest_python_that_is_3_10_or_newer_is_chosen(pythons: Path) -> None:
    result = make(pythons, "demo")
    assert result.returncode == 0, result.stderr
    assert "python3.12 -m venv" in result.stdout
    assert "python3.13 -m venv" not in result.stdout


def test_python_can_be_named(pythons: Path) -> None:
    result = make(pythons, "demo", f"PYTHON={sys.executable}")
    assert f"{sys.executable} -m venv" in result.stdout


def test_a_python_too_old_is_one_clear_line(pythons: Path) -> None:
    result = make(pythons, "setup", f"PYTHON={pythons / 'bin' / 'python3.13'}", dry=False)
    assert result.returncode != 0
    assert "polycap needs Python >= 3.10" in result.stderr
    assert "PYTHON=/path/to/python3.x" in result.stderr
    assert not (pythons / "venv").exists()


def test_only_make_test_installs_the_browser(pythons: Path) -> None:
    assert "install_browser.sh" not in make(pythons, "demo").stdout
    assert "install_browser.sh" in make(pythons, "test").stdout


def test_the_setup_installs_no_extra_for_training(pythons: Path) -> None:
    # training runs on the core install (accelerate is a core dependency)
    assert "dist" not in make(pythons, "demo").stdout.split("pip install -e '")[1].split("'")[0]
