"""The history operators: import a job's result again, run it again (same or new seed), copy
its prompt back into the editor, delete it (on the backend too)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import bpy
from bpy.props import BoolProperty, EnumProperty, IntProperty

from .client import BackendError
from .jobs import JobWatcher
from .operators import submit_image_job
from .preferences import make_client, user_folder
from .results import finish
from .timer import WAIT_ITEMS, follow_with_timer
from .watchers import POLL_S, is_followed


class _HistoryOperator:
    index: IntProperty(default=-1, options={"SKIP_SAVE"})

    def entry(self, context):
        history = context.scene.dreamsculpt.history
        index = self.index if self.index >= 0 else context.scene.dreamsculpt.history_index
        return history[index] if 0 <= index < len(history) else None


class DREAMSCULPT_OT_history_import(_HistoryOperator, bpy.types.Operator):
    """Import this job's result again (its mesh, or its novel views)"""

    bl_idname, bl_label = "dreamsculpt.history_import", "Import Again"
    wait: EnumProperty(name="Wait", items=WAIT_ITEMS, default="AUTO", options={"SKIP_SAVE"})

    def execute(self, context):
        entry = self.entry(context)
        if entry is None:
            return {"CANCELLED"}
        if entry.status != "done":
            self.report({"ERROR"}, f"Job {entry.job_id} is {entry.status}; only a finished job can be imported.")
            return {"CANCELLED"}
        try:
            client = make_client(context)
        except BackendError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        watcher = JobWatcher(client, entry.job_id, user_folder("previews"), poll_s=POLL_S, kind=entry.mode)
        if self.wait == "NO" or (self.wait == "AUTO" and not bpy.app.background):   # the timer imports
            follow_with_timer(entry.job_id, watcher, context.scene.name)
            return {"FINISHED"}
        snap = watcher.run_blocking()   # a finished job: one poll and its downloads
        level, message = finish(context, context.scene, entry.job_id, snap)
        self.report({level}, message)
        return {"FINISHED"} if snap.has_result else {"CANCELLED"}


def to_editor(entry, s, settings_too: bool) -> None:
    """Put a history entry's prompt and seed back into the editor; with `settings_too`, also its
    mode and settings (prior, model, reference folder or image source, preset...) to run it again."""
    s.seed = entry.seed
    if entry.mode == "text_to_3d":
        s.prompt, s.negative = entry.prompt, entry.negative
    else:
        s.image_prompt = entry.prompt
    if not settings_too:
        return
    s.mode = entry.mode
    if entry.mode == "text_to_3d":
        s.prior = entry.prior
        s.model = entry.model or s.model
        s.references = entry.references or s.references
        s.preset = entry.preset or s.preset
        return
    body = json.loads(entry.request or "{}")
    s.image_prior = body.get("prior", s.image_prior)
    s.zero123_model = body.get("model") or s.zero123_model
    s.preset = body.get("preset") or s.preset
    s.view_count, s.autoregressive = body.get("count", s.view_count), body.get("autoregressive", False)
    s.text_weight, s.view_planes = body.get("text_weight", 0.0), entry.view_planes
    if "camera" in body:
        s.image_source = "CAMERA"
    else:
        s.image_source, s.image_path = "FILE", entry.image_path


class DREAMSCULPT_OT_history_rerun(_HistoryOperator, bpy.types.Operator):
    """Run this job again, with the same seed or a new one (an image job sends the same image
    and camera again)"""

    bl_idname, bl_label = "dreamsculpt.history_rerun", "Run Again"
    new_seed: BoolProperty(name="New Seed", default=False, options={"SKIP_SAVE"})

    def execute(self, context):
        entry, s = self.entry(context), context.scene.dreamsculpt
        if entry is None:
            return {"CANCELLED"}
        to_editor(entry, s, settings_too=True)
        if self.new_seed:
            s.seed = random.randrange(2**31 - 1)
        if entry.mode == "text_to_3d":
            return bpy.ops.dreamsculpt.generate()
        if is_followed(s.job_id):
            self.report({"ERROR"}, "A job is already running in this scene: wait for it or cancel it.")
            return {"CANCELLED"}
        if not Path(entry.image_path).is_file():
            self.report({"ERROR"}, f"This job's image ({entry.image_path}) is gone. Capture or pick the image again "
                                   "and press Generate.")
            return {"CANCELLED"}
        body = {**json.loads(entry.request), "seed": s.seed}
        return submit_image_job(self, context, entry.image_path, body, entry.source, entry.view_planes, "AUTO")


class DREAMSCULPT_OT_history_copy_prompt(_HistoryOperator, bpy.types.Operator):
    """Copy this job's prompt, negative prompt and seed back into the editor"""

    bl_idname, bl_label, bl_options = "dreamsculpt.history_copy_prompt", "Edit Prompt", {"REGISTER", "UNDO"}

    def execute(self, context):
        entry = self.entry(context)
        if entry is None:
            return {"CANCELLED"}
        to_editor(entry, context.scene.dreamsculpt, settings_too=False)
        return {"FINISHED"}


class DREAMSCULPT_OT_history_delete(_HistoryOperator, bpy.types.Operator):
    """Remove this job from the history and from the backend"""

    bl_idname, bl_label, bl_options = "dreamsculpt.history_delete", "Delete", {"REGISTER", "UNDO"}

    def execute(self, context):
        entry, s = self.entry(context), context.scene.dreamsculpt
        if entry is None:
            return {"CANCELLED"}
        try:
            if not entry.job_id.startswith("local-"):   # never reached the backend
                make_client(context).delete(entry.job_id)
        except BackendError as exc:
            if getattr(exc, "status", None) != 404:   # already gone from the backend: fine
                self.report({"WARNING"}, f"Removed from the history only: {exc}")
        index = list(s.history).index(entry)
        s.history.remove(index)
        s.history_index = min(s.history_index, len(s.history) - 1)
        return {"FINISHED"}


CLASSES = (DREAMSCULPT_OT_history_import, DREAMSCULPT_OT_history_rerun, DREAMSCULPT_OT_history_copy_prompt,
           DREAMSCULPT_OT_history_delete)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)


def unregister() -> None:
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
