"""The add-on's layers: every import, inside functions too, goes to the importer's layer or
one below it (the layers of blender_addon/__init__.py's docstring). No cycle is possible
then; test_import_layers.py checks that as well, with the same import graph."""

from __future__ import annotations

from pathlib import Path

from import_graph import import_graph

ADDON = Path(__file__).resolve().parent.parent / "blender_addon"
#: blender_addon/__init__.py's layers: a module imports from its own layer or a lower number.
LAYERS = {
    **dict.fromkeys(("client", "plymesh", "cameras", "jobs", "backend_process", "job_requests", "watchers",
                     "walks", "model_watch"), 1),
    **dict.fromkeys(("properties", "preferences", "capture", "walk_capture", "materials", "importer"), 2),
    **dict.fromkeys(("results", "timer", "submit"), 3),
    **dict.fromkeys(("operators", "model_operators", "history", "panels"), 4),
    "__init__": 5,
}


def addon_graph() -> dict[str, set[str]]:
    """module -> the add-on modules it imports (short names; the package itself is __init__)."""
    short = lambda name: name.removeprefix("blender_addon.") if name != "blender_addon" else "__init__"  # noqa: E731
    return {short(m): {short(t) for t in targets} for m, targets in import_graph(ADDON, "blender_addon").items()}


def test_every_import_goes_to_the_same_layer_or_above():
    graph = addon_graph()
    assert set(graph) == set(LAYERS), "give each new add-on module a layer (here and in __init__'s docstring)"
    upward = [f"{module} (layer {LAYERS[module]}) imports {target} (layer {LAYERS[target]})"
              for module, targets in graph.items() for target in sorted(targets) if LAYERS[target] > LAYERS[module]]
    assert not upward, "; ".join(upward)
