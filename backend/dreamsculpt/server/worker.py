"""The worker process of LocalExecutor (executors.py): runs the engine, one job at a time,
for the server process.

Torch lives here and only here, so the server keeps answering HTTP while a job takes both
cores, a crash in the engine cannot take the server down, and stopping this process gives
every byte of (V)RAM back. Messages over a multiprocessing Pipe, dataclasses from
messages.py:

    server -> worker   RunJob(job_id, request, folder, resume) | Exit()
    worker -> server   Hello(device, torch), once at start; then for each job
                       Started(job_id, resumed), ProgressUpdate(job_id, step, total, ...)
                       and PreviewReady(job_id, step) as it runs, ModelLoaded(name, seconds)
                       when it loads a model, then ModelsHeld(names) and the outcome:
                       Finished(job_id, result, summary) | Failed(job_id, message, traceback)
                       | Cancelled(job_id)

The job arrives as its request (JSON), not as an engine configuration: the worker validates
it again and runs the task of its kind (tasks.TASKS) in _run_engine. Cancellation is a shared Event that the optimisation loop checks
before every step. The worker dies with the server (PR_SET_PDEATHSIG on Linux, a parent
check elsewhere).
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from pathlib import Path

from .messages import (
    Cancelled,
    Exit,
    Failed,
    Finished,
    Hello,
    ModelLoaded,
    ModelsHeld,
    PreviewReady,
    ProgressUpdate,
    RunJob,
    Started,
)


def _die_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the server died before we got here
        os._exit(0)


def _write_png(image, path: Path) -> None:
    """[3, S, S] float image in [0, 1] -> PNG, replaced atomically (the server may be reading it)."""
    import io

    from PIL import Image

    from .store import write_atomic

    array = (image.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    write_atomic(path, buffer.getvalue())


def hello(device: str) -> Hello:
    import torch

    from ..devices import resolve_device
    from ..errors import DreamsculptError

    try:
        resolved = resolve_device(device)
        name = str(resolved)
        if resolved.type == "cuda":
            name = f"{resolved} ({torch.cuda.get_device_name(resolved)})"
    except DreamsculptError as exc:
        name = f"unavailable: {exc}"
    return Hello(name, torch.__version__)


def run_job(send, stop_asked, models, job: RunJob, device: str) -> Finished | Failed | Cancelled:
    """Run one job, reporting through `send` as it goes; `stop_asked()` is checked before every
    step. Always ends by sending ModelsHeld and the outcome, which it also returns. Shared by
    the local worker process and the Ray task (ray_task.py)."""
    from ..optimize import Callbacks
    from ..tasks.stages import CHECKPOINT

    folder = Path(job.folder)
    resume = job.resume and (folder / "out" / CHECKPOINT).is_file()
    send(Started(job.job_id, resume))

    def on_progress(p):
        send(ProgressUpdate(job.job_id, p.step, p.total, p.loss, p.elapsed_s, p.eta_s, p.stage))

    def on_preview(step, image):
        _write_png(image, folder / "preview.png")
        send(PreviewReady(job.job_id, step))

    outcome = _outcome(job, device, resume, Callbacks(on_progress, on_preview, stop_asked), models)
    # The models first: when the server sees the outcome, /health already lists what is held.
    send(ModelsHeld(models.names()))
    send(outcome)
    return outcome


def _outcome(job: RunJob, device: str, resume: bool, callbacks, models) -> Finished | Failed | Cancelled:
    """Run the job; what became of it, with what went wrong said for the user."""
    import torch
    from pydantic import TypeAdapter

    from ..errors import CancelledError, DreamsculptError
    from ..tasks import JobRequest

    try:
        request = TypeAdapter(JobRequest).validate_python(job.request)
        result, summary = _run_engine(request, device, Path(job.folder), resume, callbacks, models)
        return Finished(job.job_id, result, summary)
    except CancelledError:
        return Cancelled(job.job_id)
    except DreamsculptError as exc:
        return Failed(job.job_id, str(exc))
    except torch.cuda.OutOfMemoryError:
        models.clear()
        return Failed(job.job_id, "The GPU ran out of memory. Close other GPU programs, use preset 'preview' "
                                  "or a lower resolution, or set fp16.", traceback.format_exc())
    except MemoryError:
        models.clear()
        return Failed(job.job_id, "The machine ran out of memory. Use preset 'preview', a lower resolution "
                                  "or mesh resolution.")
    except Exception as exc:  # noqa: BLE001 - a bug: report it, keep serving the queue
        return Failed(job.job_id, f"Internal error ({type(exc).__name__}: {exc}); the traceback is in the "
                                  "server log. Please report it.", traceback.format_exc())


def _run_engine(request, device: str, folder: Path, resume: bool, callbacks, models) -> tuple[dict, str]:
    """Run the task of the job's kind (tasks.TASKS) in `folder`/out; returns JobResult's fields
    (but `files`): the kind's outputs and the seconds, and the task's one-line summary."""
    from ..tasks import task_of
    from .store import INPUT_DEPTH, INPUT_IMAGE

    depth = {"depth_image": folder / INPUT_DEPTH} if (folder / INPUT_DEPTH).is_file() else {}
    result = task_of(request).run(request, folder / "out", callbacks, models, device=device, resume=resume,
                                  image=folder / INPUT_IMAGE, **depth)
    return {**result.outputs(), "seconds": round(result.seconds, 2)}, result.summary()


def worker_main(conn, cancel, parent_pid: int, device: str, threads: int | None = None) -> None:
    """Entry point of the worker process (multiprocessing 'spawn')."""
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the server, which stops us cleanly
    if threads:
        import torch

        torch.set_num_threads(threads)
    from ..models import ModelCache

    models = ModelCache(on_load=lambda name, seconds: conn.send(ModelLoaded(name, seconds)))
    conn.send(hello(device))
    from .. import image_priors, priors  # noqa: F401 - the engine, imported while idle: the first job starts at once
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the server went away
            return
        match message:
            case Exit():
                return
            case RunJob():
                run_job(conn.send, lambda: cancel.is_set() or os.getppid() != parent_pid, models, message, device)
