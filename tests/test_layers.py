"""The module layers of docs/architecture.md hold: no import runs back up a level."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "polycap"
TOP = ("polycap.cli", "polycap.serve", "polycap.demo", "polycap.compositional")


def imports() -> dict[str, set[str]]:
    """Module -> the polycap modules it imports (anywhere in it, type-checking blocks too)."""
    found: dict[str, set[str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
        found[module] = {name for name in names if name.split(".")[0] == "polycap"}
    return found


def inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_offline_is_a_leaf() -> None:
    allowed = ("polycap.offline", "polycap.atomic", "polycap.errors")
    for module, names in imports().items():
        if inside(module, "polycap.offline"):
            above = sorted(n for n in names if not any(inside(n, a) for a in allowed))
            assert not above, f"{module} imports {above}"


def test_only_the_top_imports_the_top() -> None:
    for module, names in imports().items():
        if any(inside(module, top) for top in TOP) or module == "polycap.__main__":
            continue
        upward = sorted(n for n in names if any(inside(n, top) for top in TOP))
        assert not upward, f"{module} imports {upward}"
