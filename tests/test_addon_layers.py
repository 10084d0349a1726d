"""The add-on's import graph, read with `ast` (no bpy, no imports run): no cycle, counting the
imports inside functions, and every import goes to the importer's layer or one above it (the
layers of blender_addon/__init__.py's docstring)."""

from __future__ import annotations

import ast
from pathlib import Path

ADDON = Path(__file__).resolve().parent.parent / "blender_addon"
#: blender_addon/__init__.py's layers: a module imports from its own layer or a lower number.
LAYERS = {
    **dict.fromkeys(("client", "plymesh", "cameras", "jobs", "backend_process", "job_requests", "watchers"), 1),
    **dict.fromkeys(("properties", "preferences", "capture", "importer"), 2),
    **dict.fromkeys(("results", "timer", "submit"), 3),
    **dict.fromkeys(("operators", "history", "panels"), 4),
    "__init__": 5,
}


def relative_imports(path: Path) -> set[str]:
    """The add-on modules `path` imports anywhere in it: `from . import x` gives x (when x is a
    module, not a name from __init__), `from .x import y` and `from .x.z import y` give x."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.ImportFrom) or node.level == 0:
            continue
        if node.module:
            modules.add(node.module.split(".")[0])
        else:
            modules.update(alias.name for alias in node.names if (path.parent / f"{alias.name}.py").is_file())
    return modules


def import_graph(folder: Path = ADDON) -> dict[str, set[str]]:
    """module -> the add-on modules it imports, for every module of the package in `folder`."""
    return {path.stem: relative_imports(path) for path in sorted(folder.glob("*.py"))}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle as [a, b, ..., a], or [] when there is none (depth-first search)."""
    done, path = set(), []

    def visit(node: str) -> list[str]:
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return []
        path.append(node)
        for child in sorted(graph.get(node, ())):
            if cycle := visit(child):
                return cycle
        path.pop()
        done.add(node)
        return []

    for start in sorted(graph):
        if cycle := visit(start):
            return cycle
    return []


def test_the_finder_sees_a_cycle_through_an_import_inside_a_function(tmp_path):
    (tmp_path / "a.py").write_text("from .b import x\n")
    (tmp_path / "b.py").write_text("def f():\n    from . import c\n")
    (tmp_path / "c.py").write_text("from .a import y\n")
    assert find_cycle(import_graph(tmp_path)) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_the_addon_imports_have_no_cycle():
    cycle = find_cycle(import_graph())
    assert not cycle, "import cycle in blender_addon: " + " -> ".join(cycle)


def test_every_import_goes_to_the_same_layer_or_above():
    graph = import_graph()
    assert set(graph) == set(LAYERS), "give each new add-on module a layer (here and in __init__'s docstring)"
    upward = [f"{module} (layer {LAYERS[module]}) imports {target} (layer {LAYERS[target]})"
              for module, targets in graph.items() for target in sorted(targets) if LAYERS[target] > LAYERS[module]]
    assert not upward, "; ".join(upward)
