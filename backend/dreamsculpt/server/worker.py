"""The worker process: runs the engine (the task of a job's kind), one job at a time, for the
server process.

Torch lives here and only here, so the server keeps answering HTTP while a job takes both
cores, a crash in the engine cannot take the server down, and stopping this process gives
every byte of (V)RAM back. Messages over a multiprocessing Pipe:

    server -> worker   ("run", job_id, request_dict, folder, resume) | ("exit",)
    worker -> server   ("hello", info) | ("started", job_id) | ("progress", job_id, dict)
                       | ("preview", job_id, step) | ("done", job_id, outputs, summary)
                       | ("failed", job_id, message, traceback_or_None) | ("cancelled", job_id)
                       | ("loaded", name, seconds) | ("models", names)

Cancellation is a shared Event that the optimisation loop checks before every step.
The worker dies with the server (PR_SET_PDEATHSIG on Linux, a parent check elsewhere).
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from pathlib import Path


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


def _device_info(device: str) -> dict:
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
    return {"device": name, "torch": torch.__version__}


def run_job(conn, cancel, models, job_id: str, request_dict: dict, folder: str, resume: bool,
            parent_pid: int, device: str) -> None:
    import torch
    from pydantic import TypeAdapter

    from ..callbacks import Callbacks
    from ..errors import CancelledError, DreamsculptError
    from ..tasks import JobRequest, task_of
    from ..tasks.stages import CHECKPOINT
    from .store import INPUT_IMAGE

    folder = Path(folder)
    out = folder / "out"
    resume = resume and (out / CHECKPOINT).is_file()
    conn.send(("started", job_id, resume))

    def on_progress(p):
        conn.send(("progress", job_id, {"step": p.step, "total": p.total, "loss": p.loss,
                                        "elapsed_s": p.elapsed_s, "eta_s": p.eta_s, "stage": p.stage}))

    def on_preview(step, image):
        _write_png(image, folder / "preview.png")
        conn.send(("preview", job_id, step))

    def should_cancel():
        return cancel.is_set() or os.getppid() != parent_pid

    try:
        request = TypeAdapter(JobRequest).validate_python(request_dict)
        result = task_of(request).run(request, out, Callbacks(on_progress, on_preview, should_cancel), models,
                                      device=device, resume=resume, image=folder / INPUT_IMAGE)
        conn.send(("done", job_id, {**result.outputs(), "seconds": round(result.seconds, 2)}, result.summary()))
    except CancelledError:
        conn.send(("cancelled", job_id))
    except DreamsculptError as exc:
        conn.send(("failed", job_id, str(exc), None))
    except torch.cuda.OutOfMemoryError:
        models.clear()
        conn.send(("failed", job_id, ("The GPU ran out of memory. Close other GPU programs, use preset "
                                      "'preview' or a lower resolution, or set fp16."), traceback.format_exc()))
    except MemoryError:
        models.clear()
        conn.send(("failed", job_id, ("The machine ran out of memory. Use preset 'preview', a lower "
                                      "resolution or mesh resolution."), None))
    except Exception as exc:  # noqa: BLE001 - a bug: report it, keep serving the queue
        conn.send(("failed", job_id, (f"Internal error ({type(exc).__name__}: {exc}); the traceback is "
                                      "in the server log. Please report it."), traceback.format_exc()))
    conn.send(("models", models.names()))


def worker_main(conn, cancel, parent_pid: int, device: str) -> None:
    """Entry point of the worker process (multiprocessing 'spawn')."""
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the server, which stops us cleanly
    from ..models import ModelCache

    models = ModelCache(on_load=lambda name, seconds: conn.send(("loaded", name, seconds)))
    conn.send(("hello", _device_info(device)))
    from .. import image_priors, priors  # noqa: F401 - the engine, imported while idle: the first job starts at once
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the server went away
            return
        if message[0] == "exit":
            return
        if message[0] == "run":
            _, job_id, request_dict, folder, resume = message
            run_job(conn, cancel, models, job_id, request_dict, folder, resume, parent_pid, device)
