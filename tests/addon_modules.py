"""The add-on's bpy-free modules, imported outside Blender for unit tests."""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

ADDON = Path(__file__).resolve().parent.parent / "blender_addon"


def load(name: str):
    """Import blender_addon.<name> without running the package's __init__ (which needs bpy)."""
    if "addon" not in sys.modules:
        package = types.ModuleType("addon")
        package.__path__ = [str(ADDON)]
        sys.modules["addon"] = package
    return importlib.import_module(f"addon.{name}")
