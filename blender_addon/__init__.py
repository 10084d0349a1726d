"""Dreamsculpt for Blender: text, or the active camera's render, to a coloured 3D mesh (or to
novel views, or a scene walked along the camera's path) from a sidebar panel, made by the
Dreamsculpt job server (`dreamsculpt serve`) and imported into the scene.

The modules, in layers; each imports only from its own layer or the ones above it, and no
import (counting those inside functions) closes a cycle (tests/test_addon_layers.py):
  1. without bpy: client, plymesh, cameras, jobs, backend_process (HTTP, job threads, meshes,
     camera maths, the backend process), job_requests (job bodies), watchers (what the
     threads watch), walks (a scene walk's depth PNG and frame sequence), model_watch (the
     backend's models, fetched on a thread);
  2. bpy, the parts: properties, preferences, capture, walk_capture, materials, importer;
  3. bpy, the main thread's side of a job: results (snapshot into scene), timer, submit;
  4. bpy, what the user touches: operators, model_operators, history, panels.
"""

import bpy

from . import (
    backend_process,
    history,
    model_operators,
    operators,
    panels,
    preferences,
    properties,
    results,
    timer,
)


@bpy.app.handlers.persistent
def _auto_start(*_args) -> None:
    try:
        prefs = preferences.preferences()
    except KeyError:
        return
    if prefs.auto_start and not backend_process.running() and timer.MONITOR.check_now().kind == "not_running":
        try:
            preferences.start_backend()
        except Exception as exc:  # noqa: BLE001 - never break Blender's start-up
            print(f"Dreamsculpt: could not start the backend: {exc}")


def register() -> None:
    properties.register()
    bpy.utils.register_class(preferences.DreamsculptPreferences)
    results.register()
    timer.register()
    operators.register()
    model_operators.register()
    history.register()
    panels.register()
    bpy.app.handlers.load_post.append(_auto_start)
    if not bpy.app.background:
        bpy.app.timers.register(_auto_start, first_interval=1.0)


def unregister() -> None:
    if _auto_start in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.remove(_auto_start)
    if bpy.app.timers.is_registered(_auto_start):
        bpy.app.timers.unregister(_auto_start)
    panels.unregister()
    history.unregister()
    model_operators.unregister()
    operators.unregister()
    timer.unregister()
    results.unregister()
    bpy.utils.unregister_class(preferences.DreamsculptPreferences)
    properties.unregister()
    backend_process.stop()
