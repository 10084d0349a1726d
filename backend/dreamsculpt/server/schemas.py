"""The job server's API as pydantic models: validation, the OpenAPI schema and the shape of
every status file come from these, not from hand-written checks. What a job asks for is a
request of requests.py (`JobRequest`, the union of the kind table's request models); this
module holds what the server says back: job status and results, health, uploads."""

from __future__ import annotations

from datetime import datetime, timezone
from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..requests import IMAGE_ID_PATTERN, JOB_NAME_PATTERN
from ..tasks import JobRequest

#: Job ids: creation time (UTC) and 6 random hex digits, e.g. 20261121-093512-4f2a9c.
JOB_ID_PATTERN = r"^[0-9]{8}-[0-9]{6}-[0-9a-f]{6}$"


def now() -> datetime:
    return datetime.now(timezone.utc)


class JobState(str, Enum):
    queued = "queued"
    running = "running"
    done = "done"
    failed = "failed"
    cancelled = "cancelled"
    interrupted = "interrupted"   # the server stopped or died mid-job; it resumes on the next start

    @property
    def finished(self) -> bool:
        return self in (JobState.done, JobState.failed, JobState.cancelled)


class JobResult(BaseModel):
    """What a finished job made: its task's outputs (the kind's own fields, as in run.json), the
    seconds it took and the files there are. The fields below are those of today's kinds; a new
    kind's outputs come through as they are (extra fields are kept)."""

    model_config = ConfigDict(extra="allow")

    seconds: float
    vertices: int | None = Field(None, description="Mesh size (the mesh kinds).")
    faces: int | None = None
    threshold: float | None = Field(None, description="Density level of the surface (the mesh kinds).")
    views: int | None = Field(None, description="Images made, view_00.png (the reference) included "
                                                "(novel views).")
    files: list[str] = Field(description="What GET /jobs/{id}/<file> serves, e.g. result.glb.")


class JobStatus(BaseModel):
    id: str = Field(pattern=JOB_NAME_PATTERN)   # the server's ids match JOB_ID_PATTERN; a batch's are its names
    seq: int = Field(description="Submission order; the queue runs jobs in this order.")
    kind: str
    status: JobState
    stage: str = Field(description="queued, loading, optimising, meshing, saving, done...")
    step: int = 0
    total: int
    eta_s: float | None = None
    loss: float | None = None
    elapsed_s: float | None = None
    created: datetime
    started: datetime | None = None
    finished: datetime | None = None
    updated: datetime
    error: str | None = Field(None, description="What went wrong and what to do (failed jobs).")
    resumed_from: int | None = Field(None, description="Step a job interrupted by a server stop went on from.")
    preview_step: int | None = Field(None, description="Step of the picture at /jobs/{id}/preview.png.")
    queue_position: int | None = Field(None, description="0: next to run (queued jobs only).")
    result: JobResult | None = None
    request: JobRequest


class JobList(BaseModel):
    jobs: list[JobStatus]


class WorkerInfo(BaseModel):
    device: str | None = Field(description="Where this worker runs jobs (null until it has started once).")
    state: Literal["starting", "idle", "busy", "stopped"]
    running: str | None = Field(description="Id of the job it runs.")
    models: list[str] = Field(description="Models it holds in memory.")
    pid: int | None = Field(None, description="Its process.")
    host: str | None = Field(None, description="Its machine, when not the server's (a Ray node).")


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    version: str
    device: str | None = Field(description="Where jobs run (null until the worker has started once).")
    torch: str | None
    diffusers: str | None
    models: list[str] = Field(description="Models the workers hold in memory.")
    worker: Literal["starting", "idle", "busy", "stopped"]
    queue: int = Field(description="Jobs waiting, not counting the running one.")
    running: str | None = Field(description="Id of the running job (the earliest queued, when several run).")
    workers: list[WorkerInfo] = Field(description="One per device (--devices) or Ray slot: what each runs.")


class ImageInfo(BaseModel):
    image: str = Field(pattern=IMAGE_ID_PATTERN, description="The id to send as `image` in POST /jobs.")
    width: int
    height: int
    has_alpha: bool = Field(description="The image has transparency (its alpha is the object's mask).")


class Released(BaseModel):
    released: list[str]


class ModelProgress(BaseModel):
    """A model download this server runs (POST /models/{name}/download)."""

    done: int = Field(description="Bytes in the cache so far, of the model and of what it needs.")
    total: int = Field(description="Bytes of the whole download (0 until the hub has listed the files).")


class ModelStatus(BaseModel):
    """One model of the registry (`dreamsculpt models list`), as the server's Hugging Face cache
    holds it."""

    name: str = Field(description="What the CLI and these routes call it, e.g. sd.")
    repo: str = Field(description="Its Hugging Face hub repo.")
    serves: str = Field(description="Which defaults load it.")
    needs: list[str] = Field(description="Models it loads alongside (downloaded with it).")
    licence: str
    gated: bool = Field(description="The hub wants its licence accepted and a login (`hf auth login` on the "
                                    "server's machine) before it downloads.")
    state: Literal["present", "partial", "missing"]
    bytes_on_disk: int = Field(description="What removing it frees (partial downloads included).")
    bytes_total: int | None = Field(description="A complete copy's size, where known.")
    path: str = Field(description="Its folder in the cache (there or not).")
    download: ModelProgress | None = Field(None, description="The download running now, if one is.")
    error: str | None = Field(None, description="Why this server's last download of it failed, and what to do.")


class ModelList(BaseModel):
    models: list[ModelStatus]
    cache: str = Field(description="The Hugging Face cache the server uses (HF_HUB_CACHE, else HF_HOME/hub).")


class ModelRemoved(BaseModel):
    name: str
    freed_bytes: int = Field(description="Bytes the removal freed (0: it was not in the cache).")
