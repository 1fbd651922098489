"""The shape of polycap/ holds: layers as folders with a rank each, imports only downward or
sideways (module level, in functions and under TYPE_CHECKING alike), no import circle, leaves
that import nothing of polycap but errors, registries looked up only at the top, few modules
at the top level, every module on docs/architecture.md's map, and no function long enough (or
with enough parameters) to hide a missing object."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "polycap"
ARCHITECTURE = ROOT.parent / "docs" / "architecture.md"

# Low to high. A module may import modules of its own rank or lower.
RANKS = {
    "polycap.errors": 0,
    "polycap.version": 0,
    "polycap.parts": 0,
    "polycap.compat": 0,
    "polycap.util": 1,
    "polycap.offline": 1,
    "polycap.registry": 2,
    "polycap.hookspecs": 2,
    "polycap.language": 2,
    "polycap.plugins": 2,
    "polycap.plugin_install": 2,
    "polycap.data": 3,
    "polycap.retrieval": 4,
    "polycap.eval": 4,
    "polycap.model": 5,
    "polycap.interop": 6,
    "polycap.inference": 7,
    "polycap.train": 8,
    "polycap.compare": 9,
    "polycap.builtin": 10,
    "polycap.testing": 10,
    "polycap.demo": 10,
    "polycap.serve": 10,
    "polycap.cli": 11,
    "polycap.__main__": 12,
    "polycap": 12,
}
LEAVES = ("polycap.errors", "polycap.version", "polycap.parts", "polycap.compat")
# only these look the registries up (get_registries / get_host); lower code receives them
REGISTRY_LOOKUPS = (
    "polycap.cli",
    "polycap.serve",
    "polycap.inference",
    "polycap.train",
    "polycap.demo",
    "polycap.testing",
    "polycap.plugins",
)
# lower layers still looking the registries up, each to be handed them by its caller
REGISTRY_LOOKUPS_TO_REMOVE = {
    "polycap.data.captions",
    "polycap.data.encoding",
    "polycap.eval.runner",
    "polycap.eval.versions",
    "polycap.interop.clipcap",
    "polycap.interop.onnx_runtime",
    "polycap.model.checkpoint",
    "polycap.retrieval.backends",
    "polycap.retrieval.bank",
    "polycap.retrieval.search",
}
MAX_TOP_LEVEL_MODULES = 12
MAX_IN_FUNCTION_IMPORTS = (
    135  # of our own modules outside cli/ and builtin/ (211 before the layers)
)
MAX_LINES = 60
MAX_PARAMETERS = 8


def modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


ALL = dict(modules())


def rank(module: str) -> int:
    owner = max((k for k in RANKS if module == k or module.startswith(k + ".")), key=len)
    return RANKS[owner]


def inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _imported(node: ast.AST) -> list[str]:
    """The polycap modules one import statement names (``from polycap import x``: polycap.x
    when x is a module)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "polycap"]
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        if node.module.split(".")[0] != "polycap":
            return []
        subs = [f"{node.module}.{a.name}" for a in node.names]
        found = [name for name in subs if name in ALL]
        return found if len(found) == len(subs) else [*found, node.module]
    return []


def _imports(tree: ast.AST, depth: int = 0) -> Iterator[tuple[str, bool]]:
    """(module, inside a function) for every import of polycap in ``tree``."""
    for node in ast.iter_child_nodes(tree):
        for name in _imported(node):
            yield name, depth > 0
        nested = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        yield from _imports(node, depth + (1 if nested else 0))


IMPORTS = {
    module: list(_imports(ast.parse(path.read_text(encoding="utf-8"))))
    for module, path in ALL.items()
}


def test_every_module_has_a_rank() -> None:
    assert all(rank(module) >= 0 for module in ALL)


def test_imports_run_downward_or_sideways() -> None:
    upward = [
        f"{module} ({rank(module)}) imports {name} ({rank(name)})"
        for module, names in IMPORTS.items()
        for name, _ in names
        if rank(name) > rank(module)
    ]
    assert not upward, "\n".join(upward)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle in ``graph``, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circle_between_modules_at_import_time() -> None:
    graph = {
        module: {n for n, in_function in names if not in_function and n != module}
        for module, names in IMPORTS.items()
    }
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_no_import_circle_between_folders() -> None:
    """Folders (and top-level modules) import each other one way only, in-function imports
    included; inside one folder modules may lean on each other."""

    def folder(module: str) -> str:
        return ".".join(module.split(".")[:2])

    graph: dict[str, set[str]] = {}
    for module, names in IMPORTS.items():
        for name, _ in names:
            if folder(name) != folder(module) and folder(name) != "polycap":
                graph.setdefault(folder(module), set()).add(folder(name))
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_leaves_import_nothing_of_polycap_but_errors() -> None:
    for leaf in LEAVES:
        others = {n for n, _ in IMPORTS[leaf]} - {"polycap.errors"}
        assert not others, f"{leaf} imports {sorted(others)}"


def _looks_up_registries(path: Path) -> bool:
    text = path.read_text(encoding="utf-8")
    return bool(re.search(r"\bget_(registries|host)\(\)", text))


def test_only_the_top_layers_look_up_the_registries() -> None:
    lookups = {
        module
        for module, path in ALL.items()
        if _looks_up_registries(path) and not any(inside(module, t) for t in REGISTRY_LOOKUPS)
    }
    assert lookups <= REGISTRY_LOOKUPS_TO_REMOVE, sorted(lookups - REGISTRY_LOOKUPS_TO_REMOVE)
    assert not (REGISTRY_LOOKUPS_TO_REMOVE - lookups), "done: shrink REGISTRY_LOOKUPS_TO_REMOVE"


def test_in_function_imports_of_our_own_modules_are_capped() -> None:
    """Importing our own modules inside functions hides the dependency graph; outside cli/
    and builtin/ (where commands and plugins load what they use lazily) it is the exception."""
    count = sum(
        1
        for module, names in IMPORTS.items()
        if not inside(module, "polycap.cli") and not inside(module, "polycap.builtin")
        for _, in_function in names
        if in_function
    )
    assert count <= MAX_IN_FUNCTION_IMPORTS, count


def test_few_modules_sit_directly_in_polycap() -> None:
    top = sorted(p.name for p in ROOT.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top


def map_entries(text: str) -> list[str]:
    """The module paths the map's code block names: a folder line (``util/``) holds the
    more indented lines below it."""
    block = text.split("## Module map", 1)[1].split("```", 2)[1]
    named: list[str] = []
    folders: list[tuple[int, str]] = []
    for line in block.splitlines():
        match = re.match(r"^(\s*)(\S+\.py|\S+/)(\s|$)", line)
        if not match:
            continue
        indent, name = len(match.group(1)), match.group(2)
        while folders and folders[-1][0] >= indent:
            folders.pop()
        if name.endswith("/"):
            folders.append((indent, name))
        else:
            named.append("".join(f for _, f in folders) + name)
    return named


def test_the_architecture_map_names_every_module_once() -> None:
    named = [
        n for n in map_entries(ARCHITECTURE.read_text(encoding="utf-8")) if n.startswith("polycap/")
    ]
    expected = sorted(
        "polycap/" + str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py") if p.name != "__init__.py"
    )
    missing = sorted(set(expected) - set(named))
    doubled = sorted({n for n in named if named.count(n) > 1})
    stale = sorted(set(named) - set(expected))
    assert not missing and not doubled and not stale, (missing, doubled, stale)


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
    """At most ~60 lines (signature aside) and ~8 parameters a function; CLI commands, whose
    signatures are their options, are held to the lines only."""
    over = []
    for path in sorted(ROOT.rglob("*.py")):
        command = path.relative_to(ROOT).parts[0] == "cli"
        for name, function in _functions(ast.parse(path.read_text(encoding="utf-8"))):
            lines = (function.end_lineno or function.lineno) - function.body[0].lineno + 1
            count = _parameters(function)
            if lines > MAX_LINES or (count > MAX_PARAMETERS and not command):
                where = f"{path.relative_to(ROOT.parent)}:{function.lineno}"
                over.append(f"{where} {name}: {lines} lines, {count} parameters")
    assert not over, "\n".join(over)
