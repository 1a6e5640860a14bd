"""The package's import graph has no cycle: each layer imports only from the layers above it.

Every import counts, the ones inside functions too (a function-local import is how a cycle hides).
A package's __init__ re-exporting its modules is an edge like any other."""
import ast
from pathlib import Path

import fastad

PACKAGE = Path(fastad.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, modules: set[str]) -> set[str]:
    """The fastad modules `path` imports, anywhere in it (`from fastad.x import y` counts as
    fastad.x.y when that is a module, else fastad.x)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names)
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    files = [p for p in PACKAGE.rglob("*.py")]
    modules = {module_name(p) for p in files}
    return {module_name(p): imported(p, modules) for p in files}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}
    for root in sorted(graph):
        if state.get(root):
            continue
        stack = [(root, iter(sorted(graph[root])))]
        path = [root]
        state[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                return path[path.index(child):] + [child]
            elif not state.get(child):
                state[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(graph[child]))))
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def submodules_only(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph without the edges from a package to its own submodules (an __init__ that
    re-exports them) and from a module to the package it lives in (importing it for a name it
    re-exports), which Python resolves without a cycle."""
    return {m: {d for d in deps if not d.startswith(m + ".") and not m.startswith(d + ".")}
            for m, deps in graph.items()}


def test_no_import_cycle():
    cycle = find_cycle(submodules_only(import_graph()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
