"""Blender's side of the background threads: the poll timer `tick`, which copies each followed
job's snapshot into its scene and imports finished jobs (results.py), and `ui_tick`, which
redraws the panel when the backend check (MONITOR) has news. Threads never touch Blender data;
these timers run on the main thread. In background Blender (no event loop, so no timers) a
job is followed on the calling thread instead: `follow` picks."""

from __future__ import annotations

import bpy

from . import results
from .jobs import JobWatcher, Snapshot
from .preferences import addon_version, make_client
from .watchers import POLL_S, WATCHERS, BackendMonitor, Followed, stop_all

#: How an operator follows its job (`follow`'s `wait`).
WAIT_ITEMS = [("AUTO", "Auto", "Wait only in background mode (blender -b)"),
              ("YES", "Yes", "Block until the job ends"),
              ("NO", "No", "Return at once; a timer follows the job")]
#: The configured backend's state, for the panel, the backend operators and start-up.
MONITOR = BackendMonitor(make_client, addon_version)


def _redraw() -> None:
    for window in getattr(bpy.context.window_manager, "windows", []):
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()


def report(level: str, message: str) -> None:
    """Show a message from a timer (no operator is running to report it): the console and,
    through the report operator, the status bar."""
    print(f"Dreamsculpt: {message}")
    try:
        bpy.ops.dreamsculpt.report(level=level, message=message)
    except RuntimeError:
        pass


def tick() -> float | None:
    """The poll timer: copy each watcher's snapshot into its scene; import finished jobs."""
    for job_id, (watcher, scene_name) in list(WATCHERS.items()):
        scene = bpy.data.scenes.get(scene_name)
        if scene is None:  # the scene was deleted or another file loaded
            watcher.stop()
            del WATCHERS[job_id]
            continue
        snap = watcher.snapshot()
        job_id = results.adopt_job_id(scene, job_id, snap)
        results.apply_snapshot(scene, job_id, snap)
        if snap.preview_version:
            results.show_preview(scene, job_id, snap.preview_path, snap.preview_version)
        if snap.finished:
            del WATCHERS[job_id]
            level, message = results.finish(bpy.context, scene, job_id, snap)
            report(level, message)
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


def follow_with_timer(key: str, watcher: JobWatcher, scene_name: str) -> None:
    """Start `watcher`'s thread and let the poll timer bring its job into scene `scene_name`."""
    WATCHERS[key] = Followed(watcher.start(), scene_name)
    if not bpy.app.timers.is_registered(tick):
        bpy.app.timers.register(tick, first_interval=POLL_S)


def follow(op, context, watcher: JobWatcher, key: str, wait: str) -> set:
    """Follow a job: on this thread in background Blender (or wait="YES"), else with the timer."""
    if wait == "YES" or (wait == "AUTO" and bpy.app.background):
        return _follow_here(op, context, watcher, key)
    follow_with_timer(key, watcher, context.scene.name)
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
    job_id = results.adopt_job_id(context.scene, key, snap)
    results.apply_snapshot(context.scene, job_id, snap)
    level, message = results.finish(context, context.scene, job_id, snap)
    op.report({level}, message)
    return {"FINISHED"} if level == "INFO" and snap.has_result else {"CANCELLED"}


def register() -> None:
    bpy.app.timers.register(ui_tick, first_interval=1.0, persistent=True)


def unregister() -> None:
    for function in (tick, ui_tick):
        if bpy.app.timers.is_registered(function):
            bpy.app.timers.unregister(function)
    stop_all()
