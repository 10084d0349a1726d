"""Operators: generate (every mode), cancel, seed, backend start/stop, and the report that
timers use. Network work happens on background threads (jobs.JobWatcher, the backend
monitor); the timers in timer.py bring their results into the scene."""

from __future__ import annotations

import random
import time

import bpy
from bpy.props import EnumProperty, StringProperty

from . import backend_process, capture, walk_capture
from .client import BackendError
from .job_requests import job_body
from .preferences import job_owner, make_client, start_backend
from .submit import refuse_if_busy, submit_job
from .timer import MONITOR, WAIT_ITEMS
from .watchers import WATCHERS


class DREAMSCULPT_OT_report(bpy.types.Operator):
    """Show a message in Blender's status bar (for results that arrive on a timer)"""

    bl_idname, bl_label, bl_options = "dreamsculpt.report", "Dreamsculpt Report", {"INTERNAL"}
    level: EnumProperty(items=[("INFO", "Info", ""), ("WARNING", "Warning", ""), ("ERROR", "Error", "")])
    message: StringProperty()

    def execute(self, context):
        self.report({self.level}, self.message)
        return {"FINISHED"}


class DREAMSCULPT_OT_generate(bpy.types.Operator):
    """Make the panel's mode from its settings: a mesh from the prompt, a mesh or novel views
    from the active camera's render or an image file, or a scene walk along the camera's path"""

    bl_idname, bl_label, bl_options = "dreamsculpt.generate", "Generate", {"REGISTER"}
    wait: EnumProperty(name="Wait", items=WAIT_ITEMS, default="AUTO", options={"SKIP_SAVE"})

    def execute(self, context):
        s = context.scene.dreamsculpt
        if refuse_if_busy(self, s):
            return {"CANCELLED"}
        image = walk = None
        try:   # nothing in the scene changes on a refusal
            if s.mode == "scene_walk":
                walk, image = walk_capture.walk_job(context, s)
            elif s.mode != "text_to_3d":
                image = capture.job_image(context, s)
        except BackendError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        body = job_body(s, image, bpy.path.abspath, walk, owner=job_owner(context))
        return submit_job(self, context, body, image, s.view_planes and s.mode == "novel_views", self.wait, walk)


class DREAMSCULPT_OT_cancel(bpy.types.Operator):
    """Stop the running job (it keeps a checkpoint on the backend)"""

    bl_idname, bl_label = "dreamsculpt.cancel", "Cancel"

    @classmethod
    def poll(cls, context):
        return bool(context.scene.dreamsculpt.job_id)

    def execute(self, context):
        s = context.scene.dreamsculpt
        watcher = WATCHERS.get(s.job_id, (None, ""))[0]
        if watcher is not None and not watcher.job_id:   # still uploading: cancel once it has an id
            watcher.request_cancel()
            s.job_stage = "cancelling"
            return {"FINISHED"}
        try:
            make_client(context).cancel(s.job_id)
        except BackendError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        s.job_stage = "cancelling"
        return {"FINISHED"}


class DREAMSCULPT_OT_randomize_seed(bpy.types.Operator):
    """Pick a new random seed"""

    bl_idname, bl_label, bl_options = "dreamsculpt.randomize_seed", "Random Seed", {"REGISTER", "UNDO"}

    def execute(self, context):
        context.scene.dreamsculpt.seed = random.randrange(2**31 - 1)
        return {"FINISHED"}


class DREAMSCULPT_OT_start_backend(bpy.types.Operator):
    """Start `dreamsculpt serve` on this machine (a child of Blender, stopped when Blender quits)"""

    bl_idname, bl_label = "dreamsculpt.start_backend", "Start Backend"

    def execute(self, context):
        if MONITOR.check_now().kind in ("connected", "wrong_token", "version_mismatch"):
            self.report({"INFO"}, "A backend is already answering at that address.")
            return {"FINISHED"}
        try:
            start_backend(context)
        except BackendError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        if bpy.app.background:  # scripts want it ready when this returns
            deadline = time.monotonic() + 120
            while MONITOR.check_now().kind == "not_running" and time.monotonic() < deadline:
                if not backend_process.running():
                    self.report({"ERROR"}, f"The backend exited (code {backend_process.exit_code()}); see "
                                           "the backend log in the add-on's preferences.")
                    return {"CANCELLED"}
                time.sleep(0.25)
        MONITOR.refresh(force=True)
        self.report({"INFO"}, "Backend starting…")
        return {"FINISHED"}


class DREAMSCULPT_OT_stop_backend(bpy.types.Operator):
    """Stop the backend this Blender started (a running job resumes at its next start)"""

    bl_idname, bl_label = "dreamsculpt.stop_backend", "Stop Backend"

    @classmethod
    def poll(cls, context):
        return backend_process.running()

    def execute(self, context):
        backend_process.stop()
        MONITOR.refresh(force=True)
        return {"FINISHED"}


class DREAMSCULPT_OT_refresh_backend(bpy.types.Operator):
    """Check the backend again"""

    bl_idname, bl_label = "dreamsculpt.refresh_backend", "Check Backend"

    def execute(self, context):
        MONITOR.refresh(force=True)
        return {"FINISHED"}


CLASSES = (DREAMSCULPT_OT_report, DREAMSCULPT_OT_generate, DREAMSCULPT_OT_cancel, DREAMSCULPT_OT_randomize_seed,
           DREAMSCULPT_OT_start_backend, DREAMSCULPT_OT_stop_backend, DREAMSCULPT_OT_refresh_backend)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)


def unregister() -> None:
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
