"""Jobs through a real `dreamsculpt serve` process: results, cancel, delete, failures, the
queue order, and a server killed mid-job. Built-in prior at CI size (see tiny_job)."""

from __future__ import annotations

import io
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import pytest
import trimesh
from PIL import Image
from server_harness import ServerProcess, tiny_job, wait_job

pytestmark = pytest.mark.slow   # real server processes, jobs run to the end


def _time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def test_submit_poll_download(api, server):
    submitted = api.post("/jobs", json=tiny_job("a red cube", steps=60, mesh={"obj": True}))
    assert submitted.status_code == 201, submitted.text
    job = submitted.json()
    assert job["status"] == "queued" and job["total"] == 60 and job["request"]["prompt"] == "a red cube"
    seen_running = wait_job(api, job["id"], until=lambda j: j["status"] != "queued")
    assert seen_running["status"] in ("running", "done")
    job = wait_job(api, job["id"])
    assert job["status"] == "done", job["error"]
    assert job["step"] == job["total"] == 60 and job["stage"] == "done" and job["error"] is None
    assert _time(job["created"]) <= _time(job["started"]) <= _time(job["finished"])
    assert job["preview_step"] == 60 and job["result"]["faces"] > 100
    files = {"result.ply", "result.glb", "result.obj", "result.mtl", "texture.png", "views.png", "turntable.gif",
             "run.json"}
    assert files <= set(job["result"]["files"])

    ply = api.get(f"/jobs/{job['id']}/result.ply")
    assert ply.status_code == 200
    mesh = trimesh.load(io.BytesIO(ply.content), file_type="ply")
    assert len(mesh.faces) == job["result"]["faces"]
    colours = mesh.vertex_attributes["color"][:, :3].astype(float)
    assert (colours[:, 0] > colours[:, 1] + 30).mean() > 0.5    # a red cube is red
    glb = api.get(f"/jobs/{job['id']}/result.glb")
    assert glb.headers["content-type"] == "model/gltf-binary" and glb.content[:4] == b"glTF"
    obj = api.get(f"/jobs/{job['id']}/result.obj")
    assert b"v " in obj.content and f"mtllib {job['id']}-result.mtl".encode() in obj.content
    # Saved under the names the server gives them, the OBJ, its material and texture find each other.
    assert f"map_Kd {job['id']}-texture.png" in api.get(f"/jobs/{job['id']}/result.mtl").text
    texture = api.get(f"/jobs/{job['id']}/texture.png")
    assert texture.headers["content-disposition"].endswith(f'"{job["id"]}-texture.png"')
    assert Image.open(io.BytesIO(texture.content)).size == (512, 512)
    preview = Image.open(io.BytesIO(api.get(f"/jobs/{job['id']}/preview.png").content))
    assert preview.size[0] >= 128
    assert api.get(f"/jobs/{job['id']}/views.png").headers["content-type"] == "image/png"
    assert api.get(f"/jobs/{job['id']}/run.json").json()["steps"] == 60
    assert job["id"] in [j["id"] for j in api.get("/jobs").json()["jobs"]]

    health = api.get("/health").json()
    assert "builtin shapes 32 px" in health["models"]     # kept for the next job


def test_missing_files_are_404_with_the_reason(api):
    job = wait_job(api, api.post("/jobs", json=tiny_job()).json()["id"])
    response = api.get(f"/jobs/{job['id']}/result.obj")   # obj was not asked for
    assert response.status_code == 404 and "no result.obj" in response.json()["detail"]


def test_cancel_a_running_job(api):
    job = api.post("/jobs", json=tiny_job(steps=5000)).json()
    behind = api.post("/jobs", json=tiny_job()).json()
    wait_job(api, job["id"], until=lambda j: j["step"] >= 5)
    asked = api.post(f"/jobs/{job['id']}/cancel")
    assert asked.status_code == 200
    cancelled = wait_job(api, job["id"], timeout=20)
    assert cancelled["status"] == "cancelled" and cancelled["error"] is None
    # It stopped before its next step (the step count seen at the request may lag by one report).
    assert cancelled["step"] <= asked.json()["step"] + 2
    assert wait_job(api, behind["id"])["status"] == "done"     # the queue goes on
    assert api.post(f"/jobs/{job['id']}/cancel").json()["status"] == "cancelled"  # idempotent


def test_cancel_and_delete_queued_jobs(api, server):
    running = api.post("/jobs", json=tiny_job(steps=5000)).json()
    queued = api.post("/jobs", json=tiny_job()).json()
    doomed = api.post("/jobs", json=tiny_job()).json()
    assert api.post(f"/jobs/{queued['id']}/cancel").json()["status"] == "cancelled"
    assert api.delete(f"/jobs/{doomed['id']}").status_code == 204
    assert api.get(f"/jobs/{doomed['id']}").status_code == 404
    assert not (server.data_dir / "jobs" / doomed["id"]).exists()
    wait_job(api, running["id"], until=lambda j: j["step"] >= 3)
    assert api.delete(f"/jobs/{running['id']}").status_code == 204     # cancelled first, then deleted
    assert not (server.data_dir / "jobs" / running["id"]).exists()
    assert api.get(f"/jobs/{queued['id']}").json()["status"] == "cancelled"
    assert api.delete(f"/jobs/{running['id']}").status_code == 404


def test_a_failed_job_says_why_and_the_queue_goes_on(api):
    bad = api.post("/jobs", json=tiny_job("a dragon")).json()
    good = api.post("/jobs", json=tiny_job()).json()
    failed = wait_job(api, bad["id"])
    assert failed["status"] == "failed"
    assert "No built-in shape matches 'a dragon'" in failed["error"] and "Try" in failed["error"]
    assert wait_job(api, good["id"])["status"] == "done"


def test_job_events_are_logged_one_line_each(api, server):
    job = wait_job(api, api.post("/jobs", json=tiny_job()).json()["id"])
    for where in (server.stderr(), (server.data_dir / "server.log").read_text()):
        lines = [line for line in where.splitlines() if job["id"] in line]
        assert [kind for kind in ("queued", "started", "done") if any(f" {kind}" in line for line in lines)] == \
            ["queued", "started", "done"]


def test_models_are_loaded_once_and_kept(api, server):
    for seed in (1, 2):
        assert wait_job(api, api.post("/jobs", json=tiny_job(seed=seed)).json()["id"])["status"] == "done"
    loads = [line for line in server.stderr().splitlines() if "loaded builtin shapes 32 px" in line]
    assert len(loads) == 1, loads
    assert api.get("/health").json()["models"] == ["builtin shapes 32 px"]


def test_idle_worker_is_stopped_and_comes_back(tmp_path):
    server = ServerProcess(tmp_path, "--idle-release", "1").start()
    try:
        with server.client() as api:
            assert wait_job(api, api.post("/jobs", json=tiny_job()).json()["id"])["status"] == "done"
            health = server.wait_health(lambda h: h["worker"] == "stopped", timeout=30)
            assert health["worker"] == "stopped" and health["models"] == []
            assert wait_job(api, api.post("/jobs", json=tiny_job()).json()["id"])["status"] == "done"
        assert "idle for" in server.stderr() and "released builtin shapes 32 px" in server.stderr()
    finally:
        server.stop()


def test_fifty_jobs_at_once_all_run_in_order(api):
    with ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(lambda i: api.post("/jobs", json=tiny_job(steps=1, seed=i)), range(50)))
    assert [r.status_code for r in responses] == [201] * 50
    submitted = sorted((r.json() for r in responses), key=lambda j: j["seq"])
    assert len({j["id"] for j in submitted}) == 50
    last = wait_job(api, submitted[-1]["id"], timeout=600)
    jobs = {j["id"]: j for j in api.get("/jobs").json()["jobs"]}
    ran = [jobs[j["id"]] for j in submitted]
    assert [j["status"] for j in ran] == ["done"] * 50, last
    for before, after in zip(ran, ran[1:]):   # in submission order, one at a time
        assert _time(before["finished"]) <= _time(after["started"])


# --- a server that dies ---------------------------------------------------------------------------

def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find the worker")
def test_kill_9_mid_job_loses_nothing(tmp_path):
    server = ServerProcess(tmp_path).start()
    try:
        with server.client() as api:
            long = api.post("/jobs", json=tiny_job(steps=340)).json()   # checkpoints every 250 steps
            behind = [api.post("/jobs", json=tiny_job(seed=i)).json() for i in range(2)]
            wait_job(api, long["id"], until=lambda j: j["step"] >= 265, timeout=300)
        workers = _children(server.process.pid)
        assert workers
        server.kill(signal.SIGKILL)
        deadline = time.monotonic() + 15
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in workers), "the worker outlived the server"

        server.start()
        with server.client() as api:
            after = api.get(f"/jobs/{long['id']}").json()
            assert after["status"] in ("interrupted", "running")
            done = wait_job(api, long["id"], timeout=300)
            assert done["status"] == "done" and done["step"] == 340
            assert done["resumed_from"] == 250          # from its checkpoint, not from scratch
            finished = [wait_job(api, j["id"]) for j in behind]
            assert [j["status"] for j in finished] == ["done", "done"]
            assert _time(done["finished"]) <= _time(finished[0]["started"])
            assert len(api.get("/jobs").json()["jobs"]) == 3
        assert "resumed from its checkpoint at step 250" in server.stderr()
    finally:
        server.stop()


def test_sigterm_interrupts_and_the_next_start_resumes(tmp_path):
    server = ServerProcess(tmp_path).start()
    try:
        with server.client() as api:
            job = api.post("/jobs", json=tiny_job(steps=300)).json()
            wait_job(api, job["id"], until=lambda j: j["step"] >= 20, timeout=300)
        server.stop()      # SIGTERM: the job saves a checkpoint at the step it reached
        assert server.process.returncode == 0
        assert '"status": "interrupted"' in (server.data_dir / "jobs" / job["id"] / "status.json").read_text()
        server.start()
        with server.client() as api:
            done = wait_job(api, job["id"], timeout=300)
        assert done["status"] == "done" and done["resumed_from"] >= 20
    finally:
        server.stop()
