"""A followed job's snapshot into its scene, on the main thread: the job's id once the backend
gives it, its progress, its live preview, and at the end its result (a mesh, novel views, or a
scene walk's mesh and frames) or why there is none. The poll timer (timer.py) and background
Blender (which follows a job on its own thread) both come here, so a job ends the same way
either way."""

from __future__ import annotations

import shutil

import bpy
import bpy.utils.previews

from . import cameras, importer, preferences
from .jobs import Snapshot
from .model_watch import stored_progress
from .watchers import WATCHERS

_previews = None   # bpy.utils.previews collection of live job previews (None while unregistered)
_shown: dict[str, int] = {}   # job id -> preview version loaded


def _object_name(prompt: str) -> str:
    return (" ".join(prompt.split())[:60] or "Dreamsculpt").strip()


def history_entry(settings, job_id: str):
    """The history entry of job `job_id` (or of its local key), or None."""
    return next((e for e in settings.history if e.job_id == job_id), None)


def adopt_job_id(scene, key: str, snap: Snapshot) -> str:
    """A job submitted on a thread is known by a local key until the backend gives its id;
    then the history entry, the running job and WATCHERS take the real id. Returns the id to use."""
    if not snap.job_id or snap.job_id == key:
        return key
    s = scene.dreamsculpt
    entry = history_entry(s, key)
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
    step, total = stored_progress(job)   # KiB while a model downloads: Int properties stop at 2**31 - 1
    values = {"job_status": snap.status, "job_stage": job.get("stage", ""), "job_step": step, "job_total": total,
              "job_eta": float(job.get("eta_s") or 0.0)}
    if s.job_id == job_id:
        for key, value in values.items():
            if getattr(s, key) != value:
                setattr(s, key, value)
    entry = history_entry(s, job_id)
    if entry is not None and entry.status != snap.status:
        entry.status = snap.status


def show_preview(scene, job_id: str, path: str, version: int) -> None:
    """Load a new live preview picture for the panel (main thread, from the poll timer)."""
    if _previews is None or _shown.get(job_id) == version:
        return
    if job_id in _previews:
        _previews[job_id].reload()   # same file, new picture
    else:
        _previews.load(job_id, path, "IMAGE")
    _shown[job_id] = version
    scene.dreamsculpt.preview_image = job_id


def preview_icon(name: str) -> int:
    """The icon id of live preview `name`, for template_icon(); 0 when there is none."""
    if _previews is None or name not in _previews:
        return 0
    return _previews[name].icon_id


def finish(context, scene, job_id: str, snap: Snapshot) -> tuple[str, str]:
    """Import a finished job's result or record why there is none. Returns (level, message)."""
    s = scene.dreamsculpt
    entry = history_entry(s, job_id)
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
    elif snap.walk is not None:
        name, message = _import_walk(context, s, entry, job_id, snap)
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
    textures = None if preferences.preferences(context).vertex_colors_only else snap.textures
    try:
        obj = importer.import_result(context, snap.mesh, name, properties, replace, snap.placement, textures)
    finally:
        if snap.textures is not None:   # packed into the .blend, or not wanted
            shutil.rmtree(snap.textures.folder, ignore_errors=True)
    message = f"Imported '{obj.name}' ({snap.mesh.vertex_count} vertices, {snap.mesh.face_count} faces)."
    return obj.name, f"{message} {snap.note}" if snap.note else message


def _import_views(context, s, entry, job_id: str, snap: Snapshot) -> tuple[str, str]:
    """A novel-views job's images (and, if asked, image planes)."""
    properties = {"dreamsculpt_job_id": job_id, "dreamsculpt_source": entry.source if entry else ""}
    planes = entry.view_planes if entry else s.view_planes
    images, objects = importer.import_views(context, snap.views, job_id[-6:], planes, properties)
    message = f"Loaded {len(images)} novel views" + (f" and {len(objects)} image planes." if objects else ".")
    return images[0].name, message


def _import_walk(context, s, entry, job_id: str, snap: Snapshot) -> tuple[str, str]:
    """A scene walk's mesh in "Dreamsculpt Scenes" where its cameras were (world coordinates),
    and its frames behind the camera the path came from, in step with the timeline."""
    scene = context.scene
    prompt = entry.prompt if entry else s.prompt
    properties = {"dreamsculpt_job_id": job_id, "dreamsculpt_seed": entry.seed if entry else s.seed,
                  "dreamsculpt_prompt": prompt,
                  "dreamsculpt_model": (entry.model or entry.prior) if entry else s.prior}
    camera = bpy.data.objects.get(entry.source) if entry and entry.source else scene.camera
    frame_start, frame_step = (entry.frame_start, entry.frame_step) if entry else (scene.frame_start, 1)
    image = importer.import_walk_frames(context, snap.walk, preferences.user_folder("walks", job_id), camera,
                                        frame_start, frame_step, job_id[-6:], {"dreamsculpt_job_id": job_id})
    replace = None
    if entry is not None and s.replace_previous and entry.object_name:
        replace = bpy.data.objects.get(entry.object_name)
    obj = importer.import_result(context, snap.mesh, _object_name(prompt), properties, replace, cameras.identity(),
                                 collection=importer.SCENES_COLLECTION)
    where = f" behind '{camera.name}'" if camera is not None and camera.type == "CAMERA" else ""
    return obj.name, (f"Imported the scene '{obj.name}' ({snap.mesh.face_count} faces) and {len(snap.walk.frames)} "
                      f"frames as '{image.name}'{where}.")


def register() -> None:
    global _previews
    _previews = bpy.utils.previews.new()


def unregister() -> None:
    global _previews
    if _previews is not None:
        bpy.utils.previews.remove(_previews)
        _previews = None
    _shown.clear()
