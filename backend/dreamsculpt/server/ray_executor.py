"""`serve --executor ray`: jobs as tasks on a Ray cluster, one lane per job it takes at once.

Ray schedules each job where one unit of `--ray-resource` (a GPU by default) is free, on any
node, and retries a task whose worker or node died; we keep no scheduler of our own. Ray
keeps no durable state, so the job store stays the truth: it must be on storage every node
mounts at the same path (NFS or similar), checked when the server starts and by every task.
Events, stop requests and attempts travel through the job's folder (channel.py).

What happens when things die:
- a Ray worker or node dies mid-job: Ray runs the task again (up to MAX_RETRIES) and it goes
  on from the job's last checkpoint;
- the server dies: Ray ends the tasks it owned; the next start submits unfinished jobs again,
  each as a new attempt (an old task still alive would see it and stop).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

from ..errors import DreamsculptError
from .channel import ServerEnd
from .executors import ExecutorError, ExecutorState, WorkerState
from .messages import (
    OUTCOMES,
    Event,
    Failed,
    Hello,
    ModelLoaded,
    ModelsHeld,
    RunJob,
    StopTimedOut,
    WorkerDied,
)

log = logging.getLogger("dreamsculpt.server")
#: Times Ray runs a job's task again after its worker process or node died.
MAX_RETRIES = 3
#: Seconds to wait for the start-up check that tasks see the data folder.
PROBE_S = 60.0
#: Seconds to wait for the cluster's address to answer at all.
CONNECT_S = 5.0
#: Object store of a Ray started here (the default reserves gigabytes; jobs pass a few KB).
LOCAL_OBJECT_STORE = 200 * 2**20


def _ray():
    try:
        import ray
    except ImportError:
        raise ExecutorError('--executor ray needs Ray: pip install "dreamsculpt[ray]" (on the server and on '
                            "every node of the cluster).") from None
    return ray


def _check_reachable(address: str) -> None:
    """Ray waits minutes for a cluster that is not there; a TCP connect says so in seconds."""
    where = address.removeprefix("ray://")
    if where in ("auto", "local") or ":" not in where:
        return
    host, _, port = where.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_S).close()
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ExecutorError(f"Nothing answers at the Ray address {address} ({reason}). Start the cluster with "
                            "`ray start --head` on its head node and pass the address it prints "
                            "(host:6379) as --ray-address.") from None


class RayCluster:
    """The server's one connection to Ray, shared by its lanes."""

    def __init__(self, address: str | None, resource: str, device: str, jobs_root: Path):
        self.address, self.resource, self.device, self.jobs_root = address, resource, device, Path(jobs_root)
        self.lanes = 0          # lanes still using the connection; the last one to stop ends it
        self._lock = threading.Lock()
        self._remote = None

    def connect(self) -> None:
        ray = _ray()
        with self._lock:
            if ray.is_initialized():
                return
            address = self.address or os.environ.get("RAY_ADDRESS")
            if address:
                _check_reachable(address)
            local = {} if address else {"object_store_memory": LOCAL_OBJECT_STORE, "include_dashboard": False}
            try:
                ray.init(address=address, namespace="dreamsculpt", log_to_driver=False,
                         logging_level=logging.ERROR, **local)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise ExecutorError(f"Cannot connect to the Ray cluster at {address}: {exc}. Start it with "
                                    "`ray start --head` and pass the address it prints as --ray-address.") from None
            log.info("Ray %s: %s", "cluster " + address if address else "started on this machine",
                     ", ".join(f"{k} {v:g}" for k, v in sorted(ray.cluster_resources().items())
                               if k in ("CPU", "GPU", self.resource)))

    def disconnect(self) -> None:
        """Leave the cluster (Ray then ends the tasks this server started)."""
        with self._lock:
            if "ray" in sys.modules and sys.modules["ray"].is_initialized():
                sys.modules["ray"].shutdown()

    def lane_stopped(self) -> None:
        with self._lock:
            self.lanes -= 1
            last = self.lanes <= 0
        if last:
            self.disconnect()

    def slots(self) -> int:
        """Jobs the cluster can run at once: its amount of the resource one job takes."""
        return int(_ray().cluster_resources().get(self.resource, 0))

    def check_storage(self) -> None:
        """Refuse to start when a task cannot read what the server writes in its job folder."""
        token = secrets.token_hex(16)
        path = self.jobs_root / f".ray-probe-{token}"
        path.write_text(token)
        try:
            node, seen = self._probe(path, token)
        finally:
            path.unlink(missing_ok=True)
        if node is None:
            log.warning("could not check that Ray tasks see %s: no %s came free within %.0f s; each job "
                        "checks it again", self.jobs_root, self.resource, PROBE_S)
        elif not seen:
            raise ExecutorError(f"A Ray task on {node} cannot see the job folder {self.jobs_root}. Put --data-dir "
                                "on storage every node mounts at the same path (NFS or similar), and pass that path.")

    def _probe(self, path: Path, token: str) -> tuple[str | None, bool]:
        """(node, whether a task there read `token` at `path`); node None when none ran in time."""
        ray = _ray()
        from .ray_task import probe

        ref = ray.remote(**self.requirements())(probe).options(name="dreamsculpt storage check").remote(
            str(path), token)
        try:
            return ray.get(ref, timeout=PROBE_S)
        except ray.exceptions.GetTimeoutError:
            ray.cancel(ref, force=True)
            return None, False

    def requirements(self) -> dict:
        """What one job takes: one unit of the resource (num_gpus / num_cpus for GPU and CPU)."""
        if self.resource == "GPU":
            return {"num_gpus": 1}
        if self.resource == "CPU":
            return {"num_cpus": 1}
        return {"resources": {self.resource: 1}}

    def submit(self, job: RunJob, attempt: str):
        ray = _ray()
        if self._remote is None:
            from .ray_task import run_on_ray

            # max_calls=0: the worker process lives on after a job, with its models (Ray's default
            # for GPU tasks is a new process per task, which would load the models every time).
            self._remote = ray.remote(max_retries=MAX_RETRIES, retry_exceptions=False, max_calls=0,
                                      **self.requirements())(run_on_ray)
        return self._remote.options(name=f"dreamsculpt {job.job_id}").remote(job, attempt, self.device)


def ray_executors(settings, jobs_root: Path) -> list["RayExecutor"]:
    cluster = RayCluster(settings.ray_address, settings.ray_resource, settings.device, jobs_root)
    cluster.connect()
    try:
        slots = settings.ray_jobs or cluster.slots()
        if slots < 1:
            raise ExecutorError(f"The Ray cluster has no {settings.ray_resource}: pass --ray-resource with one "
                                "it has (e.g. CPU), or --ray-jobs N.")
        cluster.check_storage()
    except DreamsculptError:
        cluster.disconnect()
        raise
    log.info("%d Ray slot(s), one %s each", slots, settings.ray_resource)
    cluster.lanes = slots
    return [RayExecutor(cluster) for _ in range(slots)]


class RayExecutor:
    """One lane's jobs, one at a time, each as a Ray task."""

    def __init__(self, cluster: RayCluster):
        self._cluster = cluster
        self._lock = threading.Lock()      # guards everything below
        self._connected = False
        self._ref = None
        self._channel: ServerEnd | None = None
        self._job: str | None = None
        self._stop_job: str | None = None  # asked to stop; may not be submitted yet
        self._grace_s = 0.0
        self._kill_at: float | None = None
        self._hello: Hello | None = None
        self._models: list[str] = []

    def start(self) -> None:
        if not self._connected:
            self._cluster.connect()   # a no-op unless the connection was lost
            self._connected = True

    def submit(self, job: RunJob) -> None:
        self.start()
        channel = ServerEnd.begin(Path(job.folder))
        with self._lock:
            self._job, self._channel, self._kill_at = job.job_id, channel, None
            if self._stop_job == job.job_id:   # cancelled between leaving the queue and now
                channel.ask_stop()
                self._kill_at = time.monotonic() + self._grace_s
            else:
                self._stop_job = None
        # Always resume: a task Ray runs again after its worker died goes on from the checkpoint.
        self._ref = self._cluster.submit(replace(job, resume=True), channel.attempt)

    def cancel(self, job_id: str, grace_s: float) -> None:
        with self._lock:
            self._stop_job, self._grace_s = job_id, grace_s
            if job_id == self._job and self._channel is not None:
                self._channel.ask_stop()
                self._kill_at = time.monotonic() + grace_s

    def events(self, timeout: float) -> list[Event]:
        ref, channel, job = self._ref, self._channel, self._job
        if ref is None or channel is None:
            time.sleep(timeout)
            return []
        received = self._note(channel.read())
        if received:
            return received + self._check_stop_deadline()
        done, _ = _ray().wait([ref], timeout=timeout)
        if not done:
            return self._check_stop_deadline()
        received = self._note(channel.read())   # what it wrote before it returned
        outcome = self._outcome(ref, job)
        with self._lock:
            self._ref, self._job, self._kill_at = None, None, None
        return received + [outcome]

    def release(self) -> list[str]:
        """Nothing to give back here: models live in Ray's worker processes, which Ray ends
        when they are idle and other work needs the room."""
        return []

    def state(self) -> ExecutorState:
        with self._lock:
            hello = self._hello
            worker = WorkerState.ready if self._connected else WorkerState.stopped
            device = hello.device if hello else f"Ray ({self._cluster.resource})"
            return ExecutorState(device, worker, list(self._models), hello.pid if hello else None,
                                 hello.host if hello else None)

    def shutdown(self) -> None:
        self._connected = False
        self._cluster.lane_stopped()

    # ---------------------------------------------------------------------------------------------
    def _note(self, lines: list[tuple[float, object]]) -> list[Event]:
        """Keep what the task says about itself; the outcome comes from the task's return value."""
        events = []
        with self._lock:
            for _, event in lines:
                if isinstance(event, Hello):
                    self._hello = event
                elif isinstance(event, ModelLoaded):
                    self._models.append(event.name)
                elif isinstance(event, ModelsHeld):
                    self._models = list(event.names)
                if not isinstance(event, (Hello, *OUTCOMES)):
                    events.append(event)
        return events

    def _outcome(self, ref, job: str) -> Event:
        ray = _ray()
        try:
            outcome = ray.get(ref, timeout=30)
        except ray.exceptions.TaskCancelledError:
            return WorkerDied(job, None)
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                ray.exceptions.ObjectLostError) as exc:
            with self._lock:
                stopping = self._stop_job == job
            if stopping:
                return WorkerDied(job, None)
            log.error("job %s: Ray's worker died %d times: %s", job, MAX_RETRIES + 1, str(exc).splitlines()[0])
            return Failed(job, f"The Ray worker running the job died {MAX_RETRIES + 1} times (out of memory, "
                               "or its node went away). Run the job again; if it happens again, see the Ray logs "
                               "of the node (`ray logs`).")
        except ray.exceptions.RayError as exc:
            return Failed(job, f"Ray could not run the job: {str(exc).splitlines()[0]}. See the server log.",
                          str(exc))
        return outcome

    def _check_stop_deadline(self) -> list[Event]:
        with self._lock:
            job, kill_at, grace_s, ref = self._job, self._kill_at, self._grace_s, self._ref
        if job is None or kill_at is None or time.monotonic() <= kill_at:
            return []
        log.warning("job %s did not stop within %.0f s; cancelling its Ray task", job, grace_s)
        _ray().cancel(ref, force=True)
        with self._lock:
            self._ref, self._job, self._kill_at = None, None, None
        return [StopTimedOut(job, grace_s)]
