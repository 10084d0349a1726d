"""The Ray executor's parts that need no cluster: the job folder as a channel (events, stop,
attempts), and the refusals a studio meets first (Ray not installed, nothing at the address,
a data folder the tasks cannot see, settings that do not go together)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from dreamsculpt.errors import DreamsculptError
from dreamsculpt.server import ray_executor
from dreamsculpt.server.channel import EVENTS, ServerEnd, TaskEnd, finished_count
from dreamsculpt.server.executors import ExecutorError
from dreamsculpt.server.messages import Finished, ProgressUpdate, RunJob, Started
from dreamsculpt.server.ray_task import run_on_ray
from dreamsculpt.server.settings import ServerSettings
from ray_harness import free_port


def _progress(step: int) -> ProgressUpdate:
    return ProgressUpdate("job", step, 10, 0.5, 1.0, 2.0, "optimising")


def test_events_cross_the_folder_whole_lines_only_and_per_attempt(tmp_path):
    old = ServerEnd.begin(tmp_path)
    TaskEnd(tmp_path, old.attempt).send(_progress(1))
    server = ServerEnd.begin(tmp_path)                  # a new attempt reads nothing of the old one
    task = TaskEnd(tmp_path, server.attempt)
    task.send(Started("job", True))
    task.send(_progress(2))
    with open(tmp_path / EVENTS, "a") as f:
        f.write('{"type": "ProgressUpdate", "attempt": "')   # the task dies writing a line
    events = [event for _, event in server.read()]
    assert events == [Started("job", True), _progress(2)]
    assert server.read() == []
    retry = TaskEnd(tmp_path, server.attempt)           # Ray runs it again: its lines start afresh
    retry.send(Finished("job", {"seconds": 1.0}, "done"))
    assert [event for _, event in server.read()] == [Finished("job", {"seconds": 1.0}, "done")]
    assert finished_count(tmp_path) == 1


def test_a_stop_reaches_its_own_attempt_and_a_newer_attempt_stops_an_older_task(tmp_path, monkeypatch):
    monkeypatch.setattr("dreamsculpt.server.channel.CHECK_EVERY_S", 0.0)
    first = ServerEnd.begin(tmp_path)
    task = TaskEnd(tmp_path, first.attempt)
    assert not task.stop_asked()
    first.ask_stop()
    assert task.stop_asked()

    second = ServerEnd.begin(tmp_path)                  # a restarted server hands the job on
    newer = TaskEnd(tmp_path, second.attempt)
    assert not newer.stop_asked()                       # the old stop file was for the old attempt
    stale = TaskEnd(tmp_path, first.attempt)
    assert stale.stop_asked()                           # the job is no longer the old task's


def test_a_task_that_cannot_see_the_job_folder_fails_saying_where_to_put_it(tmp_path):
    job = RunJob("20261202-000000-abcdef", {}, str(tmp_path / "not-mounted"), True)
    outcome = run_on_ray(job, "attempt", "cpu")
    assert "cannot see the job's folder" in outcome.message and "NFS" in outcome.message


def test_start_up_refuses_a_data_folder_the_tasks_cannot_see(tmp_path, monkeypatch):
    cluster = ray_executor.RayCluster("127.0.0.1:6379", "GPU", "auto", tmp_path)
    monkeypatch.setattr(cluster, "_probe", lambda path, token: ("node-7", False))
    with pytest.raises(ExecutorError, match="A Ray task on node-7 cannot see the job folder .*NFS"):
        cluster.check_storage()
    assert list(tmp_path.iterdir()) == []               # the probe file is gone
    monkeypatch.setattr(cluster, "_probe", lambda path, token: (path.read_text() == token and "node-1", True))
    cluster.check_storage()


def test_nothing_at_the_ray_address_is_one_error_in_seconds(tmp_path):
    cluster = ray_executor.RayCluster(f"127.0.0.1:{free_port()}", "GPU", "auto", tmp_path)
    with pytest.raises(ExecutorError, match="Nothing answers at the Ray address .*ray start --head"):
        cluster.connect()


def test_ray_missing_says_which_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ExecutorError, match=r'pip install "dreamsculpt\[ray\]"'):
        ray_executor._ray()


@pytest.mark.parametrize("options,message", [
    ({"executor": "ray", "devices": "cuda:0,cuda:1"}, "--devices is for local workers"),
    ({"executor": "slurm"}, "--executor must be one of local, ray"),
    ({"ray_jobs": 0}, "--ray-jobs must be between 1 and 1024"),
    ({"ray_resource": "GPU; rm"}, "is not a Ray resource name"),
    ({"devices": "cuda:0,gpu"}, "each entry must be auto, cpu, cuda, cuda:N or mps"),
])
def test_settings_that_do_not_go_together_are_refused(tmp_path, options, message):
    with pytest.raises(DreamsculptError, match=message):
        ServerSettings(data_dir=tmp_path, **options)


def test_devices_give_one_worker_each_and_cpu_workers_share_the_cores(tmp_path, monkeypatch):
    from dreamsculpt.server.dispatcher import build_executors

    monkeypatch.setattr("os.cpu_count", lambda: 8)
    executors = build_executors(ServerSettings(data_dir=tmp_path, devices="cpu,cpu,cuda:1"), Path(tmp_path))
    assert [(e._device_setting, e._threads) for e in executors] == [("cpu", 4), ("cpu", 4), ("cuda:1", None)]
    alone = build_executors(ServerSettings(data_dir=tmp_path, device="cpu"), Path(tmp_path))
    assert [(e._device_setting, e._threads) for e in alone] == [("cpu", None)]
