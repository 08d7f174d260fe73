"""The layer rule of docs/DESIGN.md §2, checked from the code's own imports.

``modelhost.app``, ``modelhost.api.*``, ``modelhost.grpc.*`` and ``modelhost.cli*`` are the top
layer: nothing below it imports it, nor FastAPI or Starlette, and no two modules import each
other, directly or round a longer cycle. Every import counts (at module level or inside a
function), except those under ``if TYPE_CHECKING:``, which never run. The package's own
``__init__`` is not a node (it re-exports, and every module is inside it); generated
``*_pb2*`` modules are left out.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = "modelhost"
#: The sources, read as text (nothing is imported: a module that fails to import is still seen).
ROOT = Path(__file__).resolve().parents[1] / "src" / PACKAGE
TOP = ("modelhost.app", "modelhost.api", "modelhost.grpc", "modelhost.cli")
WEB_FRAMEWORKS = ("fastapi", "starlette")


@dataclass(slots=True)
class Module:
    """One module of the package and what it imports."""

    name: str
    path: Path
    is_package: bool
    imports: set[str] = field(default_factory=set)
    """Every name imported (absolute; ``module.name`` for ``from module import name``), before
    resolving to a node."""


def _name_of(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join(parts), is_package


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of ``tree`` except the bodies of ``if TYPE_CHECKING:`` (an ``else`` runs)."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _absolute(module: Module, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` names (relative ones resolved)."""
    if not node.level:
        return node.module or ""
    base = module.name.split(".")
    if not module.is_package:
        base.pop()
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _imports(module: Module, tree: ast.AST) -> set[str]:
    found: set[str] = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            # ``from modelhost.api import drift`` lands in the module modelhost.api.drift,
            # ``from modelhost.errors import InvalidInput`` in modelhost.errors (see _node_of)
            target = _absolute(module, node)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def _modules() -> dict[str, Module]:
    modules: dict[str, Module] = {}
    for path in sorted(ROOT.rglob("*.py")):
        if "_pb2" in path.name:
            continue
        name, is_package = _name_of(path)
        module = Module(name, path, is_package)
        module.imports = _imports(module, ast.parse(path.read_text(encoding="utf-8")))
        modules[name] = module
    return modules


MODULES = _modules()


def _node_of(name: str) -> str | None:
    """The module of the package an imported name lands in (its longest known prefix);
    None outside the package and for the package itself."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name if name and name != PACKAGE else None


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, module in MODULES.items():
        if name == PACKAGE:
            continue
        targets = {_node_of(imported) for imported in module.imports}
        graph[name] = {t for t in targets if t is not None and t != name}
    return graph


def _is_top(name: str) -> bool:
    return any(name == top or name.startswith((f"{top}.", f"{top}_")) for top in TOP)


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module ``start`` imports, directly or through others."""
    seen: set[str] = set()
    todo = list(graph.get(start, ()))
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return seen


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import one another (strongly connected components of more
    than one module), each sorted: two modules are in one group when each reaches the other.
    Quadratic, and the package is small."""
    reach = {node: _reachable(graph, node) for node in graph}
    found: list[list[str]] = []
    placed: set[str] = set()
    for node in sorted(graph):
        if node in placed:
            continue
        group = sorted({node} | {other for other in reach[node] if node in reach[other]})
        placed.update(group)
        if len(group) > 1:
            found.append(group)
    return found


def test_the_graph_sees_the_package() -> None:
    graph = _graph()
    assert "modelhost.app" in graph
    assert "modelhost.api.v1" in graph["modelhost.app"]
    assert "modelhost.errors" in graph["modelhost.api.http"]
    assert not any("_pb2" in name for name in graph)


def test_the_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "d"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_nothing_below_the_top_imports_the_top() -> None:
    upward = sorted(
        f"{name} -> {target}"
        for name, targets in _graph().items()
        if not _is_top(name)
        for target in targets
        if _is_top(target)
    )
    assert not upward, "imports of app/api/grpc/cli from below them:\n  " + "\n  ".join(upward)


def test_nothing_below_the_top_imports_a_web_framework() -> None:
    found = sorted(
        f"{name} -> {imported}"
        for name, module in MODULES.items()
        if not _is_top(name)
        for imported in module.imports
        if imported.split(".")[0] in WEB_FRAMEWORKS
    )
    assert not found, "FastAPI/Starlette imported below the top layer:\n  " + "\n  ".join(found)


def test_there_are_no_import_cycles() -> None:
    cycles = _cycles(_graph())
    assert not cycles, "import cycles:\n  " + "\n  ".join(" <-> ".join(c) for c in cycles)
