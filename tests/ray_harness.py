"""A throwaway local Ray cluster for tests and benchmarks: `ray start --head --block` in its
own process group and temp folder, with fake GPU slots (Ray hands a task CUDA_VISIBLE_DEVICES
for them; torch finds no CUDA and the job runs on the CPU). Stopping it ends every process it
started, and nothing else on the machine."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_processes() -> dict[int, str]:
    """pid -> command line of this machine's Ray processes (Linux)."""
    found = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if re.search(r"raylet|gcs_server|ray::|default_worker\.py", cmd):
                found[int(proc.name)] = cmd
    return found


class LocalRay:
    def __init__(self, gpus: int = 2, cpus: int = 2):
        self.gpus, self.cpus = gpus, cpus
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        # Short: Ray's socket paths must fit in 107 bytes.
        self.temp = Path(tempfile.mkdtemp(prefix="dsray", dir="/tmp"))
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 90.0) -> "LocalRay":
        ray = Path(sys.executable).with_name("ray")
        command = [str(ray), "start", "--head", "--block", "--port", str(self.port), "--num-cpus", str(self.cpus),
                   "--num-gpus", str(self.gpus), "--temp-dir", str(self.temp), "--include-dashboard", "false",
                   "--object-store-memory", str(100 * 2**20), "--disable-usage-stats"]
        log = open(self.temp / "start.log", "w")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                        env={**os.environ, "RAY_ADDRESS": ""})
        deadline = time.monotonic() + timeout
        while "Ray runtime started" not in (self.temp / "start.log").read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"ray start failed: {(self.temp / 'start.log').read_text()[-2000:]}")
            time.sleep(0.2)
        return self

    def stop(self) -> None:
        """SIGTERM to the cluster, then SIGKILL to whatever of its session is left (its workers)."""
        if self.process is None:
            return
        session = self.process.pid   # start_new_session: the session's id is the leader's pid
        try:
            os.killpg(session, signal.SIGTERM)
            self.process.wait(5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        for _ in range(3):
            left = [pid for pid in _in_session(session)]
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if not left:
                break
            time.sleep(0.5)
        self.process.wait(10)
        self.process = None


def _in_session(session: int) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == session and fields[0] != "Z":   # fields: state, ppid, pgrp, session
                pids.append(int(proc.name))
    return pids
