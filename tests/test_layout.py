"""The house's shape: no import cycle between lawchatd's modules, and the engine stands alone.

Imports are read from the source, `if TYPE_CHECKING:` blocks and functions included: two
modules that need each other's names are one idea split in two, whether or not Python can
import them."""

from __future__ import annotations

import ast
from pathlib import Path

import lawchatd

ROOT = Path(lawchatd.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _parents(module: str) -> list[str]:
    """Importing a.b.c runs a/__init__ and a/b/__init__ first: those are edges too."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts))]


def _imports(tree: ast.Module, modules: set[str]) -> set[str]:
    # Every import in the file, inside functions too: an import moved into a function to dodge
    # a cycle is still the cycle.
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name)
                found.update(_parents(alias.name))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:  # `from pkg import module` names a module
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
            found.update(_parents(node.module))
    return {m for m in found if m in modules}


def import_graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in ROOT.rglob("*.py")}
    modules = set(paths)
    graph = {}
    for name, path in paths.items():
        imported = _imports(ast.parse(path.read_text()), modules)
        # A module's own packages are already being imported when it runs: not an edge.
        graph[name] = imported - {name} - set(_parents(name)) - {name.rpartition(".")[0]}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    # Tarjan's strongly connected components; any component of two or more is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            strong(v)
    return found


def _reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_no_import_cycle() -> None:
    assert _cycles(import_graph()) == []


def test_fetch_engine_knows_nothing_of_the_daemon() -> None:
    graph = import_graph()
    engine = [m for m in graph if m.startswith("lawchatd.fetch")]
    for module in engine:
        outside = {
            m for m in _reaches(graph, module)
            if not m.startswith(("lawchatd.fetch", "lawchatd.hub"))
            and m not in ("lawchatd", "lawchatd.errors")
        }
        assert outside == set(), f"{module} reaches {sorted(outside)}"


def test_packages_depend_one_way() -> None:
    # The same at the level of lawchatd's packages: the process runs the web face, which uses
    # the services, which use the engine; settings and errors sit under all of them.
    def package(module: str) -> str:
        return ".".join(module.split(".")[:2])

    packages: dict[str, set[str]] = {}
    for module, deps in import_graph().items():
        packages.setdefault(package(module), set()).update(
            package(d) for d in deps if package(d) != package(module)
        )
    assert _cycles({p: deps & packages.keys() for p, deps in packages.items()}) == []
