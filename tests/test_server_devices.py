"""`serve --devices cpu,cpu`: one worker process per device behind one FIFO queue. Two CPU
workers run CI-sized jobs side by side, in queue order, and a server killed with two jobs
running loses neither."""

from __future__ import annotations

import os
import signal
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from server_harness import ServerProcess, tiny_job, wait_job

pytestmark = pytest.mark.slow


def _time(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def _run_six(root: Path, devices: str, env: dict | None = None) -> tuple[float, list[dict], dict]:
    """Wall seconds from the first start to the last finish of 6 CI-sized jobs, the jobs, and
    /health once they are done. The workers are up (torch imported) before the clock starts."""
    server = ServerProcess(root, "--devices", devices, env=env).start()
    try:
        count = len(devices.split(","))
        server.wait_health(lambda h: [w["state"] for w in h["workers"]] == ["idle"] * count, timeout=120)
        with server.client() as api:
            jobs = [api.post("/jobs", json=tiny_job(seed=i)).json() for i in range(6)]
            done = [wait_job(api, j["id"], timeout=300) for j in jobs]
            health = api.get("/health").json()
        assert [j["status"] for j in done] == ["done"] * 6, [j["error"] for j in done]
        return max(_time(j["finished"]) for j in done) - min(_time(j["started"]) for j in done), done, health
    finally:
        server.stop()


def test_two_cpu_workers_run_six_jobs_in_queue_order_in_about_half_the_time(tmp_path):
    """Two CPU workers split the cores (one thread each here), so the one worker they are
    compared with gets one core's share as well: what is measured is that the lanes run side
    by side, as two GPUs would. (One worker with every core: bench/bench_farm.py.)"""
    one, _, _ = _run_six(tmp_path / "one", "cpu", env={"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // 2))})
    two, done, health = _run_six(tmp_path / "two", "cpu,cpu")
    starts = [_time(j["started"]) for j in done]
    assert starts == sorted(starts)                       # FIFO: they start in the order queued
    assert len(health["workers"]) == 2 and {w["device"] for w in health["workers"]} == {"cpu"}
    assert all(w["models"] == ["builtin shapes 32 px"] for w in health["workers"])   # each keeps its own
    overlapping = sum(_time(b["started"]) < _time(a["finished"]) for a, b in zip(done, done[1:]))
    assert overlapping >= 3                               # jobs ran side by side
    print(f"6 CI-sized jobs: one worker {one:.1f} s, two workers {two:.1f} s, ratio {two / one:.2f}")
    assert two / one < 0.7, (one, two)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find the workers")
def test_kill_9_with_two_jobs_running_loses_nothing(tmp_path):
    server = ServerProcess(tmp_path, "--devices", "cpu,cpu").start()
    try:
        with server.client() as api:
            jobs = [api.post("/jobs", json=tiny_job(seed=i, steps=n)).json() for i, n in enumerate([340, 340, 5, 5])]
            for job in jobs[:2]:
                wait_job(api, job["id"], until=lambda j: j["step"] >= 265, timeout=300)
            workers = [w["pid"] for w in api.get("/health").json()["workers"]]
        server.kill(signal.SIGKILL)
        deadline = time.monotonic() + 15
        while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        server.start()
        with server.client() as api:
            done = [wait_job(api, j["id"], timeout=300) for j in jobs]
            assert len(api.get("/jobs").json()["jobs"]) == 4
        assert [j["status"] for j in done] == ["done"] * 4
        assert [j["resumed_from"] for j in done] == [250, 250, None, None]
        assert [j["step"] for j in done] == [340, 340, 5, 5]
    finally:
        server.stop()
