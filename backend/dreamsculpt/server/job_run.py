"""Following one running job: the events its executor reports become its stored status.

One `JobRun` per job a dispatcher lane runs; it decides how the job ends (done, failed,
cancelled, or interrupted by a server stop, to resume on the next start).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from enum import Enum

from .executors import Executor
from .messages import (
    Cancelled,
    Event,
    Failed,
    Finished,
    ModelLoaded,
    PreviewReady,
    ProgressUpdate,
    Started,
    StopTimedOut,
    WorkerDied,
)
from .schemas import JobResult, JobState
from .store import JobStore

log = logging.getLogger("dreamsculpt.server")
#: Multi-line details (tracebacks): the log file only, so stderr keeps one line per event.
detail = logging.getLogger("dreamsculpt.server.detail")
PERSIST_EVERY_S = 1.0


class StopReason(str, Enum):
    """Why the running job is being stopped: it ends cancelled, or interrupted (to resume)."""

    cancel = "cancel"
    shutdown = "shutdown"


class JobRun:
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
