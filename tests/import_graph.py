"""The import graph of one Python package, read with `ast` (nothing is imported), and the
cycles in it. Used by test_import_layers.py for backend/dreamsculpt and blender_addon/.

An edge A -> B means module A imports module B somewhere: at module level or inside a
function, absolute (`import pkg.b`, `from pkg.b import x`) or relative (`from . import b`,
`from ..b import x`). `from P import name` is an edge to the submodule P.name when that is a
module of the package, else to P itself. Imports under `if TYPE_CHECKING:` never run and are
left out. A package's `__init__` is the module named after the package (`pkg.sub`, not
`pkg.sub.__init__`); importing a submodule does not add an edge to its parent package,
so an `__init__` that imports its own submodules is an ordinary edge like any other.
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path


def module_names(root: Path, package: str) -> dict[str, Path]:
    """{dotted module name: file} of every .py file under `root`, the folder of `package`."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join([package, *parts])] = path
    return modules


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes inside `if TYPE_CHECKING:` (or `typing.TYPE_CHECKING`) blocks."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
            if name == "TYPE_CHECKING":
                skipped |= {id(inner) for stmt in node.body for inner in ast.walk(stmt)}
    return skipped


def _base(module: str, is_package: bool, level: int) -> str:
    """The package a relative import of `level` dots starts from."""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    if level - 1 > len(parts) - 1:
        raise ValueError(f"{module}: relative import of level {level} goes above the top package")
    return ".".join(parts[: len(parts) - (level - 1)])


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """`name` or its longest prefix that is a module of the package (`import pkg.a.b.C`-style
    dotted names may run past the module)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, modules: dict[str, Path]) -> set[str]:
    """The modules of the package that `module` imports (itself excluded)."""
    path = modules[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    skipped = _type_checking_nodes(tree)
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {_known(alias.name, modules) for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            source = node.module or ""
            if node.level:
                base = _base(module, is_package, node.level)
                source = f"{base}.{source}" if source else base
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                found.add(submodule if submodule in modules else _known(source, modules))
    return found - {None, module}


def import_graph(root: Path | str, package: str) -> dict[str, set[str]]:
    """{module: modules of the same package it imports} for the package in folder `root`."""
    modules = module_names(Path(root), package)
    return {name: imports_of(name, modules) for name in modules}


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, iteratively (no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def _shortest_cycle(graph: dict[str, set[str]], start: str, within: set[str]) -> list[str]:
    """The shortest path start -> ... -> start inside one component (breadth first)."""
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(graph.get(node, ())):
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [*reversed(path), start]
            if child in within and child not in came_from:
                came_from[child] = node
                queue.append(child)
    raise ValueError(f"{start} is on no cycle")


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per group of modules that import each other, each as [a, b, ..., a], starting
    from the group's first module in sorted order; [] when the graph has no cycle."""
    cycles = []
    for component in _strongly_connected(graph):
        first = component[0]
        if len(component) > 1 or first in graph.get(first, ()):
            cycles.append(_shortest_cycle(graph, first, set(component)))
    return sorted(cycles)


def describe(cycles: list[list[str]]) -> str:
    """One line per cycle: 'a -> b -> a'."""
    return "\n".join(" -> ".join(cycle) for cycle in cycles)
