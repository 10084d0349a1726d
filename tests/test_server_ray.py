"""`serve --executor ray` on a local Ray cluster the tests start (2 fake GPU slots): jobs run
as Ray tasks, a killed Ray worker is retried and resumes from its checkpoint, and a server
killed mid-queue comes back and finishes every job exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import trimesh
from dreamsculpt.server.channel import finished_count
from ray_harness import LocalRay
from server_harness import ServerProcess, tiny_job, wait_job

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for Ray's processes")]


@pytest.fixture(scope="module")
def cluster():
    ray = LocalRay(gpus=2, cpus=2).start()
    try:
        yield ray
    finally:
        ray.stop()


def _serve(root: Path, cluster: LocalRay) -> ServerProcess:
    return ServerProcess(root, "--executor", "ray", "--ray-address", cluster.address).start(timeout=120)


def _time(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _worker_of(api, job_id: str) -> int:
    workers = api.get("/health").json()["workers"]
    return next(w["pid"] for w in workers if w["running"] == job_id)


def test_six_jobs_over_two_ray_slots_all_finish_with_their_own_results(tmp_path, cluster):
    server = _serve(tmp_path, cluster)
    try:
        with server.client() as api:
            health = api.get("/health").json()
            assert len(health["workers"]) == 2      # one lane per GPU slot of the cluster
            jobs = [api.post("/jobs", json=tiny_job(seed=i)).json() for i in range(6)]
            done = [wait_job(api, j["id"], timeout=300) for j in jobs]
            assert [j["status"] for j in done] == ["done"] * 6, [j["error"] for j in done]
            starts = [_time(j["started"]) for j in done]
            assert starts == sorted(starts)           # FIFO start order
            pids = {w["pid"] for w in api.get("/health").json()["workers"]}
            for job in done:
                folder = server.data_dir / "jobs" / job["id"]
                run = json.loads((folder / "out" / "run.json").read_text())
                assert run["seed"] == job["request"]["seed"]      # each job's own result
                mesh = trimesh.load(folder / "out" / "mesh.glb", force="mesh")
                assert len(mesh.faces) == job["result"]["faces"] > 0
                assert finished_count(folder) == 1
        assert len(pids) == 2 and None not in pids    # two Ray worker processes ran them
        assert "started on worker 1" in server.stderr()
    finally:
        server.stop()


def test_a_ray_worker_killed_mid_job_is_retried_and_resumes_from_its_checkpoint(tmp_path, cluster):
    server = _serve(tmp_path, cluster)
    try:
        with server.client() as api:
            job = api.post("/jobs", json=tiny_job(steps=340)).json()   # a checkpoint at step 250
            wait_job(api, job["id"], until=lambda j: j["step"] >= 265, timeout=300)
            pid = _worker_of(api, job["id"])
            os.kill(pid, signal.SIGKILL)
            done = wait_job(api, job["id"], timeout=300)
        assert done["status"] == "done" and done["step"] == 340, done["error"]
        assert done["resumed_from"] == 250            # from the checkpoint, not from step 0
        folder = server.data_dir / "jobs" / job["id"]
        events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
        hellos = [e["event"]["pid"] for e in events if e["type"] == "Hello"]
        assert len(hellos) == 2 and hellos[0] == pid and hellos[1] != pid   # Ray ran it again elsewhere
        assert len({e["attempt"] for e in events}) == 1                    # as the same attempt
        assert finished_count(folder) == 1
    finally:
        server.stop()


def test_progress_and_previews_flow_back_and_cancel_reaches_the_ray_task(tmp_path, cluster):
    server = _serve(tmp_path, cluster)
    try:
        with server.client() as api:
            job = api.post("/jobs", json=tiny_job(steps=5000)).json()
            running = wait_job(api, job["id"], until=lambda j: j["preview_step"], timeout=300)
            assert running["status"] == "running" and running["stage"] == "optimising"   # progress flows back
            preview = api.get(f"/jobs/{job['id']}/preview.png")                           # and previews
            assert preview.status_code == 200 and preview.content.startswith(b"\x89PNG")
            api.post(f"/jobs/{job['id']}/cancel")
            start = time.monotonic()
            cancelled = wait_job(api, job["id"], timeout=60)
            took = time.monotonic() - start
        assert cancelled["status"] == "cancelled" and cancelled["step"] < 5000
        assert took < 10, took      # stopped at a step by the stop file, not killed after the grace period
        events = (server.data_dir / "jobs" / job["id"] / "events.jsonl").read_text()
        assert '"type": "Cancelled"' in events
    finally:
        server.stop()


def test_a_server_killed_mid_queue_comes_back_and_every_job_ends_done_once(tmp_path, cluster):
    server = _serve(tmp_path, cluster)
    try:
        with server.client() as api:
            steps = [5, 340, 340, 5, 5, 5]
            jobs = [api.post("/jobs", json=tiny_job(seed=i, steps=n)).json() for i, n in enumerate(steps)]
            long = [jobs[1]["id"], jobs[2]["id"]]
            for job_id in long:
                wait_job(api, job_id, until=lambda j: j["step"] >= 265, timeout=300)
            tasks = [_worker_of(api, job_id) for job_id in long]
        server.kill(signal.SIGKILL)
        deadline = time.monotonic() + 15
        while any(_alive(pid) for pid in tasks) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in tasks), "Ray kept running the dead server's tasks"

        server.start(timeout=120)
        with server.client() as api:
            done = [wait_job(api, j["id"], timeout=300) for j in jobs]
        assert [j["status"] for j in done] == ["done"] * 6, [j["error"] for j in done]
        assert [j["resumed_from"] for j in done[1:3]] == [250, 250]
        for job in done:
            assert finished_count(server.data_dir / "jobs" / job["id"]) == 1   # nothing ran twice to the end
    finally:
        server.stop()


def test_a_batch_runs_on_the_ray_cluster(tmp_path, cluster):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("\n".join(json.dumps(tiny_job(seed=i, name=f"cube-{i}")) for i in range(3)) + "\n")
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "dreamsculpt", "batch", str(jobs), "--out", str(out),
                          "--ray", cluster.address, "--quiet"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    for i in range(3):
        folder = out / f"cube-{i}"
        assert json.loads((folder / "status.json").read_text())["status"] == "done"
        assert (folder / "out" / "mesh.glb").is_file() and finished_count(folder) == 1
        assert '"type": "Hello"' in (folder / "events.jsonl").read_text()    # it ran as a Ray task
    assert run.stdout.count(" done ") == 3 and "3 job(s): 3 done." in run.stdout
