"""Operators: generate, cancel, seed, backend start/stop, history. Network work happens on
background threads (jobs.JobWatcher, BackendMonitor); a timer on the main thread copies
their results into the Scene and builds meshes."""

from __future__ import annotations

import random
import threading
import time

import bpy
from bpy.props import BoolProperty, EnumProperty, IntProperty, StringProperty

from . import backend_process, importer
from .client import BackendError, BackendState
from .jobs import JobWatcher, Snapshot
from .preferences import addon_version, make_client, start_backend, user_folder

POLL_S = 0.25
#: job id -> (watcher, scene name)
WATCHERS: dict[str, tuple[JobWatcher, str]] = {}


class BackendMonitor:
    """The backend's state for the panel, checked on a thread (never in draw())."""

    def __init__(self):
        self.state = BackendState("checking", "Checking the backend…")
        self.checked_at = 0.0
        self.dirty = False
        self._thread: threading.Thread | None = None

    def refresh(self, force: bool = False, max_age: float = 3.0) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        if not force and time.monotonic() - self.checked_at < max_age:
            return
        try:
            client = make_client()
        except BackendError as exc:
            self.state, self.checked_at, self.dirty = BackendState("offline", str(exc)), time.monotonic(), True
            return
        self.checked_at = time.monotonic()
        self._thread = threading.Thread(target=self._check, args=(client,), daemon=True)
        self._thread.start()

    def _check(self, client) -> None:
        self.state = client.state(addon_version())
        self.checked_at, self.dirty = time.monotonic(), True

    def check_now(self) -> BackendState:
        try:
            self.state = make_client().state(addon_version())
        except BackendError as exc:
            self.state = BackendState("offline", str(exc))
        self.checked_at = time.monotonic()
        return self.state


MONITOR = BackendMonitor()


def request_body(s) -> dict:
    """The POST /jobs body for the panel's settings."""
    body = {"kind": "text_to_3d", "prompt": s.prompt, "negative": s.negative, "prior": s.prior,
            "seed": s.seed, "preset": s.preset, "mesh": {}}
    if s.prior == "sd":
        body["model"] = s.model
    if s.prior == "references":
        body["references"] = bpy.path.abspath(s.references)
    if s.steps:
        body["steps"] = s.steps
    if s.guidance_scale:
        body["guidance_scale"] = s.guidance_scale
    if s.mesh_resolution:
        body["mesh"]["resolution"] = s.mesh_resolution
    if s.threshold:
        body["mesh"]["threshold"] = s.threshold
    return body


def _object_name(prompt: str) -> str:
    return (" ".join(prompt.split())[:60] or "Dreamsculpt").strip()


def _entry(settings, job_id: str):
    return next((e for e in settings.history if e.job_id == job_id), None)


def apply_snapshot(scene, job_id: str, snap: Snapshot) -> None:
    """Copy a job's progress into the scene (only changed values: no needless redraws)."""
    s = scene.dreamsculpt
    job = snap.job
    values = {"job_status": snap.status, "job_stage": job.get("stage", ""), "job_step": int(job.get("step", 0)),
              "job_total": int(job.get("total", 0)), "job_eta": float(job.get("eta_s") or 0.0)}
    if s.job_id == job_id:
        for key, value in values.items():
            if getattr(s, key) != value:
                setattr(s, key, value)
    entry = _entry(s, job_id)
    if entry is not None and entry.status != snap.status:
        entry.status = snap.status


def finish(context, scene, job_id: str, snap: Snapshot) -> tuple[str, str]:
    """Import a finished job's mesh or record why there is none. Returns (level, message)."""
    s = scene.dreamsculpt
    entry = _entry(s, job_id)
    if s.job_id == job_id:
        s.job_id = ""
    if snap.mesh is None:
        status = snap.status if snap.status in ("failed", "cancelled") else "failed"
        if entry is not None:
            entry.status, entry.error = status, snap.error
        if status == "cancelled" and not snap.error:
            return "INFO", f"Job {job_id} was cancelled."
        s.last_error = snap.error
        return "ERROR", snap.error or f"Job {job_id} failed."
    prompt = entry.prompt if entry else s.prompt
    replace = None
    if entry is not None and s.replace_previous and entry.object_name:
        replace = bpy.data.objects.get(entry.object_name)
    obj = importer.import_result(context, snap.mesh, _object_name(prompt), {
        "dreamsculpt_job_id": job_id, "dreamsculpt_prompt": prompt,
        "dreamsculpt_seed": entry.seed if entry else s.seed,
        "dreamsculpt_model": (entry.model if entry else s.model) or (entry.prior if entry else s.prior)}, replace)
    if entry is not None:
        entry.status, entry.object_name, entry.error = "done", obj.name, ""
    s.last_error = ""
    return "INFO", f"Imported '{obj.name}' ({snap.mesh.vertex_count} vertices, {snap.mesh.face_count} faces)."


def _redraw() -> None:
    for window in getattr(bpy.context.window_manager, "windows", []):
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()


def tick() -> float | None:
    """The poll timer: copy each watcher's snapshot into its scene; import finished jobs."""
    for job_id, (watcher, scene_name) in list(WATCHERS.items()):
        scene = bpy.data.scenes.get(scene_name)
        if scene is None:  # the scene was deleted or another file loaded
            watcher.stop()
            del WATCHERS[job_id]
            continue
        snap = watcher.snapshot()
        apply_snapshot(scene, job_id, snap)
        if snap.preview_version:
            from . import panels
            panels.show_preview(scene, job_id, snap.preview_path, snap.preview_version)
        if snap.finished:
            del WATCHERS[job_id]
            level, message = finish(bpy.context, scene, job_id, snap)
            _report(level, message)
    if MONITOR.dirty or WATCHERS:
        MONITOR.dirty = False
        _redraw()
    return POLL_S if WATCHERS else None


def ui_tick() -> float:
    """Keeps the backend box fresh while no job runs (threads do the checking)."""
    if MONITOR.dirty:
        MONITOR.dirty = False
        _redraw()
    return 1.0


def _report(level: str, message: str) -> None:
    print(f"Dreamsculpt: {message}")
    try:
        bpy.ops.dreamsculpt.report(level=level, message=message)
    except RuntimeError:
        pass


class DREAMSCULPT_OT_report(bpy.types.Operator):
    """Show a message in Blender's status bar (for results that arrive on a timer)"""

    bl_idname, bl_label, bl_options = "dreamsculpt.report", "Dreamsculpt Report", {"INTERNAL"}
    level: EnumProperty(items=[("INFO", "Info", ""), ("WARNING", "Warning", ""), ("ERROR", "Error", "")])
    message: StringProperty()

    def execute(self, context):
        self.report({self.level}, self.message)
        return {"FINISHED"}


class DREAMSCULPT_OT_generate(bpy.types.Operator):
    """Send the prompt to the Dreamsculpt backend and import the mesh it makes"""

    bl_idname, bl_label, bl_options = "dreamsculpt.generate", "Generate", {"REGISTER"}
    wait: EnumProperty(name="Wait", items=[("AUTO", "Auto", "Wait only in background mode (blender -b)"),
                                           ("YES", "Yes", "Block until the job ends"),
                                           ("NO", "No", "Return at once; a timer follows the job")],
                       default="AUTO", options={"SKIP_SAVE"})

    def execute(self, context):
        s = context.scene.dreamsculpt
        if s.job_id and s.job_id in WATCHERS:
            self.report({"ERROR"}, "A job is already running in this scene: wait for it or cancel it.")
            return {"CANCELLED"}
        try:
            client = make_client(context)
            job = client.submit(request_body(s))
        except BackendError as exc:   # nothing in the scene changes
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        entry = s.history.add()
        entry.job_id, entry.prompt, entry.negative, entry.prior = job["id"], s.prompt, s.negative, s.prior
        entry.model = s.model if s.prior == "sd" else ""
        entry.references, entry.preset, entry.seed = s.references, s.preset, s.seed
        entry.status, entry.created = job["status"], time.strftime("%Y-%m-%d %H:%M")
        s.history_index = len(s.history) - 1
        s.job_id, s.job_status, s.job_step, s.job_total, s.last_error = job["id"], job["status"], 0, job["total"], ""
        watcher = JobWatcher(client, job["id"], user_folder("previews"), poll_s=POLL_S)
        if self.wait == "YES" or (self.wait == "AUTO" and bpy.app.background):
            return self._follow_here(context, watcher, job["id"])
        WATCHERS[job["id"]] = (watcher.start(), context.scene.name)
        if not bpy.app.timers.is_registered(tick):
            bpy.app.timers.register(tick, first_interval=POLL_S)
        self.report({"INFO"}, f"Job {job['id']} queued.")
        return {"FINISHED"}

    def _follow_here(self, context, watcher: JobWatcher, job_id: str):
        shown = {"line": ""}

        def progress(snap: Snapshot) -> None:
            job = snap.job
            line = f"{snap.status} {job.get('stage', '')} {job.get('step', 0)}/{job.get('total', 0)}"
            if line != shown["line"]:
                eta = job.get("eta_s")
                print(f"Dreamsculpt {job_id}: {line}" + (f", ETA {eta:.0f} s" if eta else ""), flush=True)
                shown["line"] = line

        snap = watcher.run_blocking(progress)
        apply_snapshot(context.scene, job_id, snap)
        level, message = finish(context, context.scene, job_id, snap)
        self.report({level}, message)
        return {"FINISHED"} if level == "INFO" and snap.mesh is not None else {"CANCELLED"}


class DREAMSCULPT_OT_cancel(bpy.types.Operator):
    """Stop the running job (it keeps a checkpoint on the backend)"""

    bl_idname, bl_label = "dreamsculpt.cancel", "Cancel"

    @classmethod
    def poll(cls, context):
        return bool(context.scene.dreamsculpt.job_id)

    def execute(self, context):
        s = context.scene.dreamsculpt
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


class _HistoryOperator:
    index: IntProperty(default=-1, options={"SKIP_SAVE"})

    def entry(self, context):
        history = context.scene.dreamsculpt.history
        index = self.index if self.index >= 0 else context.scene.dreamsculpt.history_index
        return history[index] if 0 <= index < len(history) else None


class DREAMSCULPT_OT_history_import(_HistoryOperator, bpy.types.Operator):
    """Import this job's mesh again"""

    bl_idname, bl_label = "dreamsculpt.history_import", "Import Again"

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
        watcher = JobWatcher(client, entry.job_id, user_folder("previews"))
        snap = watcher.run_blocking()   # a finished job: one poll and one download
        level, message = finish(context, context.scene, entry.job_id, snap)
        self.report({level}, message)
        return {"FINISHED"} if snap.mesh is not None else {"CANCELLED"}


def to_editor(entry, s, settings_too: bool) -> None:
    """Put a history entry's prompt, negative prompt and seed back into the editor; with
    `settings_too`, also its prior, model, reference folder and preset (to run it again)."""
    s.prompt, s.negative, s.seed = entry.prompt, entry.negative, entry.seed
    if settings_too:
        s.prior = entry.prior
        s.model = entry.model or s.model
        s.references = entry.references or s.references
        s.preset = entry.preset or s.preset


class DREAMSCULPT_OT_history_rerun(_HistoryOperator, bpy.types.Operator):
    """Run this job again, with the same seed or a new one"""

    bl_idname, bl_label = "dreamsculpt.history_rerun", "Run Again"
    new_seed: BoolProperty(name="New Seed", default=False, options={"SKIP_SAVE"})

    def execute(self, context):
        entry, s = self.entry(context), context.scene.dreamsculpt
        if entry is None:
            return {"CANCELLED"}
        to_editor(entry, s, settings_too=True)
        if self.new_seed:
            s.seed = random.randrange(2**31 - 1)
        return bpy.ops.dreamsculpt.generate()


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
            make_client(context).delete(entry.job_id)
        except BackendError as exc:
            if getattr(exc, "status", None) != 404:   # already gone from the backend: fine
                self.report({"WARNING"}, f"Removed from the history only: {exc}")
        index = list(s.history).index(entry)
        s.history.remove(index)
        s.history_index = min(s.history_index, len(s.history) - 1)
        return {"FINISHED"}


CLASSES = (DREAMSCULPT_OT_report, DREAMSCULPT_OT_generate, DREAMSCULPT_OT_cancel, DREAMSCULPT_OT_randomize_seed,
           DREAMSCULPT_OT_start_backend, DREAMSCULPT_OT_stop_backend, DREAMSCULPT_OT_refresh_backend,
           DREAMSCULPT_OT_history_import, DREAMSCULPT_OT_history_rerun, DREAMSCULPT_OT_history_copy_prompt,
           DREAMSCULPT_OT_history_delete)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.app.timers.register(ui_tick, first_interval=1.0, persistent=True)


def unregister() -> None:
    for function in (tick, ui_tick):
        if bpy.app.timers.is_registered(function):
            bpy.app.timers.unregister(function)
    for watcher, _ in WATCHERS.values():
        watcher.stop()
    WATCHERS.clear()
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
