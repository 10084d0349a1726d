"""The job server's API as pydantic models: validation, the OpenAPI schema and the shape of
every status file come from these, not from hand-written checks."""

from __future__ import annotations

from datetime import datetime, timezone
from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from ..config import DEFAULT_SD_MODEL, LIMITS, PRESETS, PRIORS, MeshConfig, RunConfig, build_config

#: Job ids: creation time (UTC) and 6 random hex digits, e.g. 20261121-093512-4f2a9c.
JOB_ID_PATTERN = r"^[0-9]{8}-[0-9]{6}-[0-9a-f]{6}$"
STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)


def now() -> datetime:
    return datetime.now(timezone.utc)


def _no_control_characters(value: str | None, name: str) -> str | None:
    if value is not None and any(ord(ch) < 32 for ch in value):
        raise ValueError(f"{name} must not contain control characters (newlines, tabs, NUL)")
    return value


class MeshOptions(BaseModel):
    model_config = STRICT

    resolution: int | None = Field(None, ge=LIMITS["mesh_resolution"][0], le=LIMITS["mesh_resolution"][1],
                                   description="Marching-cubes grid size (default: the preset's).")
    threshold: float | None = Field(None, gt=0, le=1e6, description="Density of the surface (default: automatic).")
    max_faces: int | None = Field(MeshConfig.max_faces, ge=LIMITS["max_faces"][0], le=LIMITS["max_faces"][1],
                                  description="Decimate to this many faces; null keeps every face.")
    obj: bool = Field(False, description="Also write result.obj.")


class TextTo3DRequest(BaseModel):
    """A text (or reference set) to coloured mesh job: the options of `dreamsculpt generate`."""

    model_config = STRICT

    kind: Literal["text_to_3d"]
    prior: Literal[PRIORS] = Field("sd", description="sd: Stable Diffusion; builtin: offline shapes; "
                                                     "references: a folder of images on the server's disk.")
    prompt: str = Field("", max_length=2000, validate_default=True, description='What to make, e.g. "a red cube".')
    negative: str = Field("", max_length=2000, description="Negative prompt (sd prior).")
    model: str = Field(DEFAULT_SD_MODEL, min_length=1, max_length=4096,
                       description="Hub id, diffusers folder or .safetensors/.ckpt file (sd prior).")
    references: str | None = Field(None, min_length=1, max_length=4096, validate_default=True,
                                   description="Folder of square images (+ poses.json) on the server's disk.")
    seed: int = Field(0, ge=LIMITS["seed"][0], le=LIMITS["seed"][1])
    preset: Literal[tuple(PRESETS)] = "standard"  # type: ignore[valid-type]
    steps: int | None = Field(None, ge=LIMITS["steps"][0], le=LIMITS["steps"][1],
                              description="Optimisation steps (default: the preset's).")
    guidance_scale: float | None = Field(None, gt=0, le=1000,
                                         description="Classifier-free guidance (default: the prior's).")
    resolution: int | None = Field(None, ge=LIMITS["resolution"][0], le=LIMITS["resolution"][1],
                                   description="Render size during optimisation (default: the preset's).")
    fp16: bool = Field(False, description="Half precision for the diffusion model (CUDA only).")
    mesh: MeshOptions = Field(default_factory=MeshOptions)

    @field_validator("prompt")
    @classmethod
    def _prompt_given(cls, value: str, info: ValidationInfo) -> str:
        if not value.strip() and info.data.get("prior") != "references":
            raise ValueError('the prompt is empty: say what to make, e.g. "a red cube"')
        return _no_control_characters(value.replace("\n", " ").replace("\t", " "), "prompt")

    @field_validator("references")
    @classmethod
    def _references_given(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("prior") == "references" and not value:
            raise ValueError("prior 'references' needs references: a folder of images on the server's disk")
        return _no_control_characters(value, "references")

    @field_validator("model", "negative")
    @classmethod
    def _plain_text(cls, value: str, info: ValidationInfo) -> str:
        return _no_control_characters(value, info.field_name)

    def to_config(self, device: str = "auto") -> RunConfig:
        m = self.mesh
        return build_config(self.prompt, prior=self.prior, negative=self.negative, model=self.model,
                            references=self.references, preset=self.preset, seed=self.seed, steps=self.steps,
                            guidance_scale=self.guidance_scale, resolution=self.resolution,
                            mesh_resolution=m.resolution, threshold=m.threshold, max_faces=m.max_faces,
                            obj=m.obj, device=device, fp16=self.fp16)


#: What POST /jobs accepts; later kinds join as a union discriminated by `kind`.
JobRequest = TextTo3DRequest


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
    vertices: int
    faces: int
    seconds: float
    threshold: float
    files: list[str] = Field(description="What GET /jobs/{id}/<file> serves, e.g. result.glb.")


class JobStatus(BaseModel):
    id: str = Field(pattern=JOB_ID_PATTERN)
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


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    version: str
    device: str | None = Field(description="Where jobs run (null until the worker has started once).")
    torch: str | None
    diffusers: str | None
    models: list[str] = Field(description="Models the worker holds in memory.")
    worker: Literal["starting", "idle", "busy", "stopped"]
    queue: int = Field(description="Jobs waiting, not counting the running one.")
    running: str | None = Field(description="Id of the running job.")


class Released(BaseModel):
    released: list[str]
