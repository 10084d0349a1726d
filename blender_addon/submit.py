"""Sending a job, one path for every kind, from Generate and from Run Again: the body
(job_requests.job_body) goes to the backend, a history entry records it (the body too, so that
Run Again can put its settings back), and the job is followed (timer.follow)."""

from __future__ import annotations

import json
import time
import uuid

from .client import BackendError
from .job_requests import JobImage, WalkPath
from .jobs import JobWatcher, upload_and_submit
from .preferences import make_client, user_folder
from .timer import follow
from .watchers import POLL_S, is_followed


def refuse_if_busy(op, s) -> bool:
    """One job per scene at a time: True (and an error report) while this scene's job runs."""
    if is_followed(s.job_id):
        op.report({"ERROR"}, "A job is already running in this scene: wait for it or cancel it.")
        return True
    return False


def submit_job(op, context, body: dict, image: JobImage | None, planes: bool, wait: str,
               walk: WalkPath | None = None) -> set:
    """Send `body` and follow its job. A job without an image is sent here, so a refusal leaves
    the scene as it was; an image job (a scene walk's start render and its depth too) is
    uploaded and sent on the job's thread (the picture may be large), known by a local key
    until the backend gives its id. `planes`: novel views also as image planes; `walk`: a
    scene walk's path (its camera and timeline go into the history entry)."""
    try:
        client = make_client(context)
        job = client.submit(body) if image is None else None
    except BackendError as exc:   # nothing in the scene changes
        op.report({"ERROR"}, str(exc))
        return {"CANCELLED"}
    previews = user_folder("previews")
    if job is not None:
        key, status, total = job["id"], job["status"], job["total"]
        watcher = JobWatcher(client, key, previews, poll_s=POLL_S, kind=body["kind"])
    else:
        key, status, total = f"local-{uuid.uuid4().hex[:12]}", "uploading", 0
        watcher = JobWatcher(client, "", previews, poll_s=POLL_S, kind=body["kind"],
                             submit=upload_and_submit(client, image.path, body, image.depth_path))
    s = context.scene.dreamsculpt
    _record(s, key, status, body, image, planes, walk)
    s.job_id, s.job_status, s.job_stage, s.job_step, s.job_total, s.last_error = key, status, "", 0, total, ""
    return follow(op, context, watcher, key, wait)


def _record(s, key: str, status: str, body: dict, image: JobImage | None, planes: bool,
            walk: WalkPath | None) -> None:
    """A new history entry for the job just sent, made the active one."""
    entry = s.history.add()
    entry.job_id, entry.mode, entry.request, entry.status = key, body["kind"], json.dumps(body), status
    entry.prompt, entry.negative, entry.prior, entry.seed = (body.get("prompt", ""), body.get("negative", ""),
                                                              body["prior"], body["seed"])
    entry.model, entry.references = body.get("model", ""), body.get("references", "")
    entry.preset, entry.created = body.get("preset", ""), time.strftime("%Y-%m-%d %H:%M")
    if image is not None:
        entry.source, entry.image_path, entry.view_planes = image.source, image.path, planes
    if walk is not None:
        entry.source, entry.frame_start, entry.frame_step = walk.source, walk.frame_start, walk.frame_step
    s.history_index = len(s.history) - 1
