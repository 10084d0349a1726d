"""What crosses between the server and whatever runs its jobs: plain dataclasses, picklable
(they travel over a multiprocessing Pipe today, and must survive any other transport an
executor uses), told apart by type rather than by a string tag or a position.

    server -> worker   RunJob | Exit
    worker -> server   Hello | Started | ProgressUpdate | PreviewReady | ModelLoaded
                       | ModelsHeld | Finished | Failed | Cancelled

An executor adds two events of its own, for what no worker can say about itself:
WorkerDied (the process or node running the job went away) and StopTimedOut (a job asked to
stop did not, within its grace period, and was killed).

Nothing here imports torch or the engine: the server process reads these without it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# --- server -> worker ----------------------------------------------------------------------------

@dataclass(frozen=True)
class RunJob:
    """Run one job. `request` is the validated JobRequest as JSON (`model_dump(mode="json")`):
    the worker validates it again and builds the engine's configuration itself."""

    job_id: str
    request: dict
    folder: str          # the job's folder in the store; the engine writes into folder/out
    resume: bool         # the job ran before: go on from its checkpoint if there is one


@dataclass(frozen=True)
class Exit:
    """Finish: the worker process returns (and gives its memory back)."""


# --- worker -> server ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Hello:
    """The worker has imported torch and is ready for jobs."""

    device: str          # e.g. "cuda:0 (NVIDIA H200)", "cpu", or "unavailable: <why>"
    torch: str
    pid: int | None = None    # the process that runs the jobs
    host: str | None = None   # its machine (a Ray node), when it may not be the server's


@dataclass(frozen=True)
class Started:
    job_id: str
    resumed: bool        # a checkpoint was found and the job goes on from it


@dataclass(frozen=True)
class ProgressUpdate:
    job_id: str
    step: int
    total: int
    loss: float | None
    elapsed_s: float
    eta_s: float | None
    stage: str           # loading, optimising, meshing, saving...


@dataclass(frozen=True)
class PreviewReady:
    """folder/preview.png now shows the job at `step`."""

    job_id: str
    step: int


@dataclass(frozen=True)
class ModelLoaded:
    name: str            # readable, as GET /health lists it
    seconds: float


@dataclass(frozen=True)
class ModelsHeld:
    """Every model the worker holds now; sent just before a job's outcome (after an
    out-of-memory error the list is empty)."""

    names: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Finished:
    job_id: str
    result: dict         # JobResult's fields but `files`: seconds, and vertices... or views
    summary: str         # what was made, for the log: "1204 vertices, 2400 faces", "8 views"


@dataclass(frozen=True)
class Failed:
    job_id: str
    message: str         # what went wrong and what to do, for the user
    traceback: str | None = None   # for the log file, when the failure is a bug


@dataclass(frozen=True)
class Cancelled:
    """The job stopped at a step boundary because it was asked to (it kept its checkpoint)."""

    job_id: str


# --- made by an executor -------------------------------------------------------------------------

@dataclass(frozen=True)
class WorkerDied:
    """What ran the job went away without an outcome; its models are gone with it."""

    job_id: str | None
    exit_code: int | None   # -9: killed, often by the system running out of memory


@dataclass(frozen=True)
class StopTimedOut:
    """A job asked to stop did not within `grace_s`; the executor stopped its worker."""

    job_id: str
    grace_s: float


#: What an executor reports about a running job.
Event = (Started | ProgressUpdate | PreviewReady | ModelLoaded | ModelsHeld | Finished | Failed | Cancelled
         | WorkerDied | StopTimedOut)
#: Events after which the job is over.
OUTCOMES = (Finished, Failed, Cancelled, WorkerDied, StopTimedOut)
