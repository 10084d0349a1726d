"""Running code inside real Blender (the `bpy` module) in a fresh process per test.

Each run gets its own Blender user folders (BLENDER_USER_RESOURCES under the test's tmp),
installs the add-on zip with Blender's own extension installer, runs the test's script and
returns what the script passed to `result(...)` (JSON on the last line of stdout).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ADDON_MODULE = "bl_ext.user_default.dreamsculpt"

PRELUDE = '''
import json, sys, time
import bpy

def result(**values):
    print("RESULT " + json.dumps(values), flush=True)

def install(zip_path):
    status = bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default",
                                                      enable_on_install=True)
    assert status == {"FINISHED"}, status
    return sys.modules["%s"]

def addon_module(name):
    return sys.modules["%s." + name]

def error_of(operator, **options):
    """The message an operator reported as an error (bpy raises it as RuntimeError), or None."""
    try:
        operator(**options)
    except RuntimeError as exc:
        return str(exc)
    return None
''' % (ADDON_MODULE, ADDON_MODULE)


def bpy_available() -> bool:
    try:
        import importlib.util

        return importlib.util.find_spec("bpy") is not None
    except (ImportError, ValueError):
        return False


requires_bpy = pytest.mark.skipif(not bpy_available(),
                                  reason="needs the bpy module (pip install bpy==5.0.1, Python 3.11)")


def script(*parts: str) -> str:
    """Join script pieces written at different indentations."""
    return "\n".join(textwrap.dedent(part) for part in parts)


def run_in_blender(script: str, tmp_path: Path, env: dict | None = None, timeout: float = 300) -> dict:
    """Run `script` (after PRELUDE) in a new Python process with bpy; returns its result()."""
    path = tmp_path / "blender_script.py"
    path.write_text(PRELUDE + textwrap.dedent(script))
    environment = {**os.environ, "BLENDER_USER_RESOURCES": str(tmp_path / "blender-user"), **(env or {})}
    done = subprocess.run([sys.executable, str(path)], env=environment, capture_output=True, text=True,
                          timeout=timeout, cwd=tmp_path)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise AssertionError(f"Blender script failed ({done.returncode}):\n"
                             f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    values = json.loads(lines[-1][len("RESULT "):])
    values["_stdout"] = done.stdout
    return values
