"""``pip install .`` alone trains: every library the training and demo code imports (at module
level or inside a function) is a core dependency in pyproject.toml, not an extra."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# what `polycap train` and `polycap demo` run: the commands, the trainer, the demo, the model,
# the data they read, the tiny offline models the demo builds, and retrieval/compare (the
# demo's closing comparison)
TRAINING_PATH = [
    "polycap/cli/train.py",
    "polycap/cli/demo.py",
    "polycap/train",
    "polycap/demo",
    "polycap/util",
    "polycap/model",
    "polycap/data/encoding.py",
    "polycap/data/features.py",
    "polycap/data/images.py",
    "polycap/offline/synthetic.py",
    "polycap/offline/pretrain.py",
    "polycap/retrieval",
    "polycap/compare",
]
# imported only for a choice the core does not make by itself: the sentencepiece kind of
# polycap.offline.tiny (packs that use sentencepiece depend on it themselves); tomli stands in
# for the standard library's tomllib on Python 3.10 only (a core dependency with that marker)
OPTIONAL = {"sentencepiece", "tomli"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
    return names


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def core_dependencies() -> set[str]:
    if sys.version_info < (3, 11):
        pytest.skip("tomllib needs Python 3.11")
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    names = (re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0] for spec in project["dependencies"])
    return {_canonical(name) for name in names}


def training_imports() -> set[str]:
    found: set[str] = set()
    for entry in TRAINING_PATH:
        path = ROOT / entry
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            found |= _imports(file)
    return found


def test_training_and_the_demo_need_only_core_dependencies() -> None:
    core = core_dependencies()
    distributions = importlib.metadata.packages_distributions()
    missing: dict[str, list[str]] = {}
    for module in sorted(training_imports()):
        if module in sys.stdlib_module_names or module == "polycap" or module in OPTIONAL:
            continue
        owners = {_canonical(d) for d in distributions.get(module, [])}
        assert owners, f"{module}: imported by the training path but not installed"
        if not owners & core:
            missing[module] = sorted(owners)
    assert not missing, f"imported by train/demo, not in [project] dependencies: {missing}"


def test_the_scan_sees_function_level_imports() -> None:
    # the trainer imports accelerate inside functions (polycap --help stays fast)
    assert "accelerate" in training_imports()
    assert "torch" in training_imports()
