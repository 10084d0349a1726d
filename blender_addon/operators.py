"""Operators: generate (every mode), cancel, seed, backend start/stop. Network work happens on
background threads (jobs.JobWatcher, BackendMonitor); a timer on the main thread copies
their results into the Scene and builds meshes and images."""

from __future__ import annotations

import json
import random
import threading
import time
import uuid

import bpy
from bpy.props import EnumProperty, StringProperty

from . import backend_process, importer
from .client import BackendError, BackendState
from .job_requests import image_request_body, prepare_image, request_body
from .jobs import JobWatcher, Snapshot, upload_and_submit
from .preferences import addon_version, make_client, start_backend, user_folder

POLL_S = 0.25
WAIT_ITEMS = [("AUTO", "Auto", "Wait only in background mode (blender -b)"),
              ("YES", "Yes", "Block until the job ends"),
              ("NO", "No", "Return at once; a timer follows the job")]
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


def _object_name(prompt: str) -> str:
    return (" ".join(prompt.split())[:60] or "Dreamsculpt").strip()


def _entry(settings, job_id: str):
    return next((e for e in settings.history if e.job_id == job_id), None)


def adopt_job_id(scene, key: str, snap: Snapshot) -> str:
    """A job submitted on a thread is known by a local key until the backend gives its id;
    then the history entry, the running job and WATCHERS take the real id. Returns the id to use."""
    if not snap.job_id or snap.job_id == key:
        return key
    s = scene.dreamsculpt
    entry = _entry(s, key)
    if entry is not None:
        entry.job_id = snap.job_id
    if s.job_id == key:
        s.job_id = snap.job_id
    if key in WATCHERS:
        WATCHERS[snap.job_id] = WATCHERS.pop(key)
    return snap.job_id


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
    """Import a finished job's result or record why there is none. Returns (level, message)."""
    s = scene.dreamsculpt
    entry = _entry(s, job_id)
    if s.job_id == job_id:
        s.job_id = ""
    if not snap.has_result:
        status = snap.status if snap.status in ("failed", "cancelled") else "failed"
        if entry is not None:
            entry.status, entry.error = status, snap.error
        if status == "cancelled" and not snap.error:
            return "INFO", f"Job {job_id} was cancelled."
        s.last_error = snap.error
        return "ERROR", snap.error or f"Job {job_id} failed."
    if snap.views is not None:
        name, message = _import_views(context, s, entry, job_id, snap)
    else:
        name, message = _import_mesh(context, s, entry, job_id, snap)
    if entry is not None:
        entry.status, entry.object_name, entry.error = "done", name, ""
    s.last_error = ""
    return "INFO", message


def _import_mesh(context, s, entry, job_id: str, snap: Snapshot) -> tuple[str, str]:
    """A text job's mesh at the 3D cursor, or an image job's where its camera saw the object."""
    properties = {"dreamsculpt_job_id": job_id, "dreamsculpt_seed": entry.seed if entry else s.seed}
    if snap.placement is None:
        prompt = entry.prompt if entry else s.prompt
        name = _object_name(prompt)
        properties.update(dreamsculpt_prompt=prompt, dreamsculpt_model=(entry.model or entry.prior) if entry
                          else (s.model if s.prior == "sd" else s.prior))
    else:
        source = entry.source if entry else "image"
        name = _object_name(f"{source} 3D")
        properties.update(dreamsculpt_source=source, dreamsculpt_prompt=entry.prompt if entry else "",
                          dreamsculpt_model=(entry.model or entry.prior) if entry else "")
    replace = None
    if entry is not None and s.replace_previous and entry.object_name:
        replace = bpy.data.objects.get(entry.object_name)
    obj = importer.import_result(context, snap.mesh, name, properties, replace, snap.placement)
    return obj.name, f"Imported '{obj.name}' ({snap.mesh.vertex_count} vertices, {snap.mesh.face_count} faces)."


def _import_views(context, s, entry, job_id: str, snap: Snapshot) -> tuple[str, str]:
    """A novel-views job's images (and, if asked, image planes)."""
    properties = {"dreamsculpt_job_id": job_id, "dreamsculpt_source": entry.source if entry else ""}
    planes = entry.view_planes if entry else s.view_planes
    images, objects = importer.import_views(context, snap.views, job_id[-6:], planes, properties)
    message = f"Loaded {len(images)} novel views" + (f" and {len(objects)} image planes." if objects else ".")
    return images[0].name, message


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
        job_id = adopt_job_id(scene, job_id, snap)
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


def _follow(op, context, watcher: JobWatcher, key: str, wait: str) -> set:
    """Follow a job: on this thread in background Blender (or wait="YES"), else with the timer."""
    if wait == "YES" or (wait == "AUTO" and bpy.app.background):
        return _follow_here(op, context, watcher, key)
    WATCHERS[key] = (watcher.start(), context.scene.name)
    if not bpy.app.timers.is_registered(tick):
        bpy.app.timers.register(tick, first_interval=POLL_S)
    op.report({"INFO"}, f"Job {key} queued." if watcher.job_id else "Sending the image…")
    return {"FINISHED"}


def _follow_here(op, context, watcher: JobWatcher, key: str) -> set:
    shown = {"line": ""}

    def progress(snap: Snapshot) -> None:
        job = snap.job
        line = f"{snap.status} {job.get('stage', '')} {job.get('step', 0)}/{job.get('total', 0)}"
        if line != shown["line"]:
            eta = job.get("eta_s")
            print(f"Dreamsculpt {snap.job_id or key}: {line}" + (f", ETA {eta:.0f} s" if eta else ""), flush=True)
            shown["line"] = line

    snap = watcher.run_blocking(progress)
    job_id = adopt_job_id(context.scene, key, snap)
    apply_snapshot(context.scene, job_id, snap)
    level, message = finish(context, context.scene, job_id, snap)
    op.report({level}, message)
    return {"FINISHED"} if level == "INFO" and snap.has_result else {"CANCELLED"}


def submit_image_job(op, context, image_path: str, body: dict, source: str, planes: bool, wait: str) -> set:
    """Upload the image and submit `body` on the job's thread; a history entry records it all
    (known by a local key until the backend gives the job's id)."""
    s = context.scene.dreamsculpt
    try:
        client = make_client(context)
    except BackendError as exc:
        op.report({"ERROR"}, str(exc))
        return {"CANCELLED"}
    key = f"local-{uuid.uuid4().hex[:12]}"
    entry = s.history.add()
    entry.job_id, entry.mode, entry.source, entry.image_path = key, body["kind"], source, image_path
    entry.request, entry.view_planes = json.dumps(body), planes
    entry.prompt, entry.prior, entry.seed = body.get("prompt", ""), body["prior"], body["seed"]
    entry.model, entry.preset = body.get("model", ""), body.get("preset", "")
    entry.status, entry.created = "uploading", time.strftime("%Y-%m-%d %H:%M")
    s.history_index = len(s.history) - 1
    s.job_id, s.job_status, s.job_stage, s.job_step, s.job_total, s.last_error = key, "uploading", "", 0, 0, ""
    watcher = JobWatcher(client, "", user_folder("previews"), poll_s=POLL_S, kind=body["kind"],
                         submit=upload_and_submit(client, image_path, body))
    return _follow(op, context, watcher, key, wait)


class DREAMSCULPT_OT_generate(bpy.types.Operator):
    """Make the panel's mode from its settings: a mesh from the prompt, or a mesh or novel
    views from the active camera's render or an image file"""

    bl_idname, bl_label, bl_options = "dreamsculpt.generate", "Generate", {"REGISTER"}
    wait: EnumProperty(name="Wait", items=WAIT_ITEMS, default="AUTO", options={"SKIP_SAVE"})

    def execute(self, context):
        s = context.scene.dreamsculpt
        if s.job_id and s.job_id in WATCHERS:
            self.report({"ERROR"}, "A job is already running in this scene: wait for it or cancel it.")
            return {"CANCELLED"}
        if s.mode != "text_to_3d":
            try:
                image_path, source, camera, depth = prepare_image(context, s)
            except BackendError as exc:   # nothing in the scene changes
                self.report({"ERROR"}, str(exc))
                return {"CANCELLED"}
            return submit_image_job(self, context, image_path, image_request_body(s, camera, depth), source,
                                    s.view_planes and s.mode == "novel_views", self.wait)
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
        return _follow(self, context, watcher, job["id"], self.wait)


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
