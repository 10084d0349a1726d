"""A real `dreamsculpt serve` process on a loopback port, for tests and benchmarks.

Each server gets its own XDG config and data folders under `root`, so the token and the
job store are the test's own; the built-in shape cache (DREAMSCULPT_CACHE_DIR) is shared.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx


def tiny_job(prompt: str = "a red cube", steps: int = 5, **extra) -> dict:
    """A job small enough for CI: built-in prior, 32 px renders, a few steps, a coarse mesh
    at a fixed threshold (the automatic one costs ~2 s)."""
    mesh = {"resolution": 32, "threshold": 1.0}
    mesh.update(extra.pop("mesh", {}))
    return {"kind": "text_to_3d", "prompt": prompt, "prior": "builtin", "preset": "preview", "steps": steps,
            "mesh": mesh, **extra}


class ServerProcess:
    def __init__(self, root: Path, *args: str, port: int = 0, env: dict | None = None):
        self.root = Path(root)
        self.args, self.port = list(args), port
        self.env = {**os.environ, "XDG_CONFIG_HOME": str(self.root / "config"),
                    "XDG_DATA_HOME": str(self.root / "data"), "PYTHONUNBUFFERED": "1", **(env or {})}
        self.process: subprocess.Popen | None = None
        self.url = ""
        self.stderr_path = self.root / "stderr.txt"

    @property
    def data_dir(self) -> Path:
        return self.root / "data" / "dreamsculpt"

    @property
    def token(self) -> str:
        return (self.root / "config" / "dreamsculpt" / "token").read_text().strip()

    def start(self, timeout: float = 60.0) -> "ServerProcess":
        self.root.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "dreamsculpt", "serve", "--port", str(self.port), *self.args]
        self.process = subprocess.Popen(command, env=self.env, stdout=subprocess.PIPE, text=True,
                                        stderr=open(self.stderr_path, "a"))
        deadline = time.monotonic() + timeout
        for line in self.process.stdout:
            if match := re.search(r"serving on (http://\S+)", line):
                self.url = match.group(1)
                self.port = int(self.url.rsplit(":", 1)[1])
                break
            if time.monotonic() > deadline:
                break
        if not self.url:
            self.process.kill()
            raise RuntimeError(f"server did not start: {self.stderr_path.read_text()[-2000:]}")
        return self

    def client(self, token: str | None = "auto", **kwargs) -> httpx.Client:
        headers = kwargs.pop("headers", {})
        if token == "auto":
            token = self.token
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return httpx.Client(base_url=self.url, headers=headers, timeout=30.0, **kwargs)

    def wait_health(self, predicate, timeout: float = 60.0) -> dict:
        """Poll /health until predicate(health) holds."""
        deadline = time.monotonic() + timeout
        with self.client(token=None) as c:
            while True:
                health = c.get("/health").json()
                if predicate(health) or time.monotonic() > deadline:
                    return health
                time.sleep(0.1)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self.process.send_signal(sig)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(40)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process and self.process.stdout:
            self.process.stdout.close()

    def stderr(self) -> str:
        return self.stderr_path.read_text()


def wait_job(client: httpx.Client, job_id: str, states=("done", "failed", "cancelled"), timeout: float = 120.0,
             until=None, poll_s: float = 0.1) -> dict:
    """Poll GET /jobs/{id} until its status is in `states` (or `until(job)` holds)."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/jobs/{job_id}").json()
        if (until(job) if until else job["status"] in states):
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job['status']} at step {job['step']}: {job}")
        time.sleep(poll_s)
