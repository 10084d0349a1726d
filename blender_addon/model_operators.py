"""The preferences' model buttons: Download, Remove and Refresh act on the backend's models
through `preferences.MODELS`, on a thread (the HTTP requests never block Blender's UI), and a
timer redraws the preferences while they are shown and a download runs there."""

from __future__ import annotations

import time

import bpy
from bpy.props import StringProperty

from .preferences import MODELS

#: Seconds between the timer's looks at the models (and between fetches while one downloads).
TICK_S = 1.0


class DREAMSCULPT_OT_download_model(bpy.types.Operator):
    """Download this model on the backend now, ahead of the first job that needs it (it goes on
    in the background there)"""

    bl_idname, bl_label, bl_options = "dreamsculpt.download_model", "Download Model", {"INTERNAL"}
    name: StringProperty(name="Model")

    def execute(self, context):
        name = self.name
        MODELS.act(lambda client: client.download_model(name))
        self.report({"INFO"}, f"Downloading {name} on the backend.")
        return {"FINISHED"}


class DREAMSCULPT_OT_remove_model(bpy.types.Operator):
    """Delete this model from the backend's cache, freeing its space (a job that needs it later
    downloads it again)"""

    bl_idname, bl_label, bl_options = "dreamsculpt.remove_model", "Remove Model", {"INTERNAL"}
    name: StringProperty(name="Model")

    def invoke(self, context, event):
        return context.window_manager.invoke_confirm(self, event)

    def execute(self, context):
        name = self.name
        MODELS.act(lambda client: client.remove_model(name))
        self.report({"INFO"}, f"Removing {name} from the backend's cache.")
        return {"FINISHED"}


class DREAMSCULPT_OT_refresh_models(bpy.types.Operator):
    """Ask the backend again what its cache holds"""

    bl_idname, bl_label, bl_options = "dreamsculpt.refresh_models", "Refresh Models", {"INTERNAL"}

    def execute(self, context):
        MODELS.refresh(force=True)
        return {"FINISHED"}


def models_tick() -> float:
    """While the preferences show the models (drawn in the last few seconds): fetch again each
    second during a download, and redraw when an answer came."""
    if time.monotonic() - MODELS.drawn_at < 3 * TICK_S:
        if MODELS.downloading:
            MODELS.refresh(max_age=TICK_S)
        if MODELS.dirty:
            MODELS.dirty = False
            for window in getattr(bpy.context.window_manager, "windows", []):
                for area in window.screen.areas:
                    if area.type == "PREFERENCES":
                        area.tag_redraw()
    return TICK_S


CLASSES = (DREAMSCULPT_OT_download_model, DREAMSCULPT_OT_remove_model, DREAMSCULPT_OT_refresh_models)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.app.timers.register(models_tick, first_interval=TICK_S, persistent=True)


def unregister() -> None:
    if bpy.app.timers.is_registered(models_tick):
        bpy.app.timers.unregister(models_tick)
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
