"""The dispatcher behind the executor seam, without a worker process: a fake executor says
what the "worker" reports, and the job's stored status must follow. Fast (no torch, no
server); the real worker process is exercised by test_server_jobs.py."""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import pytest
from dreamsculpt.requests import TextTo3DRequest
from dreamsculpt.server.dispatcher import CANCEL_GRACE_S, Dispatcher
from dreamsculpt.server.executors import ExecutorState, WorkerState
from dreamsculpt.server.messages import (
    Cancelled,
    Event,
    Finished,
    ModelLoaded,
    ProgressUpdate,
    RunJob,
    Started,
    StopTimedOut,
    WorkerDied,
)
from dreamsculpt.server.schemas import JobState
from dreamsculpt.server.settings import ServerSettings
from dreamsculpt.server.store import JobStore


class FakeExecutor:
    """The Executor interface in memory: jobs handed over land in `submitted`; the test puts
    what the worker would report into `reports`. A job asked to stop reports
    `answer(job_id)` at once (Cancelled by default; with None, the test says how it ended)."""

    def __init__(self, answer: Callable[[str], Event] | None = Cancelled):
        self.submitted: queue.Queue[RunJob] = queue.Queue()
        self.reports: queue.Queue[Event] = queue.Queue()
        self.cancelled: list[tuple[str, float]] = []
        self.answer = answer

    def start(self) -> None:
        pass

    def submit(self, job: RunJob) -> None:
        self.submitted.put(job)

    def events(self, timeout: float) -> list[Event]:
        try:
            return [self.reports.get(timeout=timeout)]
        except queue.Empty:
            return []

    def cancel(self, job_id: str, grace_s: float) -> None:
        self.cancelled.append((job_id, grace_s))
        if self.answer is not None:
            self.reports.put(self.answer(job_id))

    def release(self) -> list[str]:
        return []

    def state(self) -> ExecutorState:
        return ExecutorState("fake:0", WorkerState.ready, ["fake model"])

    def shutdown(self) -> None:
        pass


def _request(prompt: str = "a red cube") -> TextTo3DRequest:
    return TextTo3DRequest(kind="text_to_3d", prompt=prompt, prior="builtin", preset="preview", steps=5)


@contextmanager
def _dispatcher(tmp_path: Path, executor: FakeExecutor | list[FakeExecutor]):
    settings = ServerSettings(data_dir=tmp_path, device="cpu", idle_release_s=0)
    dispatcher = Dispatcher(JobStore(tmp_path), settings, executor)
    dispatcher.start()
    try:
        yield dispatcher
    finally:
        dispatcher.stop(timeout=5)


def _wait(read, until, timeout: float = 5.0):
    """Poll read() until until(value) holds; returns the value (the last one on timeout)."""
    deadline = time.monotonic() + timeout
    while not until(value := read()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return value


def _handed_over(executor: FakeExecutor, dispatcher: Dispatcher, job_id: str) -> RunJob:
    run = executor.submitted.get(timeout=5)
    assert run.job_id == job_id
    job = _wait(lambda: dispatcher.status(job_id), lambda j: j.status is JobState.running)
    assert job.status is JobState.running
    return run


def test_a_job_goes_queued_running_done(tmp_path, caplog):
    executor = FakeExecutor()
    caplog.set_level(logging.INFO, logger="dreamsculpt.server")
    with _dispatcher(tmp_path, executor) as dispatcher:
        job = dispatcher.submit(_request())
        assert job.status is JobState.queued and job.total == 5
        run = _handed_over(executor, dispatcher, job.id)
        # The worker gets the request as JSON, and the job's folder; a first run does not resume.
        assert run.request["prompt"] == "a red cube" and run.request["kind"] == "text_to_3d"
        assert Path(run.folder) == dispatcher.store.folder(job.id) and run.resume is False

        executor.reports.put(Started(job.id, resumed=False))
        executor.reports.put(ModelLoaded("fake model", 0.5))
        executor.reports.put(ProgressUpdate(job.id, 3, 5, 0.25, 1.5, 1.0, "optimising"))
        mid = _wait(lambda: dispatcher.status(job.id), lambda j: j.step == 3)
        assert (mid.status, mid.stage, mid.loss, mid.eta_s) == (JobState.running, "optimising", 0.25, 1.0)
        assert dispatcher.health()["worker"] == "busy" and dispatcher.health()["running"] == job.id

        fields = {"vertices": 8, "faces": 12, "threshold": 1.0, "seconds": 2.5}
        executor.reports.put(Finished(job.id, fields, "8 vertices, 12 faces"))
        done = _wait(lambda: dispatcher.status(job.id), lambda j: j.status.finished)
    assert done.status is JobState.done and done.stage == "done" and done.error is None
    assert (done.result.vertices, done.result.faces, done.result.seconds) == (8, 12, 2.5)
    assert done.started is not None and done.finished is not None
    assert f"job {job.id} done in 2.5 s: 8 vertices, 12 faces" in caplog.text   # the worker's summary
    assert '"status": "done"' in (dispatcher.store.folder(job.id) / "status.json").read_text()


def test_a_dead_worker_fails_the_job_with_its_exit_code_and_the_queue_goes_on(tmp_path):
    executor = FakeExecutor()
    with _dispatcher(tmp_path, executor) as dispatcher:
        doomed = dispatcher.submit(_request())
        behind = dispatcher.submit(_request("a blue sphere"))
        _handed_over(executor, dispatcher, doomed.id)
        assert dispatcher.status(behind.id).queue_position == 0
        executor.reports.put(WorkerDied(doomed.id, exit_code=-9))
        failed = _wait(lambda: dispatcher.status(doomed.id), lambda j: j.status.finished)
        assert failed.status is JobState.failed
        assert "exit code -9" in failed.error and "out of memory" in failed.error
        assert _handed_over(executor, dispatcher, behind.id).request["prompt"] == "a blue sphere"


def test_cancel_asks_the_executor_and_a_stop_timeout_ends_cancelled(tmp_path):
    executor = FakeExecutor(answer=None)
    with _dispatcher(tmp_path, executor) as dispatcher:
        job = dispatcher.submit(_request())
        _handed_over(executor, dispatcher, job.id)
        assert dispatcher.cancel(job.id).stage == "cancelling"
        assert executor.cancelled == [(job.id, CANCEL_GRACE_S)]
        # Progress while it stops keeps the "cancelling" stage up.
        executor.reports.put(ProgressUpdate(job.id, 2, 5, 0.5, 1.0, 1.5, "optimising"))
        assert _wait(lambda: dispatcher.status(job.id), lambda j: j.step == 2).stage == "cancelling"
        executor.reports.put(StopTimedOut(job.id, CANCEL_GRACE_S))
        cancelled = _wait(lambda: dispatcher.status(job.id), lambda j: j.status.finished)
    assert cancelled.status is JobState.cancelled and cancelled.error is None


# A worker that dies once asked to stop has still stopped: that is no failure.
@pytest.mark.parametrize("answer", [Cancelled, lambda job_id: WorkerDied(job_id, exit_code=-15)],
                         ids=["stops", "dies while stopping"])
def test_a_shutdown_interrupts_the_running_job(tmp_path, answer):
    executor = FakeExecutor(answer)
    with _dispatcher(tmp_path, executor) as dispatcher:   # leaving it stops the dispatcher
        job = dispatcher.submit(_request())
        _handed_over(executor, dispatcher, job.id)
    stopped = dispatcher.status(job.id)
    assert executor.cancelled == [(job.id, CANCEL_GRACE_S)]
    assert stopped.status is JobState.interrupted and stopped.error is None
    assert '"status": "interrupted"' in (dispatcher.store.folder(job.id) / "status.json").read_text()


def test_two_lanes_run_two_jobs_at_once_in_queue_order_and_cancel_reaches_the_right_one(tmp_path):
    lanes = [FakeExecutor(), FakeExecutor()]
    with _dispatcher(tmp_path, lanes) as dispatcher:
        jobs = [dispatcher.submit(_request(f"cube {i}")) for i in range(3)]
        handed = {lanes[0].submitted.get(timeout=5).job_id, lanes[1].submitted.get(timeout=5).job_id}
        assert handed == {jobs[0].id, jobs[1].id}                 # the first two, one per lane
        third = dispatcher.status(jobs[2].id)
        assert third.status is JobState.queued and third.queue_position == 0
        health = dispatcher.health()
        assert [w["state"] for w in health["workers"]] == ["busy", "busy"] and health["worker"] == "busy"
        assert health["running"] == jobs[0].id and health["queue"] == 1
        started = [dispatcher.status(j.id).started for j in jobs[:2]]
        assert started[0] <= started[1]                           # stamped in queue order

        lane = lanes[[w["running"] for w in health["workers"]].index(jobs[1].id)]
        dispatcher.cancel(jobs[1].id)
        assert lane.cancelled == [(jobs[1].id, CANCEL_GRACE_S)]
        assert all(not e.cancelled for e in lanes if e is not lane)
        assert _wait(lambda: dispatcher.status(jobs[1].id), lambda j: j.status.finished).status is JobState.cancelled
        run = lane.submitted.get(timeout=5)                       # the freed lane takes the third
        assert run.job_id == jobs[2].id
        assert dispatcher.status(jobs[0].id).status is JobState.running
