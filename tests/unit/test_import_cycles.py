"""No import cycles in ``skiplock`` or ``skiplock_operator``.

A cycle works only while every module in it is imported in the right order, and a deferred
(function-level) import only hides one until the day that function is called at import time;
so both kinds count. Read from the source with ``ast`` (nothing is imported), so a cycle is
found however the code runs.

Left out, on purpose:
- imports under ``if TYPE_CHECKING:`` (``typing.TYPE_CHECKING`` too): mypy reads them, Python
  never runs them, so they cannot break an import;
- the implicit import of a parent package (importing ``skiplock.api.app`` runs
  ``skiplock/api/__init__.py`` first): counting it would make every package that re-exports
  its submodules a "cycle", which Python handles by design. ``from .. import x`` still is an
  edge to the package when ``x`` is not a submodule;
- ``importlib.import_module`` with a computed name (no such import is a module-to-module
  dependency this test can see).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGES = (ROOT / "worker" / "skiplock", ROOT / "operator" / "skiplock_operator")


def modules_of(package_dir: Path) -> dict[str, Path]:
    """Every module under ``package_dir``, by dotted name (a package is its __init__.py)."""
    found = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement at any depth (functions, classes, try blocks), except in the
    body of ``if TYPE_CHECKING:`` (its ``else:`` does run)."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _nearest(name: str, known: dict[str, Path]) -> str | None:
    """``name`` or the closest enclosing module we know (``import a.b.c`` where c is a
    function-free attribute path still depends on ``a.b``); None when outside our packages."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in known:
            return candidate
        parts.pop()
    return None


def import_graph(known: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules of ours it imports (no self-edges)."""
    graph: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str | None] = []
            if isinstance(node, ast.Import):
                targets = [_nearest(alias.name, known) for alias in node.names]
            else:
                if node.level:
                    base_parts = package.split(".")
                    if node.level > 1:
                        base_parts = base_parts[: -(node.level - 1)]
                    base = ".".join([*base_parts, *([node.module] if node.module else [])])
                else:
                    base = node.module or ""
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    # `from pkg import sub` imports the submodule; `from mod import name`
                    # depends on mod.
                    targets.append(sub if sub in known else _nearest(base, known))
            graph[name].update(t for t in targets if t is not None and t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Cycles (a -> ... -> a, each the shortest through its first module) that together name
    every module of every strongly connected component of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[set[str]] = []
    counter = 0

    def strongconnect(start: str) -> None:
        # Iterative Tarjan: the graph is small, but recursion depth should not depend on it.
        nonlocal counter
        work: list[tuple[str, Iterator[str]]] = []

        def enter(v: str) -> None:
            nonlocal counter
            index[v] = low[v] = counter
            counter += 1
            stack.append(v)
            on_stack.add(v)
            work.append((v, iter(sorted(graph[v]))))

        enter(start)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    enter(w)
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[v])
                if low[v] == index[v]:
                    component = set()
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.add(w)
                        if w == v:
                            break
                    components.append(component)

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)

    found = []
    for component in components:
        if len(component) < 2:
            continue
        # Cycles through the component's modules, by name, until each module is in one: every
        # module that has to move is named.
        covered: set[str] = set()
        for start in sorted(component):
            if start not in covered:
                cycle = _shortest_cycle(graph, component, start)
                covered.update(cycle)
                found.append(cycle)
    return sorted(found)


def _shortest_cycle(graph: dict[str, set[str]], component: set[str], start: str) -> list[str]:
    """start -> ... -> start, breadth-first inside its strongly connected component."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if w not in previous:
                    previous[w] = v
                    following.append(w)
        frontier = following
    raise AssertionError(f"{start} is in a cycle but none leads back to it")


def test_no_import_cycles() -> None:
    known: dict[str, Path] = {}
    for package in PACKAGES:
        known.update(modules_of(package))
    assert "skiplock.api.app" in known and "skiplock_operator.controller" in known
    found = cycles(import_graph(known))
    assert not found, "import cycles (break each by moving what both sides need into a "\
        "module of its own):\n" + "\n".join(" -> ".join(c) for c in found)


# The checker itself, on small packages written for the purpose: it must see a cycle when
# there is one, or the test above proves nothing.

def _package(tmp_path: Path, files: dict[str, str]) -> dict[str, set[str]]:
    for rel, text in files.items():
        path = tmp_path / "pkg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return import_graph(modules_of(tmp_path / "pkg"))


def test_a_function_level_import_closes_a_cycle(tmp_path: Path) -> None:
    graph = _package(tmp_path, {
        "__init__.py": "",
        "a.py": "from .b import thing\n",
        "b.py": "def f():\n    from . import a\n    return a\nthing = 1\n",
    })
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.a"]]


def test_a_three_module_cycle_across_subpackages(tmp_path: Path) -> None:
    graph = _package(tmp_path, {
        "__init__.py": "",
        "api/__init__.py": "",
        "api/app.py": "def make():\n    from . import routes\n",
        "api/routes.py": "from ..cli import main\n",
        "cli.py": "import pkg.api.app\n",
    })
    assert cycles(graph) == [["pkg.api.app", "pkg.api.routes", "pkg.cli", "pkg.api.app"]]


@pytest.mark.parametrize("guard", ["TYPE_CHECKING", "typing.TYPE_CHECKING"])
def test_type_checking_imports_are_not_edges(tmp_path: Path, guard: str) -> None:
    graph = _package(tmp_path, {
        "__init__.py": "",
        "a.py": "from .b import thing\n",
        "b.py": f"import typing\nfrom typing import TYPE_CHECKING\nif {guard}:\n"
                "    from .a import x\nelse:\n    pass\nthing = 1\n",
    })
    assert cycles(graph) == []
    assert graph["pkg.b"] == set()


def test_the_else_of_type_checking_runs(tmp_path: Path) -> None:
    graph = _package(tmp_path, {
        "__init__.py": "",
        "a.py": "from .b import thing\n",
        "b.py": "if TYPE_CHECKING:\n    pass\nelse:\n    from .a import x\nthing = 1\n",
    })
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.a"]]


def test_names_from_a_module_and_submodules_of_a_package(tmp_path: Path) -> None:
    graph = _package(tmp_path, {
        "__init__.py": "from .core import App\n__version__ = '1'\n",
        "core.py": "from . import __version__, util\nfrom .util import *\n",
        "util.py": "import os\nimport pkg.core.App\n",
    })
    # `from . import __version__` is the package; `util` the submodule; stdlib is nobody's.
    assert graph["pkg.core"] == {"pkg", "pkg.util"}
    assert graph["pkg.util"] == {"pkg.core"}
    assert cycles(graph) == [["pkg", "pkg.core", "pkg"], ["pkg.util", "pkg.core", "pkg.util"]]
