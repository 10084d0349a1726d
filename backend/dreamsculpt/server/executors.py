"""Executors: what runs the dispatcher's jobs, one at a time each, behind one small interface.

The dispatcher owns the queue and every decision about a job's state; an executor only runs
what it is handed and reports what happened, as events (messages.py). Worker deaths and
stop timeouts are events too, so the dispatcher never looks at a process: the same
dispatcher drives a worker process per device here (LocalExecutor) or slots on a Ray
cluster (ray_executor.py), one lane per executor.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from ..errors import DreamsculptError
from .messages import (
    OUTCOMES,
    Event,
    Exit,
    Hello,
    ModelLoaded,
    ModelsHeld,
    RunJob,
    StopTimedOut,
    WorkerDied,
)

log = logging.getLogger("dreamsculpt.server")

#: Seconds a new worker may take to import torch and report in.
WORKER_START_S = 180.0


class ExecutorError(DreamsculptError):
    """Nothing can run jobs (the worker did not start); the message says why."""


class WorkerState(str, Enum):
    stopped = "stopped"     # nothing started: no memory held
    starting = "starting"   # started, not ready yet (importing torch)
    ready = "ready"         # ready for a job, or running one


@dataclass(frozen=True)
class ExecutorState:
    device: str | None      # where jobs run; None until a worker has reported in once
    worker: WorkerState
    models: list[str] = field(default_factory=list)   # loaded models, kept for the next jobs
    pid: int | None = None  # the process that runs (or last ran) jobs
    host: str | None = None  # the machine it is on, when not this one (a Ray node)


class Executor(Protocol):
    """Something that runs one job at a time. submit, events, release, start and shutdown are
    called from the dispatcher's thread only; cancel and state from any thread."""

    def start(self) -> None:
        """Get ready now, so that the first job starts at once. ExecutorError if it cannot."""

    def submit(self, job: RunJob) -> None:
        """Start running `job` (none other runs). ExecutorError if nothing can run it."""

    def events(self, timeout: float) -> list[Event]:
        """What the running job reported since the last call, waiting up to `timeout`
        seconds for something; ends with one of OUTCOMES when the job is over."""

    def cancel(self, job_id: str, grace_s: float) -> None:
        """Ask the job to stop at its next step; after `grace_s`, stop it by force (reported
        as StopTimedOut). A job asked to stop before it is submitted stops once it is."""

    def release(self) -> list[str]:
        """Give memory back: stop what holds models; returns the models released."""

    def state(self) -> ExecutorState:
        """Device, worker state and loaded models, for GET /health."""

    def shutdown(self) -> None:
        """Stop for good: release everything, start nothing again."""


class _Process:
    """A started worker process and our end of its pipe."""

    def __init__(self, ctx, cancel, device: str, threads: int | None):
        from .worker import worker_main

        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=worker_main, args=(child, cancel, os.getpid(), device, threads),
                                   name="dreamsculpt-worker", daemon=True)
        self.process.start()
        child.close()

    def stop(self, timeout: float = 10.0) -> None:
        try:
            self.conn.send(Exit())
        except OSError:
            pass
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self.conn.close()


class LocalExecutor:
    """Jobs run in one worker process on this machine (server/worker.py). It is started on
    demand, keeps its models between jobs, and is stopped to give (V)RAM back. `threads`:
    torch's CPU threads in the worker (None: torch's default, every core)."""

    def __init__(self, device: str, threads: int | None = None):
        self._device_setting, self._threads = device, threads
        self._ctx = multiprocessing.get_context("spawn")  # never fork a process that has threads
        self._cancel = self._ctx.Event()   # checked by the worker before every step
        self._lock = threading.Lock()      # guards everything below
        self._process: _Process | None = None
        self._ready = False
        self._device: str | None = None
        self._models: list[str] = []
        self._job: str | None = None       # handed to the worker, until its outcome
        self._stop_job: str | None = None  # asked to stop; may not be submitted yet
        self._grace_s = 0.0
        self._kill_at: float | None = None

    def start(self) -> None:
        self._ensure_process()

    def submit(self, job: RunJob) -> None:
        process = self._ensure_process()
        with self._lock:
            self._job = job.job_id
            if self._stop_job == job.job_id:   # cancelled between leaving the queue and now
                self._cancel.set()
                self._kill_at = time.monotonic() + self._grace_s
            else:
                self._cancel.clear()
                self._stop_job, self._kill_at = None, None
        try:
            process.conn.send(job)
        except OSError:   # it died just now: events() reports it, with its exit code
            pass

    def cancel(self, job_id: str, grace_s: float) -> None:
        with self._lock:
            self._stop_job, self._grace_s = job_id, grace_s
            if job_id == self._job:
                self._cancel.set()
                self._kill_at = time.monotonic() + grace_s

    def events(self, timeout: float) -> list[Event]:
        process = self._process
        if process is None:   # stopped under the job: it cannot end any other way
            return self._lost(None)
        received = []
        try:
            if process.conn.poll(timeout):
                received.append(process.conn.recv())
                # Take what else is there (progress comes in bursts), but not forever: a
                # chatty worker must not keep the stop deadline from being checked.
                while len(received) < 64 and process.conn.poll(0):
                    received.append(process.conn.recv())
        except (EOFError, OSError):           # the pipe closed: the process is on its way out
            process.process.join(1)
        for event in received:
            self._note(event)
        if not received and not process.process.is_alive():
            process.process.join(1)
            return self._lost(process.process.exitcode)
        # Checked even while progress arrives: a job may report steps and never check cancel.
        return received + self._check_stop_deadline()

    def release(self) -> list[str]:
        return self._stop_process()

    def shutdown(self) -> None:
        self._stop_process()

    def state(self) -> ExecutorState:
        with self._lock:
            if self._process is None:
                worker = WorkerState.stopped
            else:
                worker = WorkerState.ready if self._ready else WorkerState.starting
            pid = self._process.process.pid if self._process is not None else None
            return ExecutorState(self._device, worker, list(self._models), pid)

    # --- the worker process ------------------------------------------------------------------
    def _note(self, event: Event) -> None:
        """Keep what the worker says about itself (its models, the end of its job)."""
        with self._lock:
            if isinstance(event, ModelLoaded):
                self._models.append(event.name)
            elif isinstance(event, ModelsHeld):
                self._models = list(event.names)
            elif isinstance(event, OUTCOMES) and event.job_id == self._job:
                self._job, self._kill_at = None, None

    def _lost(self, exit_code: int | None) -> list[Event]:
        """The worker died: forget it (and its models); the job it ran is over."""
        with self._lock:
            job = self._job
        self._stop_process()
        return [WorkerDied(job, exit_code)]

    def _check_stop_deadline(self) -> list[Event]:
        with self._lock:
            job, kill_at, grace_s = self._job, self._kill_at, self._grace_s
        if job is None or kill_at is None or time.monotonic() <= kill_at:
            return []
        log.warning("job %s did not stop within %.0f s; stopping its worker", job, grace_s)
        self._stop_process()
        return [StopTimedOut(job, grace_s)]

    def _ensure_process(self) -> _Process:
        process = self._process
        if process is not None and process.process.is_alive():
            return process
        if process is not None:   # it died while idle
            self._stop_process()
        process = _Process(self._ctx, self._cancel, self._device_setting, self._threads)
        with self._lock:
            self._process, self._ready, self._models = process, False, []
        deadline = time.monotonic() + WORKER_START_S
        try:
            while time.monotonic() < deadline and process.process.is_alive():
                if process.conn.poll(0.2):
                    hello = process.conn.recv()
                    if isinstance(hello, Hello):
                        with self._lock:
                            self._ready, self._device = True, hello.device
                        log.info("worker started (pid %d) on %s", process.process.pid, hello.device)
                        return process
        except (EOFError, OSError):   # it died before saying hello
            pass
        self._stop_process()
        raise ExecutorError("The worker process did not start (exit code "
                            f"{process.process.exitcode}); see the server log.")

    def _stop_process(self) -> list[str]:
        """Stop the worker (if any) and forget its models; returns them. Waits for the process."""
        with self._lock:
            process, self._process, self._ready = self._process, None, False
            released, self._models = self._models, []
            self._job, self._kill_at = None, None
        if process is not None:
            process.stop()
            log.info("worker stopped%s", f"; released {', '.join(released)}" if released else "")
        return released

