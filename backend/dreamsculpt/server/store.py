"""Jobs on disk: one folder per job under `<data dir>/jobs/`; uploaded images under
`<data dir>/images/`. (`dreamsculpt batch` keeps its job folders in its --out folder instead,
named by the jobs' names, and its images in `<out>/.dreamsculpt/images/`.)

    jobs/<id>/request.json   what was asked (validated), written once
    jobs/<id>/status.json    a JobStatus, replaced atomically on every change
    jobs/<id>/input.png      the reference image of the image kinds (a link to, or a copy of, the upload)
    jobs/<id>/preview.png    the latest preview while running
    jobs/<id>/out/           the engine's folder: mesh.ply/.glb/.obj, preview.png (4 views),
                             turntable.gif, reference.png, run.json, checkpoint.pt; for novel
                             views view_00.png ..., novel_views.png and views.json
    images/<sha256>.png      uploads (POST /images), named by the hash of their PNG bytes

A folder appears only complete (it is written under a dot-name, then renamed) and is
renamed away before it is deleted, so a crash at any moment leaves no half job behind.
The store is the one owner of status files; it is used from several threads.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import threading
import time
from pathlib import Path

from pydantic import ValidationError

from ..errors import DreamsculptError
from ..requests import JOB_NAME_PATTERN
from .schemas import (
    IMAGE_ID_PATTERN,
    JobRequest,
    JobResult,
    JobState,
    JobStatus,
    now,
)

#: Job folders: the server's ids (JOB_ID_PATTERN) and a batch's job names both match.
_ID = re.compile(JOB_NAME_PATTERN)
#: What a crash mid-create or mid-delete leaves beside the job folders (see JobStore.load).
_LEFTOVER = re.compile(r"^\..+\.(new|deleted)$")
_IMAGE_ID = re.compile(IMAGE_ID_PATTERN)
#: The reference image of an image job, in its folder (the worker reads it from there).
INPUT_IMAGE = "input.png"
#: A scene walk's start depth (its `depth_image`), beside it.
INPUT_DEPTH = "input_depth.png"
#: Most novel views a job makes (view_00.png, the reference, included).
MAX_VIEWS = 64
#: Files a client may download: URL name -> path inside the job folder.
DOWNLOADS = {
    "preview.png": "preview.png",
    "result.ply": "out/mesh.ply",
    "result.glb": "out/mesh.glb",
    "result.obj": "out/mesh.obj",
    "result.mtl": "out/mesh.mtl",
    "texture.png": "out/texture.png",
    "normal.png": "out/normal.png",
    "views.png": "out/preview.png",
    "turntable.gif": "out/turntable.gif",
    "run.json": "out/run.json",
    "input.png": INPUT_IMAGE,
    "reference.png": "out/reference.png",
    "views.json": "out/views.json",
    "novel_views.png": "out/novel_views.png",
    **{f"view_{i:02d}.png": f"out/view_{i:02d}.png" for i in range(MAX_VIEWS)},
    "scene.glb": "out/scene.glb",
    "scene.ply": "out/scene.ply",
    "walk.mp4": "out/walk.mp4",
    "walk.gif": "out/walk.gif",
    "cameras.json": "out/cameras.json",
}
#: A scene walk's frames and depth maps (GET /jobs/{id}/frames/NNNN.png, /depth/NNNN.png):
#: too many to list among a job's files; run.json says how many there are.
FRAME_FOLDERS = {"frames": "out/frames", "depth": "out/depth"}
#: Files that name other downloads inside them: the names written in the job folder -> the
#: names a client saves them under (`{job}` is the job id, as in the download's file name).
LINKS = {"result.obj": {"mtllib mesh.mtl": "mtllib {job}-result.mtl"},
         "result.mtl": {"map_Kd texture.png": "map_Kd {job}-texture.png", "norm normal.png": "norm {job}-normal.png"}}
#: Uploads are kept this long after their last upload; a job keeps its own input.png.
IMAGE_KEEP_S = 7 * 24 * 3600.0


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that readers see the old file or the new one, never a mix."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _make_folder(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DreamsculptError(f"Cannot create the folder {path}: {exc.strerror}. Pass a writable --data-dir.") from exc
    return path


class UnknownImage(LookupError):
    """A job names an image that was not uploaded (or was pruned)."""


class ImageStore:
    """Uploaded images, one PNG per distinct picture: `<sha256 of its bytes>.png`."""

    def __init__(self, root: Path):
        self.root = _make_folder(Path(root))

    def path(self, image_id: str) -> Path:
        """The stored PNG of `image_id`; UnknownImage when there is none."""
        path = self.root / f"{image_id}.png"
        if not _IMAGE_ID.match(image_id) or not path.is_file():
            raise UnknownImage(f"No uploaded image {image_id[:12]}...: upload it first with POST /images "
                               f"(uploads are kept {IMAGE_KEEP_S / 86400:g} days).")
        return path

    def add(self, image_id: str, png: bytes) -> Path:
        """Store `png` (whose sha256 is `image_id`); the same picture again only renews its age."""
        path = self.root / f"{image_id}.png"
        if path.is_file():
            os.utime(path)
        else:
            write_atomic(path, png)
        return path

    @staticmethod
    def link(source: Path, target: Path) -> None:
        """Put an upload at `target`: a hard link where the file system allows, else a copy."""
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)

    def prune(self, max_age_s: float = IMAGE_KEEP_S) -> int:
        """Delete uploads (and left-over temporary files) older than `max_age_s`; returns how many."""
        cutoff, removed = time.time() - max_age_s, 0
        for path in self.root.iterdir():
            try:
                if path.is_file() and path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except OSError:
                continue
        return removed


class JobStore:
    """The jobs of `<root>/jobs/` (or of `jobs_folder`, where a batch keeps them beside other
    files) and the uploads of `<root>/images/`."""

    def __init__(self, root: Path, jobs_folder: Path | None = None):
        self.root = _make_folder(Path(jobs_folder) if jobs_folder is not None else Path(root) / "jobs")
        self.images = ImageStore(Path(root) / "images")
        self._lock = threading.RLock()
        self._jobs: dict[str, JobStatus] = {}
        self._next_seq = 1

    # --- reading --------------------------------------------------------------------------
    def folder(self, job_id: str) -> Path:
        if not _ID.match(job_id):  # the API validates ids too; this guards every other caller
            raise KeyError(job_id)
        return self.root / job_id

    def get(self, job_id: str) -> JobStatus | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return job.model_copy(deep=True) if job else None

    def all(self) -> list[JobStatus]:
        with self._lock:
            return [j.model_copy(deep=True) for j in sorted(self._jobs.values(), key=lambda j: j.seq)]

    def download_path(self, job_id: str, name: str) -> Path | None:
        """The file behind GET /jobs/{id}/{name}, or None when it does not exist (yet)."""
        if name not in DOWNLOADS or job_id not in self._jobs:
            return None
        path = self.folder(job_id) / DOWNLOADS[name]
        return path if path.is_file() else None

    def frame_path(self, job_id: str, folder: str, index: str) -> Path | None:
        """out/frames/NNNN.png or out/depth/NNNN.png of a scene walk, or None."""
        if folder not in FRAME_FOLDERS or job_id not in self._jobs:
            return None
        path = self.folder(job_id) / FRAME_FOLDERS[folder] / f"{index}.png"
        return path if path.is_file() else None

    def linked_download(self, job_id: str, name: str, path: Path) -> bytes:
        """A download in `LINKS`, its references renamed to the files a client saves beside it."""
        text = path.read_text()
        for old, new in LINKS[name].items():
            text = text.replace(old, new.format(job=job_id))
        return text.encode()

    def result_files(self, job_id: str) -> list[str]:
        return [name for name in DOWNLOADS if name != "preview.png" and self.download_path(job_id, name)]

    # --- changing -------------------------------------------------------------------------
    def create(self, request: JobRequest, total: int, job_id: str | None = None) -> JobStatus:
        """A new queued job; its folder is complete when it appears. UnknownImage when the
        request names an image that is not uploaded. `job_id` (a batch's job name) must be new."""
        image = self.images.path(request.image) if getattr(request, "image", None) else None
        depth = self.images.path(request.depth_image) if getattr(request, "depth_image", None) else None
        with self._lock:
            stamp = now()
            if job_id is not None:
                if job_id in self._jobs or (self.root / self.folder(job_id).name).exists():
                    raise DreamsculptError(f"A job named {job_id} already exists in {self.root}.")
            while job_id is None:
                job_id = f"{stamp:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
                if job_id in self._jobs or (self.root / job_id).exists():
                    job_id = None
            job = JobStatus(id=job_id, seq=self._next_seq, kind=request.kind, status=JobState.queued,
                            stage="queued", total=total, created=stamp, updated=stamp, request=request)
            self._next_seq += 1
            staging = self.root / f".{job_id}.new"
            staging.mkdir()
            (staging / "out").mkdir()
            if image is not None:
                self.images.link(image, staging / INPUT_IMAGE)
            if depth is not None:
                self.images.link(depth, staging / INPUT_DEPTH)
            write_atomic(staging / "request.json", request.model_dump_json(indent=2).encode())
            write_atomic(staging / "status.json", job.model_dump_json(indent=2).encode())
            os.replace(staging, self.root / job_id)
            self._jobs[job_id] = job
            return job.model_copy(deep=True)

    def update(self, job_id: str, persist: bool = True, **changes) -> JobStatus | None:
        """Change fields of a job (None if it was deleted meanwhile) and, unless `persist` is
        False (frequent progress), write its status file."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            for key, value in changes.items():
                setattr(job, key, value)
            job.updated = now()
            if persist:
                self.persist(job_id)
            return job.model_copy(deep=True)

    def persist(self, job_id: str) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None:
                write_atomic(self.folder(job_id) / "status.json", job.model_dump_json(indent=2).encode())

    def finish(self, job_id: str, state: JobState, error: str | None = None,
               result: JobResult | None = None) -> JobStatus | None:
        stage = state.value   # a finished job's stage is its status
        finished = now() if state.finished else None
        return self.update(job_id, status=state, stage=stage, error=error, result=result, finished=finished,
                           eta_s=0.0 if state is JobState.done else None)

    def delete(self, job_id: str) -> bool:
        with self._lock:
            if self._jobs.pop(job_id, None) is None:
                return False
            doomed = self.root / f".{job_id}.deleted"
            os.replace(self.folder(job_id), doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        return True

    # --- start-up ---------------------------------------------------------------------------
    def load(self) -> list[str]:
        """Read every job folder; returns warnings about folders that could not be read.
        Leftovers of a crash mid-create or mid-delete are removed."""
        warnings = []
        for path in sorted(self.root.iterdir()):
            if path.name.startswith("."):   # ours (`.<id>.new`, `.<id>.deleted`) go; others are not ours
                if _LEFTOVER.match(path.name):
                    shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
                continue
            if not (path.is_dir() and _ID.match(path.name)):
                continue
            try:
                job = JobStatus.model_validate_json((path / "status.json").read_bytes())
            except (OSError, ValidationError, ValueError) as exc:
                warnings.append(f"skipped {path}: unreadable status.json ({str(exc).splitlines()[0]})")
                continue
            self._jobs[job.id] = job
        self._next_seq = max((j.seq for j in self._jobs.values()), default=0) + 1
        return warnings

    def unfinished(self) -> list[JobStatus]:
        """Jobs to run, in submission order: queued ones, and those a stop interrupted."""
        return [j for j in self.all() if not j.status.finished]
