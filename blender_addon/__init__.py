"""Dreamsculpt for Blender: text, or the active camera's render, to a coloured 3D mesh (or to
novel views) from a sidebar panel, made by the Dreamsculpt job server (`dreamsculpt serve`)
and imported into the scene.

Modules without bpy (client, jobs, plymesh, cameras, backend_process) talk HTTP, follow jobs,
read meshes and do the camera maths; the bpy modules (properties, preferences, job_requests,
capture, operators, history, panels, importer) capture the camera, show state and build
Blender data on the main thread.
"""

import bpy

from . import backend_process, history, operators, panels, preferences, properties


@bpy.app.handlers.persistent
def _auto_start(*_args) -> None:
    try:
        prefs = preferences.preferences()
    except KeyError:
        return
    if prefs.auto_start and not backend_process.running() and operators.MONITOR.check_now().kind == "not_running":
        try:
            preferences.start_backend()
        except Exception as exc:  # noqa: BLE001 - never break Blender's start-up
            print(f"Dreamsculpt: could not start the backend: {exc}")


def register() -> None:
    properties.register()
    bpy.utils.register_class(preferences.DreamsculptPreferences)
    operators.register()
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
    operators.unregister()
    bpy.utils.unregister_class(preferences.DreamsculptPreferences)
    properties.unregister()
    backend_process.stop()
