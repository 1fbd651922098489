"""The module layers of docs/architecture.md hold: no import runs back up a level; and no
function outside the CLI signatures is long enough, or takes enough parameters, to hide a
missing object."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "polycap"
TOP = ("polycap.cli", "polycap.serve", "polycap.demo.runner", "polycap.compare.compositional")
# eval/ sits above the core: the core imports it for type annotations only, but for
# training's per-epoch validation scores (``train --eval-metrics``), imported when that option
# is on. (retrieval/ is not above it: retrieval-augmented captioning reads banks in the core.)
ABOVE_THE_CORE = ("polycap.eval",)
CORE_USES = {"polycap.train.trainer": {"polycap.train.validation"}}
MAX_LINES = 60
MAX_PARAMETERS = 8


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _imported(tree: ast.AST, typing_too: bool) -> set[str]:
    names: set[str] = set()
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif typing_too or not _is_type_checking(node):
            names |= _imported(node, typing_too)
    return names


def imports(typing_too: bool = True) -> dict[str, set[str]]:
    """Module -> the polycap modules it imports (anywhere in it; type-checking blocks too
    unless ``typing_too`` is false)."""
    found: dict[str, set[str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        names = _imported(ast.parse(path.read_text(encoding="utf-8")), typing_too)
        found[module] = {name for name in names if name.split(".")[0] == "polycap"}
    return found


def inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_offline_is_a_leaf() -> None:
    allowed = ("polycap.offline", "polycap.util.atomic", "polycap.errors")
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


def test_the_core_runs_nothing_from_eval() -> None:
    """The flat core (polycap/*.py below the top) imports eval/ for type annotations only, but
    for the listed uses; built-in plugins (builtin/) register eval's metrics."""
    for module, names in imports(typing_too=False).items():
        if module.count(".") != 1 or any(inside(module, top) for top in TOP):
            continue
        above = {n for n in names if any(inside(n, a) for a in ABOVE_THE_CORE)}
        assert above <= CORE_USES.get(module, set()), f"{module} imports {sorted(above)}"


Function = ast.FunctionDef | ast.AsyncFunctionDef


def _functions(tree: ast.AST, prefix: str = "") -> list[tuple[str, Function]]:
    """Every function and method in ``tree`` (nested ones too), by dotted name."""
    found: list[tuple[str, Function]] = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, Function):
            found.append((prefix + node.name, node))
            found += _functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            found += _functions(node, f"{prefix}{node.name}.")
        else:
            found += _functions(node, prefix)
    return found


def _parameters(function: Function) -> int:
    """Named parameters, keyword-only ones included; ``self``/``cls``, ``*args`` and
    ``**fields`` not counted."""
    args = function.args
    names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
    return len(names) - (1 if names[:1] in (["self"], ["cls"]) else 0)


def test_no_function_hides_a_missing_object() -> None:
    """At most ~60 lines and ~8 parameters a function, outside polycap/cli (whose command
    signatures are the options)."""
    over = []
    for path in sorted(ROOT.rglob("*.py")):
        if path.relative_to(ROOT).parts[0] == "cli":
            continue
        for name, function in _functions(ast.parse(path.read_text(encoding="utf-8"))):
            lines = (function.end_lineno or function.lineno) - function.lineno + 1
            count = _parameters(function)
            if lines > MAX_LINES or count > MAX_PARAMETERS:
                where = f"{path.relative_to(ROOT.parent)}:{function.lineno}"
                over.append(f"{where} {name}: {lines} lines, {count} parameters")
    assert not over, "\n".join(over)
