"""The FIFO queue, and the decisions about each job's state.

One thread (the dispatcher) hands one job at a time to an executor (executors.py: today a
worker process on this machine), turns the events it reports into status changes, and
releases the executor's models when asked, when idle for long enough (to give VRAM back) or
when the server stops. HTTP handlers only queue, cancel, delete and read; they never touch
the executor's work themselves.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from enum import Enum
from importlib import metadata

from .. import __version__
from ..errors import DreamsculptError
from ..tasks import JobRequest, task_of
from .executors import Executor, LocalExecutor, WorkerState
from .messages import (
    Cancelled,
    Event,
    Failed,
    Finished,
    ModelLoaded,
    PreviewReady,
    ProgressUpdate,
    RunJob,
    Started,
    StopTimedOut,
    WorkerDied,
)
from .schemas import JobResult, JobState, JobStatus, now
from .settings import ServerSettings
from .store import JobStore

log = logging.getLogger("dreamsculpt.server")
#: Multi-line details (tracebacks): the log file only, so stderr keeps one line per event.
detail = logging.getLogger("dreamsculpt.server.detail")

#: Seconds a cancelled job may take to stop at a step boundary before its worker is killed
#: (loading a model or meshing has no step boundary).
CANCEL_GRACE_S = 10.0
PERSIST_EVERY_S = 1.0


class Busy(Exception):
    """The request conflicts with the running job."""


class StopReason(str, Enum):
    """Why the running job is being stopped: it ends cancelled, or interrupted (to resume)."""

    cancel = "cancel"
    shutdown = "shutdown"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


class Dispatcher:
    def __init__(self, store: JobStore, settings: ServerSettings, executor: Executor | None = None):
        self.store, self.settings = store, settings
        self.executor: Executor = executor if executor is not None else LocalExecutor(settings.device)
        self._cond = threading.Condition()
        self._queue: deque[str] = deque()
        self._running: str | None = None
        self._stop_reason: StopReason | None = None   # while stopping the running job
        self._stopping = False
        self._release_requested = False
        self._last_active = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="dreamsculpt-dispatcher", daemon=True)

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

    def submit(self, request: JobRequest, job_id: str | None = None) -> JobStatus:
        """Queue a job; `job_id` names its folder (a batch's job names), else a new id is made."""
        total = task_of(request).total_steps(request)
        with self._cond:
            if self._stopping:
                raise Busy("The server is stopping; submit the job again once it is back.")
            job = self.store.create(request, total, job_id=job_id)
            self._queue.append(job.id)
            self._cond.notify_all()
            job.queue_position = len(self._queue) - 1
        log.info("job %s queued: %s %s prior=%s seed=%s preset=%s steps=%d", job.id, request.kind, request.subject(),
                 request.prior, request.seed, getattr(request, "preset", "-"), total)
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
                self._stop_running(StopReason.cancel)
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
                    self._stop_running(StopReason.cancel)
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
            released = self.executor.state().models
            self._release_requested = True
            self._cond.notify_all()
            self._cond.wait_for(lambda: not self._release_requested, 60)
        return released

    def health(self) -> dict:
        state = self.executor.state()
        with self._cond:
            worker = state.worker.value
            if state.worker is WorkerState.ready:
                worker = "busy" if self._running else "idle"
            return {"version": __version__, "device": state.device, "torch": _version("torch"),
                    "diffusers": _version("diffusers"), "models": state.models, "worker": worker,
                    "queue": len(self._queue), "running": self._running}

    def stop(self, timeout: float = CANCEL_GRACE_S + 10) -> None:
        """Stop for a server shutdown: the running job saves a checkpoint and is marked
        interrupted (it resumes on the next start); queued jobs stay queued on disk."""
        with self._cond:
            self._stopping = True
            if self._running and self._stop_reason is None:
                self._stop_running(StopReason.shutdown)
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _stop_running(self, reason: StopReason) -> None:
        """(Lock held.) Ask the running job to stop at its next step."""
        self._stop_reason = reason
        self.executor.cancel(self._running, CANCEL_GRACE_S)

    def _why_stopping(self) -> StopReason | None:
        with self._cond:
            return self._stop_reason

    # --- the dispatcher thread ---------------------------------------------------------------
    def _loop(self) -> None:
        try:
            self.executor.start()  # now: the first job then starts at once
        except DreamsculptError as exc:
            log.error("%s", exc)
        while True:
            job_id = None
            with self._cond:
                self._wait_for_work()
                if self._stopping:
                    break
                if self._queue and not self._release_requested:
                    job_id = self._queue.popleft()
                    self._running, self._stop_reason = job_id, None
            if job_id is None:  # release on request, or after the idle time
                self.executor.release()
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
        self.executor.shutdown()

    def _wait_for_work(self) -> None:
        """(Lock held.) Wait for a job, a stop or a release request; or return when the
        executor has held memory without a job for the idle time (the loop releases it)."""
        while not (self._queue or self._stopping or self._release_requested):
            idle_for = time.monotonic() - self._last_active
            limit = self.settings.idle_release_s
            holding = self.executor.state().worker is not WorkerState.stopped
            if holding and limit > 0 and idle_for >= limit:
                log.info("idle for %.0f s: stopping the worker to free memory", idle_for)
                return
            self._cond.wait(max(limit - idle_for, 0.05) if holding and limit > 0 else None)

    def _run(self, job_id: str) -> None:
        job = self.store.get(job_id)
        if job is None:
            return
        resume = job.started is not None
        run = RunJob(job_id, job.request.model_dump(mode="json"), str(self.store.folder(job_id)), resume)
        try:
            self.executor.submit(run)
        except DreamsculptError as exc:
            self.store.finish(job_id, JobState.failed, str(exc))
            return
        self.store.update(job_id, status=JobState.running, stage="loading", started=job.started or now(),
                          error=None)
        log.info("job %s %s", job_id, "resuming" if resume else "started")
        _JobRun(self.store, self.executor, job_id, self._why_stopping).follow()


class _JobRun:
    """Follows one job's events until it ends; decides its final state."""

    def __init__(self, store: JobStore, executor: Executor, job_id: str,
                 why_stopping: Callable[[], StopReason | None]):
        self.store, self.executor, self.job_id = store, executor, job_id
        self.why_stopping = why_stopping   # None unless the job was asked to stop
        self.resumed = False
        self.last_persist = 0.0

    def follow(self) -> None:
        while True:
            for event in self.executor.events(0.2):
                if getattr(event, "job_id", None) not in (None, self.job_id):
                    continue   # a late word about an earlier job
                if self.handle(event):
                    return

    def handle(self, event: Event) -> bool:
        """Apply one event; True when the job has ended."""
        job_id = self.job_id
        match event:
            case Started(resumed=resumed):
                self.resumed = resumed
            case ProgressUpdate():
                self.progress(event)
            case PreviewReady(step=step):
                self.store.update(job_id, persist=False, preview_step=step)
            case ModelLoaded(name=name, seconds=seconds):
                log.info("job %s: loaded %s in %.1f s (kept for the next jobs)", job_id, name, seconds)
            case Finished(result=fields, summary=summary):
                result = JobResult(**fields, files=self.store.result_files(job_id))
                self.store.finish(job_id, JobState.done, result=result)
                log.info("job %s done in %.1f s: %s", job_id, result.seconds, summary)
                return True
            case Failed(message=message, traceback=trace):
                self.store.finish(job_id, JobState.failed, message)
                log.error("job %s failed: %s", job_id, message)
                if trace:
                    detail.error("job %s traceback:\n%s", job_id, trace)
                return True
            case WorkerDied(exit_code=code) if self.why_stopping() is None:
                self.store.finish(job_id, JobState.failed,
                                  f"The worker process died (exit code {code}; -9 is often the system running "
                                  "out of memory). Run the job again; if it happens again, see the server log.")
                log.error("job %s failed: worker died with exit code %s", job_id, code)
                return True
            case Cancelled() | StopTimedOut() | WorkerDied():   # it was asked to stop, and it did
                self.end_stopped()
                return True
        return False

    def progress(self, p: ProgressUpdate) -> None:
        changes = {"step": p.step, "total": p.total, "loss": p.loss, "elapsed_s": p.elapsed_s, "eta_s": p.eta_s}
        if self.why_stopping() is None:   # keep "cancelling" up while it stops
            changes["stage"] = p.stage
        if self.resumed:
            changes["resumed_from"], self.resumed = p.step - 1, False
            log.info("job %s resumed from its checkpoint at step %d", self.job_id, p.step - 1)
        now = time.monotonic()
        job = self.store.get(self.job_id)
        stage_changed = job is not None and job.stage != changes.get("stage", job.stage)
        persist = now - self.last_persist > PERSIST_EVERY_S or stage_changed
        self.store.update(self.job_id, persist=persist, **changes)
        self.last_persist = now if persist else self.last_persist

    def end_stopped(self) -> None:
        job = self.store.get(self.job_id)
        step = job.step if job else 0
        if self.why_stopping() is StopReason.shutdown:
            self.store.update(self.job_id, status=JobState.interrupted, stage="interrupted", eta_s=None)
            log.info("job %s interrupted at step %d by the server stopping; it resumes on the next start",
                     self.job_id, step)
        else:
            self.store.finish(self.job_id, JobState.cancelled)
            log.info("job %s cancelled at step %d", self.job_id, step)
