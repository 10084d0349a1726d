"""The FIFO queue, and the one worker process that runs it.

One thread (the dispatcher) owns the worker: it starts it, hands it one job at a time,
turns its messages into status changes, and stops it when asked, when idle for long enough
(to give VRAM back) or when the server stops. HTTP handlers only queue, cancel, delete and
read; they never touch the worker themselves.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections import deque
from importlib import metadata

from .. import __version__
from ..errors import DreamsculptError
from ..tasks import JobRequest, task_of
from .schemas import JobResult, JobState, JobStatus, now
from .settings import ServerSettings
from .store import JobStore

log = logging.getLogger("dreamsculpt.server")
#: Multi-line details (tracebacks): the log file only, so stderr keeps one line per event.
detail = logging.getLogger("dreamsculpt.server.detail")

#: Seconds a cancelled job may take to stop at a step boundary before its worker is killed
#: (loading a model or meshing has no step boundary).
CANCEL_GRACE_S = 10.0
#: Seconds a new worker may take to import torch and report in.
WORKER_START_S = 180.0
PERSIST_EVERY_S = 1.0


class Busy(Exception):
    """The request conflicts with the running job."""


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


class _Worker:
    """A started worker process and our end of its pipe."""

    def __init__(self, ctx, cancel, device: str):
        from .worker import worker_main

        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=worker_main, args=(child, cancel, os.getpid(), device),
                                   name="dreamsculpt-worker", daemon=True)
        self.process.start()
        child.close()
        self.ready = False

    def stop(self, timeout: float = 10.0) -> None:
        try:
            self.conn.send(("exit",))
        except OSError:
            pass
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self.conn.close()


class Dispatcher:
    def __init__(self, store: JobStore, settings: ServerSettings):
        self.store, self.settings = store, settings
        self._ctx = multiprocessing.get_context("spawn")  # never fork a process that has threads
        self._cancel = self._ctx.Event()
        self._cond = threading.Condition()
        self._queue: deque[str] = deque()
        self._running: str | None = None
        self._stop_reason: str | None = None      # "cancel" or "shutdown" while stopping the running job
        self._kill_at: float | None = None
        self._stopping = False
        self._release_requested = False
        self._worker: _Worker | None = None
        self._last_active = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="dreamsculpt-dispatcher", daemon=True)
        self.device: str | None = None
        self.models: list[str] = []

    # --- called from HTTP handlers ---------------------------------------------------------
    def start(self) -> None:
        """Queue what the last run left unfinished (interrupted jobs first, as they were
        first in line), then start the dispatcher thread."""
        for warning in self.store.load():
            log.warning(warning)
        for job in self.store.unfinished():
            if job.status is JobState.running:
                job = self.store.update(job.id, status=JobState.interrupted, stage="interrupted", eta_s=None)
                log.info("job %s was interrupted at step %d/%d; it resumes from its last checkpoint",
                         job.id, job.step, job.total)
            self._queue.append(job.id)
        if self._queue:
            log.info("%d unfinished job(s) queued again", len(self._queue))
        pruned = self.store.images.prune()
        if pruned:
            log.info("deleted %d uploaded image(s) older than a week", pruned)
        self._thread.start()

    def submit(self, request: JobRequest) -> JobStatus:
        total = task_of(request).total_steps(request)
        with self._cond:
            if self._stopping:
                raise Busy("The server is stopping; submit the job again once it is back.")
            job = self.store.create(request, total)
            self._queue.append(job.id)
            self._cond.notify_all()
            job.queue_position = len(self._queue) - 1
        log.info("job %s queued: %s %s prior=%s seed=%s preset=%s steps=%d", job.id, request.kind,
                 request.subject(), request.prior, request.seed, getattr(request, "preset", "-"), total)
        return job

    def status(self, job_id: str) -> JobStatus | None:
        job = self.store.get(job_id)
        if job is not None:
            with self._cond:
                job.queue_position = self._queue.index(job_id) if job_id in self._queue else None
        return job

    def jobs(self) -> list[JobStatus]:
        jobs = self.store.all()
        with self._cond:
            positions = {job_id: i for i, job_id in enumerate(self._queue)}
        for job in jobs:
            job.queue_position = positions.get(job.id)
        return jobs

    def cancel(self, job_id: str) -> JobStatus | None:
        with self._cond:
            job = self.store.get(job_id)
            if job is None or job.status.finished:
                return job
            if job_id in self._queue:
                self._queue.remove(job_id)
                job = self.store.finish(job_id, JobState.cancelled)
                log.info("job %s cancelled before it ran", job_id)
            elif job_id == self._running and self._stop_reason is None:
                self._stop_running("cancel")
                job = self.store.update(job_id, stage="cancelling")
        return self.status(job_id)

    def delete(self, job_id: str) -> bool:
        """Remove a job and its folder; a running job is cancelled first (this waits for it)."""
        with self._cond:
            if self.store.get(job_id) is None:
                return False
            if job_id in self._queue:
                self._queue.remove(job_id)
            if job_id == self._running:
                if self._stop_reason is None:
                    self._stop_running("cancel")
                if not self._cond.wait_for(lambda: self._running != job_id, CANCEL_GRACE_S + 20):
                    raise Busy(f"Job {job_id} did not stop in time; try deleting it again.")
            deleted = self.store.delete(job_id)
        if deleted:
            log.info("job %s deleted", job_id)
        return deleted

    def release_models(self) -> list[str]:
        """Stop the worker, giving its memory (VRAM) back. Refused while a job runs."""
        with self._cond:
            if self._running:
                raise Busy(f"Job {self._running} is running; cancel it or wait before releasing models.")
            released = list(self.models)
            self._release_requested = True
            self._cond.notify_all()
            self._cond.wait_for(lambda: not self._release_requested, 60)
        return released

    def health(self) -> dict:
        with self._cond:
            if self._worker is None:
                worker = "stopped"
            elif not self._worker.ready:
                worker = "starting"
            else:
                worker = "busy" if self._running else "idle"
            return {"version": __version__, "device": self.device, "torch": _version("torch"),
                    "diffusers": _version("diffusers"), "models": list(self.models), "worker": worker,
                    "queue": len(self._queue), "running": self._running}

    def stop(self, timeout: float = CANCEL_GRACE_S + 10) -> None:
        """Stop for a server shutdown: the running job saves a checkpoint and is marked
        interrupted (it resumes on the next start); queued jobs stay queued on disk."""
        with self._cond:
            self._stopping = True
            if self._running and self._stop_reason is None:
                self._stop_running("shutdown")
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _stop_running(self, reason: str) -> None:
        """(Lock held.) Ask the running job to stop at its next step."""
        self._stop_reason = reason
        self._kill_at = time.monotonic() + CANCEL_GRACE_S
        self._cancel.set()

    # --- the dispatcher thread ---------------------------------------------------------------
    def _loop(self) -> None:
        try:
            self._ensure_worker()  # start it now: the first job then starts at once
        except DreamsculptError as exc:
            log.error("%s", exc)
        while True:
            job_id = None
            with self._cond:
                idle_stop = False
                while not (self._queue or self._stopping or self._release_requested or idle_stop):
                    idle_for = time.monotonic() - self._last_active
                    limit = self.settings.idle_release_s
                    if self._worker is not None and limit > 0 and idle_for >= limit:
                        idle_stop = True
                        log.info("idle for %.0f s: stopping the worker to free memory", idle_for)
                        break
                    self._cond.wait(None if self._worker is None or limit <= 0 else max(limit - idle_for, 0.05))
                if self._stopping:
                    break
                if self._queue and not self._release_requested:
                    job_id = self._queue.popleft()
                    self._running, self._stop_reason, self._kill_at = job_id, None, None
                    self._cancel.clear()
            if job_id is None:  # release on request, or after the idle time
                self._stop_worker()
                with self._cond:
                    self._release_requested = False
                    self._last_active = time.monotonic()
                    self._cond.notify_all()
                continue
            try:
                self._run(job_id)
            except Exception as exc:  # noqa: BLE001 - a bug here must not stop the queue
                log.error("job %s: internal error in the dispatcher: %r (traceback in the log file)", job_id, exc)
                detail.exception("job %s: dispatcher error", job_id)
                self.store.finish(job_id, JobState.failed, "Internal server error; see the server log.")
            with self._cond:
                self._running, self._stop_reason = None, None
                self._last_active = time.monotonic()
                self._cond.notify_all()
        self._stop_worker()

    def _stop_worker(self) -> None:
        """Stop the worker (if any) and forget its models. Call without the lock held: it
        waits for the process."""
        with self._cond:
            worker, self._worker = self._worker, None
            released, self.models = self.models, []
        if worker is not None:
            worker.stop()
            log.info("worker stopped%s", f"; released {', '.join(released)}" if released else "")

    def _ensure_worker(self) -> _Worker:
        if self._worker is not None and self._worker.process.is_alive():
            return self._worker
        worker = _Worker(self._ctx, self._cancel, self.settings.device)
        with self._cond:
            self._worker, self.models = worker, []
        deadline = time.monotonic() + WORKER_START_S
        while time.monotonic() < deadline and worker.process.is_alive():
            if worker.conn.poll(0.2):
                kind, info = worker.conn.recv()
                if kind == "hello":
                    worker.ready, self.device = True, info["device"]
                    log.info("worker started (pid %d) on %s", worker.process.pid, info["device"])
                    return worker
        self._stop_worker()
        raise DreamsculptError("The worker process did not start (exit code "
                               f"{worker.process.exitcode}); see the server log.")

    def _run(self, job_id: str) -> None:
        job = self.store.get(job_id)
        if job is None:
            return
        resume = job.started is not None
        try:
            worker = self._ensure_worker()
        except DreamsculptError as exc:
            self.store.finish(job_id, JobState.failed, str(exc))
            return
        self.store.update(job_id, status=JobState.running, stage="loading", started=job.started or now(),
                          error=None)
        log.info("job %s %s", job_id, "resuming" if resume else "started")
        worker.conn.send(("run", job_id, job.request.model_dump(mode="json"), str(self.store.folder(job_id)), resume))
        _JobRun(self, worker, job_id).follow()


class _JobRun:
    """Follows one job's messages until it ends; decides its final state."""

    def __init__(self, dispatcher: Dispatcher, worker: _Worker, job_id: str):
        self.d, self.worker, self.job_id = dispatcher, worker, job_id
        self.resumed = False
        self.last_persist = 0.0

    def follow(self) -> None:
        store, conn = self.d.store, self.worker.conn
        while True:
            try:
                message = conn.recv() if conn.poll(0.2) else None
            except (EOFError, OSError):
                message = None
            if message is not None:
                if self.handle(message):
                    if conn.poll(5):  # the worker's list of loaded models follows the outcome
                        self.handle(conn.recv())
                    return
                continue
            if not self.worker.process.is_alive():
                self.worker.process.join(1)
                code = self.worker.process.exitcode
                self.d._stop_worker()
                if self.d._stop_reason is not None:
                    self.end_stopped()
                else:
                    store.finish(self.job_id, JobState.failed,
                                 f"The worker process died (exit code {code}; -9 is often the system running "
                                 "out of memory). Run the job again; if it happens again, see the server log.")
                    log.error("job %s failed: worker died with exit code %s", self.job_id, code)
                return
            kill_at = self.d._kill_at
            if kill_at is not None and time.monotonic() > kill_at:
                log.warning("job %s did not stop within %.0f s; stopping its worker", self.job_id, CANCEL_GRACE_S)
                self.d._stop_worker()
                self.end_stopped()
                return

    def end_stopped(self) -> None:
        job = self.d.store.get(self.job_id)
        step = job.step if job else 0
        if self.d._stop_reason == "shutdown":
            self.d.store.update(self.job_id, status=JobState.interrupted, stage="interrupted", eta_s=None)
            log.info("job %s interrupted at step %d by the server stopping; it resumes on the next start",
                     self.job_id, step)
        else:
            self.d.store.finish(self.job_id, JobState.cancelled)
            log.info("job %s cancelled at step %d", self.job_id, step)

    def handle(self, message: tuple) -> bool:
        """Apply one worker message; True when the job has ended."""
        kind, store, job_id = message[0], self.d.store, self.job_id
        if kind == "started":
            self.resumed = message[2]
        elif kind == "progress":
            p = message[2]
            changes = {k: p[k] for k in ("step", "total", "loss", "elapsed_s", "eta_s")}
            if self.d._stop_reason is None:
                changes["stage"] = p["stage"]
            if self.resumed:
                changes["resumed_from"], self.resumed = p["step"] - 1, False
                log.info("job %s resumed from its checkpoint at step %d", job_id, p["step"] - 1)
            now = time.monotonic()
            job = store.get(job_id)
            stage_changed = job is not None and job.stage != changes.get("stage", job.stage)
            persist = now - self.last_persist > PERSIST_EVERY_S or stage_changed
            store.update(job_id, persist=persist, **changes)
            self.last_persist = now if persist else self.last_persist
        elif kind == "preview":
            store.update(job_id, persist=False, preview_step=message[2])
        elif kind == "models":
            with self.d._cond:
                self.d.models = list(message[1])
        elif kind == "loaded":
            with self.d._cond:
                self.d.models.append(message[1])
            log.info("job %s: loaded %s in %.1f s (kept for the next jobs)", job_id, message[1], message[2])
        elif kind == "done":
            r = message[2]
            result = JobResult(**r, files=store.result_files(job_id))
            store.finish(job_id, JobState.done, result=result)
            log.info("job %s done in %.1f s: %s", job_id, r["seconds"], message[3])
            return True
        elif kind == "failed":
            store.finish(job_id, JobState.failed, message[2])
            log.error("job %s failed: %s", job_id, message[2])
            if message[3]:
                detail.error("job %s traceback:\n%s", job_id, message[3])
            return True
        elif kind == "cancelled":
            self.end_stopped()
            return True
        return False
