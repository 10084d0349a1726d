"""Following one backend job from a background thread. No `bpy`.

The thread (optionally) uploads the image and submits the job, polls it, downloads each new
preview and, when the job is done, downloads and parses its result: the mesh (and, for an
image-to-3D job, the placement from run.json), the novel views (views.json and the view
images, into a temporary folder) or a scene walk's scene mesh and frames (a temporary folder
too); a mesh's textures (texture.png, normal.png) go to a temporary
folder too, for the importer to load and pack. Blender's main thread only reads `snapshot()` from a timer
(a lock and a copy: microseconds) and builds objects from data that is ready, so the UI never
waits on the network or on parsing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import cameras
from .client import BackendDown, BackendError, Client
from .plymesh import MeshArrays, PlyError, read_ply

FINISHED = ("done", "failed", "cancelled")
#: Consecutive failed polls (about 10 s) before the backend counts as gone.
MAX_MISSES = 20
VIEW_FILE = re.compile(r"view_\d{2}\.png")
#: What run.json may name as a texture (the file is downloaded by that name).
TEXTURE_FILE = re.compile(r"[A-Za-z0-9_-]{1,64}\.png")


@dataclass
class TextureSet:
    """A mesh's textures on this machine, in `folder` (the importer packs them, then deletes it)."""

    folder: str
    base_color: str                       # sRGB base colour (texture.png)
    normal: str = ""                      # tangent-space normal map, OpenGL +Y (normal.png); "" if none


@dataclass
class ViewSet:
    """A novel-views result on this machine: `folder` holds the view images (and the contact
    sheet); each view is views.json's entry with "path" added."""

    folder: str
    views: list[dict]
    placement: cameras.Matrix
    sheet: str = ""                       # novel_views.png, when the backend made one


@dataclass
class WalkSet:
    """A scene walk's frames on this machine, in `folder`: frames[k] is frame k's file (the
    importer moves them into the add-on's folder, then deletes this one)."""

    folder: str
    frames: list[str]
    width: int
    height: int


@dataclass
class Snapshot:
    job: dict = field(default_factory=dict)     # the latest GET /jobs/{id}
    job_id: str = ""                             # "" until the job is submitted
    preview_path: str = ""
    preview_version: int = 0                     # bumps when a new preview file is written
    mesh: MeshArrays | None = None               # the result, parsed, once the job is done
    textures: TextureSet | None = None           # the mesh's textures; None: vertex colours only
    note: str = ""                               # what the result lacks (e.g. a texture), for the report
    placement: cameras.Matrix | None = None      # image_to_3d: canonical -> world (run.json)
    views: ViewSet | None = None                 # novel_views: the downloaded views
    walk: WalkSet | None = None                  # scene_walk: the frames (`mesh` is the scene mesh)
    error: str = ""                              # what went wrong and what to do
    finished: bool = False

    @property
    def status(self) -> str:
        return self.job.get("status", "queued" if self.job_id else "uploading")

    @property
    def has_result(self) -> bool:
        return self.mesh is not None or self.views is not None


class JobWatcher:
    """Follows job `job_id`; or, given `submit` (a callable returning the new job, e.g. an
    upload and a POST /jobs), submits it first on the same thread. `kind` says which result to
    fetch (default: the job's own "kind")."""

    def __init__(self, client: Client, job_id: str, preview_dir: Path, poll_s: float = 0.5,
                 submit: Callable[[], dict] | None = None, kind: str = ""):
        self.client, self.poll_s, self.kind = client, poll_s, kind
        self.preview_dir = Path(preview_dir)
        self._submit = submit
        self._lock = threading.Lock()
        self._snap = Snapshot(job_id=job_id)
        self._stop = threading.Event()
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"dreamsculpt-{job_id or 'submit'}", daemon=True)

    @property
    def job_id(self) -> str:
        with self._lock:
            return self._snap.job_id

    def start(self) -> "JobWatcher":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def request_cancel(self) -> None:
        """Cancel a job that is still being submitted, as soon as it has an id."""
        self._cancel.set()

    def snapshot(self) -> Snapshot:
        with self._lock:
            return replace(self._snap, job=dict(self._snap.job))

    def _set(self, **changes) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(self._snap, key, value)

    def run_blocking(self, on_update=None) -> Snapshot:
        """Follow the job on the calling thread (headless Blender); `on_update(snapshot)` after each poll."""
        if self._submit is not None and not self.job_id and not self._submit_now():
            if on_update:
                on_update(self.snapshot())
            return self.snapshot()
        misses = 0
        while not self._stop.is_set():
            try:
                if self.poll_once():
                    break
                misses = 0
            except BackendDown as exc:
                misses += 1
                if misses >= MAX_MISSES:
                    self._set(error=str(exc), finished=True)
                    break
            if on_update:
                on_update(self.snapshot())
            time.sleep(self.poll_s)
        if on_update:
            on_update(self.snapshot())
        return self.snapshot()

    def _submit_now(self) -> bool:
        try:
            job = self._submit()
        except BackendError as exc:
            self._set(error=str(exc), finished=True)
            return False
        except OSError as exc:
            self._set(error=f"The image could not be read ({exc}). Capture or pick it again.", finished=True)
            return False
        self._set(job_id=job["id"], job=job)
        if self._cancel.is_set():
            try:
                self.client.cancel(job["id"])
            except BackendError:
                pass   # the polls say how it ends
        return True

    def _run(self) -> None:
        try:
            self.run_blocking()
        except Exception as exc:  # noqa: BLE001 - the thread must end with a message, not silently
            self._set(error=f"Following the job failed: {exc}", finished=True)

    def poll_once(self) -> bool:
        """One poll; True when the job has ended (the snapshot then says how)."""
        job_id = self.job_id
        try:
            job = self.client.job(job_id)
        except BackendDown:
            raise
        except BackendError as exc:
            self._set(error=str(exc), finished=True)
            return True
        previous = self.snapshot()
        if job.get("preview_step") not in (None, previous.job.get("preview_step")):
            self._fetch_preview(previous.preview_version)
        status = job.get("status")
        if status == "done":
            self._set(job=job)
            try:
                self._set(finished=True, **self._fetch_result(job))
            except (BackendError, PlyError, ValueError, OSError) as exc:
                self._set(error=f"The result could not be fetched: {exc}", finished=True)
            return True
        if status in ("failed", "cancelled"):
            error = (job.get("error") or "The job failed.") if status == "failed" else ""
            self._set(job=job, error=error, finished=True)
            return True
        self._set(job=job)
        return False

    def _fetch_result(self, job: dict) -> dict:
        """The snapshot fields of a finished job's result (downloads and parsing: this thread)."""
        kind = self.kind or job.get("kind") or "text_to_3d"
        if kind == "novel_views":
            return {"views": self._fetch_views()}
        if kind == "scene_walk":
            return self._fetch_walk()
        mesh = read_ply(self.client.download(self.job_id, "result.ply"))
        if mesh.face_count == 0:
            return {"error": "The job finished but its mesh is empty. Run it again with more steps or another seed."}
        record = json.loads(self.client.download(self.job_id, "run.json"))
        result = {"mesh": mesh, **self._fetch_textures(record, mesh)}
        if kind != "image_to_3d":
            return result
        placement = record.get("placement")
        if not cameras.is_matrix(placement):
            raise ValueError("run.json has no 4x4 'placement'; is the backend the same version as the add-on?")
        return {**result, "placement": placement}

    def _fetch_textures(self, record: dict, mesh: MeshArrays) -> dict:
        """The snapshot's `textures` (and a `note` when there are none to show): the files
        run.json's outputs name, downloaded into a temporary folder. A server from before
        textures names none: the mesh shows its vertex colours."""
        outputs = record.get("outputs") if isinstance(record.get("outputs"), dict) else record
        names = {"base_color": outputs.get("texture"), "normal": outputs.get("normal_map")}
        if not names["base_color"]:
            return {}
        if len(mesh.uvs) != 6 * mesh.face_count:
            return {"note": "The mesh has no UVs for its texture: it shows its vertex colours."}
        bad = [name for name in names.values() if name and not TEXTURE_FILE.fullmatch(str(name))]
        if bad:
            raise ValueError(f"run.json names a texture the add-on will not fetch: {bad[0]!r}")
        folder = Path(tempfile.mkdtemp(prefix=f"dreamsculpt-textures-{self.job_id}-"))
        paths, missing = {}, []
        for key, name in names.items():
            try:
                if name:
                    (folder / name).write_bytes(self.client.download(self.job_id, name))
                    paths[key] = str(folder / name)
            except BackendError as exc:   # the mesh is still worth having
                missing.append(f"{name} could not be downloaded ({exc})")
        note = "; ".join(missing)
        if "base_color" not in paths:
            shutil.rmtree(folder, ignore_errors=True)
            return {"note": f"{note}: the mesh shows its vertex colours."}
        return {"textures": TextureSet(str(folder), **paths), "note": note and f"{note}: imported without it."}

    def _fetch_views(self) -> ViewSet:
        meta = json.loads(self.client.download(self.job_id, "views.json"))
        views, placement = meta.get("views"), meta.get("placement")
        if not isinstance(views, list) or not views or not cameras.is_matrix(placement):
            raise ValueError("views.json has no views or no placement")
        folder = Path(tempfile.mkdtemp(prefix=f"dreamsculpt-views-{self.job_id}-"))
        result = ViewSet(str(folder), [], placement)
        for view in views:
            name = view.get("file", "")
            if not VIEW_FILE.fullmatch(name) or not cameras.is_matrix(view.get("matrix_world")):
                raise ValueError(f"views.json has a bad view entry: {json.dumps(view)[:200]}")
            (folder / name).write_bytes(self.client.download(self.job_id, name))
            result.views.append({**view, "path": str(folder / name)})
        try:
            (folder / "novel_views.png").write_bytes(self.client.download(self.job_id, "novel_views.png"))
            result.sheet = str(folder / "novel_views.png")
        except BackendError:
            pass   # the views are the result; the contact sheet is a nicety
        return result

    def _fetch_walk(self) -> dict:
        """The scene mesh (scene.ply: Z up, the cameras' world, metres) and every frame."""
        mesh = read_ply(self.client.download(self.job_id, "scene.ply"))
        if mesh.face_count == 0:
            return {"error": "The walk finished but its scene mesh is empty. Check that the start frame shows the "
                             "scene (not only the world background), or start from the prompt."}
        record = json.loads(self.client.download(self.job_id, "run.json"))
        outputs = record.get("outputs") if isinstance(record.get("outputs"), dict) else record
        count, width, height = (outputs.get(key) for key in ("frames", "width", "height"))
        if not all(isinstance(v, int) and v > 0 for v in (count, width, height)):
            raise ValueError("run.json has no 'frames', 'width' and 'height'; is the backend the same version as "
                             "the add-on?")
        folder = Path(tempfile.mkdtemp(prefix=f"dreamsculpt-walk-{self.job_id}-"))
        frames = []
        try:
            for k in range(count):
                path = folder / f"{k:04d}.png"
                path.write_bytes(self.client.download(self.job_id, f"frames/{k:04d}.png"))
                frames.append(str(path))
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return {"mesh": mesh, "walk": WalkSet(str(folder), frames, width, height)}

    def _fetch_preview(self, version: int) -> None:
        try:
            data = self.client.download(self.job_id, "preview.png")
        except BackendError:
            return  # a preview is a nicety; the next poll tries again
        self.preview_dir.mkdir(parents=True, exist_ok=True)
        path = self.preview_dir / f"{self.job_id}.png"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        self._set(preview_path=str(path), preview_version=version + 1)


def upload_and_submit(client: Client, image_path: str, body: dict, depth_path: str = "") -> Callable[[], dict]:
    """A `submit` for JobWatcher: read the image, POST /images, then POST /jobs naming it; with
    `depth_path` (a scene walk's start depth) also POST /images?depth=true, named as its
    "depth_image"."""

    def submit() -> dict:
        data = Path(image_path).read_bytes()
        image = client.upload_image(data)
        ids = {"image": image["image"]}
        if depth_path:
            ids["depth_image"] = client.upload_depth(Path(depth_path).read_bytes())["image"]
        return client.submit({**body, **ids})

    return submit
