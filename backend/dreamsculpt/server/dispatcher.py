"""The FIFO queue, and the decisions about each job's state.

One lane per executor (executors.py: a worker process per device on this machine, or a slot
on a Ray cluster); each lane's thread takes the job at the head of the one shared queue when
its executor is free, hands it over, and follows its events (job_run.py). Jobs therefore
start in the order they were queued, on whichever worker frees first. A lane releases its
executor's models when asked, when idle for long enough (to give VRAM back) or when the
server stops. HTTP handlers only queue, cancel, delete and read; they never touch an
executor's work themselves.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from importlib import metadata
from pathlib import Path

from .. import __version__
from ..errors import DreamsculptError
from ..tasks import JobRequest, task_of
from .executors import Executor, LocalExecutor, WorkerState
from .job_run import JobRun, StopReason
from .messages import RunJob
from .schemas import JobState, JobStatus, now
from .settings import ServerSettings
from .store import JobStore

log = logging.getLogger("dreamsculpt.server")
#: Multi-line details (tracebacks): the log file only, so stderr keeps one line per event.
detail = logging.getLogger("dreamsculpt.server.detail")

#: Seconds a cancelled job may take to stop at a step boundary before its worker is killed
#: (loading a model or meshing has no step boundary).
CANCEL_GRACE_S = 10.0


class Busy(Exception):
    """The request conflicts with a running job."""


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


class _Lane:
    """One executor, the job it runs and its thread. Fields are guarded by the dispatcher's lock."""

    def __init__(self, index: int, executor: Executor):
        self.index, self.executor = index, executor
        self.running: str | None = None
        self.stop_reason: StopReason | None = None   # while stopping the running job
        self.release_requested = False
        self.last_active = time.monotonic()
        self.thread: threading.Thread | None = None


class Dispatcher:
    def __init__(self, store: JobStore, settings: ServerSettings,
                 executors: Executor | list[Executor] | None = None):
        self.store, self.settings = store, settings
        if executors is None:
            executors = build_executors(settings, store.root)
        elif not isinstance(executors, (list, tuple)):
            executors = [executors]
        self.lanes = [_Lane(i, executor) for i, executor in enumerate(executors)]
        self._cond = threading.Condition()
        self._queue: deque[str] = deque()
        self._stopping = False
        for lane in self.lanes:
            lane.thread = threading.Thread(target=self._loop, args=(lane,), daemon=True,
                                           name=f"dreamsculpt-dispatcher-{lane.index}")

    # --- called from HTTP handlers ---------------------------------------------------------
    def start(self) -> None:
        """Queue what the last run left unfinished (interrupted jobs first, as they were
        first in line), then start the lanes."""
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
        if len(self.lanes) > 1:
            log.info("%d workers take jobs from one queue", len(self.lanes))
        for lane in self.lanes:
            lane.thread.start()

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
        log.info("job %s queued: %s %s prior=%s seed=%s preset=%s steps=%d owner=%s", job.id, request.kind,
                 request.subject(), request.prior, request.seed, getattr(request, "preset", "-"), total,
                 request.owner or "-")
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
            lane = self._lane_of(job_id)
            if job_id in self._queue:
                self._queue.remove(job_id)
                job = self.store.finish(job_id, JobState.cancelled)
                log.info("job %s cancelled before it ran", job_id)
            elif lane is not None and lane.stop_reason is None:
                self._stop_running(lane, StopReason.cancel)
                job = self.store.update(job_id, stage="cancelling")
        return self.status(job_id)

    def delete(self, job_id: str) -> bool:
        """Remove a job and its folder; a running job is cancelled first (this waits for it)."""
        with self._cond:
            if self.store.get(job_id) is None:
                return False
            if job_id in self._queue:
                self._queue.remove(job_id)
            lane = self._lane_of(job_id)
            if lane is not None:
                if lane.stop_reason is None:
                    self._stop_running(lane, StopReason.cancel)
                if not self._cond.wait_for(lambda: lane.running != job_id, CANCEL_GRACE_S + 20):
                    raise Busy(f"Job {job_id} did not stop in time; try deleting it again.")
            deleted = self.store.delete(job_id)
        if deleted:
            log.info("job %s deleted", job_id)
        return deleted

    def release_models(self) -> list[str]:
        """Stop the workers, giving their memory (VRAM) back. Refused while a job runs."""
        with self._cond:
            running = [lane.running for lane in self.lanes if lane.running]
            if running:
                raise Busy(f"Job {running[0]} is running; cancel it or wait before releasing models.")
            released = [name for lane in self.lanes for name in lane.executor.state().models]
            for lane in self.lanes:
                lane.release_requested = True
            self._cond.notify_all()
            self._cond.wait_for(lambda: not any(lane.release_requested for lane in self.lanes), 60)
        return released

    def health(self) -> dict:
        workers = []
        with self._cond:
            for lane in self.lanes:
                state = lane.executor.state()
                worker = state.worker.value
                if state.worker is WorkerState.ready:
                    worker = "busy" if lane.running else "idle"
                workers.append({"device": state.device, "state": worker, "running": lane.running,
                                "models": state.models, "pid": state.pid, "host": state.host})
            running = sorted((lane.running for lane in self.lanes if lane.running), key=self._seq)
            queue = len(self._queue)
        devices = list(dict.fromkeys(w["device"] for w in workers if w["device"]))
        return {"version": __version__, "device": ", ".join(devices) or None, "torch": _version("torch"),
                "diffusers": _version("diffusers"), "models": sorted({m for w in workers for m in w["models"]}),
                "worker": _overall([w["state"] for w in workers]), "queue": queue,
                "running": running[0] if running else None, "workers": workers}

    def stop(self, timeout: float = CANCEL_GRACE_S + 10) -> None:
        """Stop for a server shutdown: running jobs save a checkpoint and are marked
        interrupted (they resume on the next start); queued jobs stay queued on disk."""
        with self._cond:
            self._stopping = True
            for lane in self.lanes:
                if lane.running and lane.stop_reason is None:
                    self._stop_running(lane, StopReason.shutdown)
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for lane in self.lanes:
            if lane.thread.is_alive():
                lane.thread.join(max(deadline - time.monotonic(), 0.1))

    def _seq(self, job_id: str) -> int:
        job = self.store.get(job_id)
        return job.seq if job else 0

    def _lane_of(self, job_id: str) -> _Lane | None:
        """(Lock held.) The lane running `job_id`, if one is."""
        return next((lane for lane in self.lanes if lane.running == job_id), None)

    def _stop_running(self, lane: _Lane, reason: StopReason) -> None:
        """(Lock held.) Ask the lane's job to stop at its next step."""
        lane.stop_reason = reason
        lane.executor.cancel(lane.running, CANCEL_GRACE_S)

    def _why_stopping(self, lane: _Lane) -> StopReason | None:
        with self._cond:
            return lane.stop_reason

    # --- the lanes' threads --------------------------------------------------------------------
    def _loop(self, lane: _Lane) -> None:
        try:
            lane.executor.start()  # now: the first job then starts at once
        except DreamsculptError as exc:
            log.error("%s", exc)
        while True:
            with self._cond:
                self._wait_for_work(lane)
                if self._stopping:
                    break
                take = bool(self._queue) and not lane.release_requested
                run = self._take(lane) if take else None
            if take and run is None:   # deleted while it waited
                continue
            if run is None:  # release on request, or after the idle time
                lane.executor.release()
                with self._cond:
                    lane.release_requested = False
                    lane.last_active = time.monotonic()
                    self._cond.notify_all()
                continue
            try:
                self._run(lane, run)
            except Exception as exc:  # noqa: BLE001 - a bug here must not stop the queue
                log.error("job %s: internal error in the dispatcher: %r (traceback in the log file)", run.job_id, exc)
                detail.exception("job %s: dispatcher error", run.job_id)
                self.store.finish(run.job_id, JobState.failed, "Internal server error; see the server log.")
            with self._cond:
                lane.running, lane.stop_reason = None, None
                lane.last_active = time.monotonic()
                self._cond.notify_all()
        lane.executor.shutdown()

    def _wait_for_work(self, lane: _Lane) -> None:
        """(Lock held.) Wait for a job, a stop or a release request; or return when the lane's
        executor has held memory without a job for the idle time (the loop releases it)."""
        while not (self._queue or self._stopping or lane.release_requested):
            idle_for = time.monotonic() - lane.last_active
            limit = self.settings.idle_release_s
            holding = lane.executor.state().worker is not WorkerState.stopped
            if holding and limit > 0 and idle_for >= limit:
                log.info("idle for %.0f s: stopping %s to free memory", idle_for, self._name(lane))
                return
            self._cond.wait(max(limit - idle_for, 0.05) if holding and limit > 0 else None)

    def _take(self, lane: _Lane) -> RunJob | None:
        """(Lock held.) The job at the head of the queue, marked running on `lane`: the start
        time is taken here, under the lock, so that jobs start in queue order."""
        job_id = self._queue.popleft()
        job = self.store.get(job_id)
        if job is None:
            return None
        lane.running, lane.stop_reason = job_id, None
        resume = job.started is not None
        self.store.update(job_id, status=JobState.running, stage="loading", started=job.started or now(),
                          error=None)
        return RunJob(job_id, job.request.model_dump(mode="json"), str(self.store.folder(job_id)), resume)

    def _run(self, lane: _Lane, run: RunJob) -> None:
        try:
            lane.executor.submit(run)
        except DreamsculptError as exc:
            self.store.finish(run.job_id, JobState.failed, str(exc))
            return
        log.info("job %s %s%s", run.job_id, "resuming" if run.resume else "started",
                 f" on {self._name(lane)}" if len(self.lanes) > 1 else "")
        JobRun(self.store, lane.executor, run.job_id, lambda: self._why_stopping(lane)).follow()

    def _name(self, lane: _Lane) -> str:
        device = lane.executor.state().device
        return f"worker {lane.index}" + (f" ({device})" if device else "")


def build_executors(settings: ServerSettings, jobs_root: Path) -> list[Executor]:
    """One executor per lane: a worker process per `--devices` entry, or one per job the Ray
    cluster takes at once. An ExecutorError (Ray missing, unreachable, ...) says what to do."""
    if settings.executor == "ray":
        from .ray_executor import ray_executors

        return ray_executors(settings, jobs_root)
    # CPU workers share the cores: each gets its part (two torch pools of every core on one
    # machine wait on each other).
    cpu_workers = settings.devices.count("cpu")
    threads = max(1, (os.cpu_count() or 1) // cpu_workers) if cpu_workers > 1 else None
    return [LocalExecutor(device, threads if device == "cpu" else None) for device in settings.devices]


def _overall(states: list[str]) -> str:
    """One word for all workers, as GET /health's `worker` said for one: idle while any can
    take a job, busy when all that are up are busy, else starting or stopped."""
    for word in ("idle", "busy", "starting"):
        if word in states:
            return word
    return "stopped"
