"""No import cycles: every module of backend/dreamsculpt and of the Blender add-on imports
downwards only. Read with `ast` (see import_graph.py), so a cycle hidden inside a function
(`def f(): from .a import b`) counts as much as one at module level."""

from __future__ import annotations

from pathlib import Path

import pytest
from import_graph import describe, find_cycles, import_graph

ROOT = Path(__file__).resolve().parent.parent


def test_the_backend_has_no_import_cycle():
    graph = import_graph(ROOT / "backend" / "dreamsculpt", "dreamsculpt")
    assert "dreamsculpt.guidance.zero123" in graph   # the whole tree was read, subpackages too
    assert "dreamsculpt.server.app" in graph
    cycles = find_cycles(graph)
    assert not cycles, "modules that import each other:\n" + describe(cycles)


def test_the_addon_has_no_import_cycle():
    cycles = find_cycles(import_graph(ROOT / "blender_addon", "blender_addon"))
    assert not cycles, "modules that import each other:\n" + describe(cycles)


def test_the_cycle_finder_names_a_cycle_and_passes_a_tree():
    # a -> b -> c -> a is a cycle; d leads into it without being on it; e imports itself.
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "x"}, "d": {"a"}, "x": set(), "e": {"e"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"], ["e", "e"]]
    assert describe(find_cycles(graph)) == "a -> b -> c -> a\ne -> e"
    # A diamond is no cycle: a imports b and c, both import d.
    assert find_cycles({"a": {"b", "c"}, "b": {"d"}, "c": {"d"}, "d": set()}) == []


def test_imports_are_resolved_in_every_form(tmp_path):
    files = {
        "__init__.py": "from . import low\n",                   # __init__ -> its submodule
        "low.py": "import os\n",
        "sub/__init__.py": "",
        "sub/mid.py": ("from ..low import thing\n"              # relative, two dots
                       "from . import leaf\n"                   # from package import submodule
                       "from pkg.sub import NAME\n"             # from package import a name
                       "def f():\n    import pkg.top.deep\n"),  # inside a function, dotted past
        "sub/leaf.py": ("from typing import TYPE_CHECKING\n"
                        "if TYPE_CHECKING:\n    from .mid import f\n"),  # never runs
        "top.py": "def g():\n    from .sub.mid import f\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph(tmp_path, "pkg")
    assert graph == {"pkg": {"pkg.low"}, "pkg.low": set(), "pkg.sub": set(),
                     "pkg.sub.mid": {"pkg.low", "pkg.sub.leaf", "pkg.sub", "pkg.top"},
                     "pkg.sub.leaf": set(), "pkg.top": {"pkg.sub.mid"}}
    assert find_cycles(graph) == [["pkg.sub.mid", "pkg.top", "pkg.sub.mid"]]


def test_a_relative_import_above_the_package_is_an_error(tmp_path):
    (tmp_path / "a.py").write_text("from .. import b\n")
    with pytest.raises(ValueError, match="above the top package"):
        import_graph(tmp_path, "pkg")
