"""The history operators: import a job's result again, run it again (same or new seed), copy
its prompt back into the editor, delete it (on the backend too). Run Again puts the job's
settings back into the editor and sends what the editor then makes (job_requests.job_body),
the path Generate takes."""

from __future__ import annotations

import json
import random
from pathlib import Path

import bpy
from bpy.props import BoolProperty, EnumProperty, IntProperty

from .client import BackendError
from .job_requests import JobImage, job_body, prompt_to_settings, to_settings, walk_of
from .jobs import JobWatcher
from .preferences import job_owner, make_client, user_folder
from .results import finish
from .submit import refuse_if_busy, submit_job
from .timer import WAIT_ITEMS, follow_with_timer
from .walks import depth_path
from .watchers import POLL_S


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


def recorded_body(entry, s) -> dict:
    """The body a history entry's job was sent with (for an image job, without the image's id).
    A text entry from before bodies were recorded gets one from its fields, with the editor's
    current steps, guidance and mesh settings (what Run Again used then)."""
    if entry.request:
        return {"kind": entry.mode, **json.loads(entry.request)}
    body = {"kind": entry.mode, "seed": entry.seed}
    if entry.mode == "text_to_3d":
        body.update(prompt=entry.prompt, negative=entry.negative, prior=entry.prior, preset=entry.preset,
                    steps=s.steps, guidance_scale=s.guidance_scale,
                    mesh={"resolution": s.mesh_resolution, "threshold": s.threshold})
        body.update({key: value for key, value in (("model", entry.model), ("references", entry.references))
                     if value})
    return body


def to_editor(entry, s, settings_too: bool) -> None:
    """Put a history entry's prompt and seed back into the editor; with `settings_too`, every
    setting its body was made from (mode, prior, model, image source, preset, steps...), so
    that the editor makes the same body again (job_requests.to_settings)."""
    body = recorded_body(entry, s)
    if not settings_too:
        prompt_to_settings(body, s)
        return
    to_settings(body, s)
    if entry.mode == "scene_walk":
        s.walk_start = "RENDER" if entry.image_path else "PROMPT"
    elif entry.mode != "text_to_3d":
        s.view_planes = entry.view_planes
        if s.image_source == "FILE":
            s.image_path = entry.image_path


def entry_image(entry) -> JobImage:
    """An image job's picture as it was sent: its file, and the camera recorded in its body (a
    scene walk's start render: the render and its depth beside it)."""
    if entry.mode == "scene_walk":
        return JobImage(entry.image_path, entry.source, depth_path=str(depth_path(entry.image_path)))
    body = json.loads(entry.request or "{}")
    return JobImage(entry.image_path, entry.source, body.get("camera"), body.get("depth"))


class DREAMSCULPT_OT_history_rerun(_HistoryOperator, bpy.types.Operator):
    """Run this job again, with the same seed or a new one (an image job sends the same image
    and camera again, a scene walk the same path and start render)"""

    bl_idname, bl_label = "dreamsculpt.history_rerun", "Run Again"
    new_seed: BoolProperty(name="New Seed", default=False, options={"SKIP_SAVE"})

    def execute(self, context):
        entry, s = self.entry(context), context.scene.dreamsculpt
        if entry is None:
            return {"CANCELLED"}
        to_editor(entry, s, settings_too=True)
        if self.new_seed:
            s.seed = random.randrange(2**31 - 1)
        if refuse_if_busy(self, s):
            return {"CANCELLED"}
        image = walk = None
        if entry.mode == "scene_walk":
            walk = walk_of(recorded_body(entry, s), entry.frame_start, entry.frame_step, entry.source)
        if entry.mode != "text_to_3d" and (entry.mode != "scene_walk" or entry.image_path):
            image = entry_image(entry)
            missing = [p for p in (image.path, image.depth_path) if p and not Path(p).is_file()]
            if missing:
                self.report({"ERROR"}, f"This job's image ({missing[0]}) is gone. Capture or pick the image "
                                       "again and press Generate.")
                return {"CANCELLED"}
        body = job_body(s, image, bpy.path.abspath, walk, owner=job_owner(context))
        return submit_job(self, context, body, image, entry.view_planes, "AUTO", walk)


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
