"""Following one backend job from a background thread. No `bpy`.

The thread polls the job, downloads each new preview and, when the job is done, downloads
and parses the mesh. Blender's main thread only reads `snapshot()` from a timer (a lock and
a copy: microseconds) and builds the object from arrays that are ready, so the UI never
waits on the network or on parsing.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .client import BackendDown, BackendError, Client
from .plymesh import MeshArrays, PlyError, read_ply

FINISHED = ("done", "failed", "cancelled")
#: Consecutive failed polls (about 10 s) before the backend counts as gone.
MAX_MISSES = 20


@dataclass
class Snapshot:
    job: dict = field(default_factory=dict)     # the latest GET /jobs/{id}
    preview_path: str = ""
    preview_version: int = 0                     # bumps when a new preview file is written
    mesh: MeshArrays | None = None               # the result, parsed, once the job is done
    error: str = ""                              # what went wrong and what to do
    finished: bool = False

    @property
    def status(self) -> str:
        return self.job.get("status", "queued")


class JobWatcher:
    def __init__(self, client: Client, job_id: str, preview_dir: Path, poll_s: float = 0.5):
        self.client, self.job_id, self.poll_s = client, job_id, poll_s
        self.preview_dir = Path(preview_dir)
        self._lock = threading.Lock()
        self._snap = Snapshot()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"dreamsculpt-{job_id}", daemon=True)

    def start(self) -> "JobWatcher":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def snapshot(self) -> Snapshot:
        with self._lock:
            s = self._snap
            return Snapshot(dict(s.job), s.preview_path, s.preview_version, s.mesh, s.error, s.finished)

    def _set(self, **changes) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(self._snap, key, value)

    def run_blocking(self, on_update=None) -> Snapshot:
        """Follow the job on the calling thread (headless Blender); `on_update(snapshot)` after each poll."""
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

    def _run(self) -> None:
        try:
            self.run_blocking()
        except Exception as exc:  # noqa: BLE001 - the thread must end with a message, not silently
            self._set(error=f"Following the job failed: {exc}", finished=True)

    def poll_once(self) -> bool:
        """One poll; True when the job has ended (the snapshot then says how)."""
        try:
            job = self.client.job(self.job_id)
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
                mesh = read_ply(self.client.download(self.job_id, "result.ply"))
            except (BackendError, PlyError) as exc:
                self._set(error=f"The result could not be fetched: {exc}", finished=True)
                return True
            if mesh.face_count == 0:
                self._set(error="The job finished but its mesh is empty. Run it again with more steps or "
                                "another seed.", finished=True)
                return True
            self._set(mesh=mesh, finished=True)
            return True
        if status in ("failed", "cancelled"):
            error = (job.get("error") or "The job failed.") if status == "failed" else ""
            self._set(job=job, error=error, finished=True)
            return True
        self._set(job=job)
        return False

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
