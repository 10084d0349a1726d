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


def reference_image(folder: Path, shape: str = "cube", colour: str = "red", elevation_deg: float = 10.0,
                    resolution: int = 64) -> Path:
    """An RGBA PNG of a built-in shape seen from the front (azimuth -90) at `elevation_deg`,
    distance 3, field of view 40: what a render with a transparent film gives."""
    from dreamsculpt.cameras import Cameras
    from dreamsculpt.shapes.library import write_shape_folder

    views = Cameras.from_orbit(-90.0, elevation_deg, 3.0, 40.0)
    write_shape_folder(shape, colour, folder, resolution, views=views, with_poses=False, alpha=True)
    return Path(folder) / "view_000.png"


def camera_spec(elevation_deg: float = 10.0, offset=(0.0, 0.0, 0.0), depth: float | None = 3.0) -> dict:
    """The Blender camera (CameraSpec, plus "depth") that took reference_image(), moved by
    `offset` (world units) along with the object: matrix_world of the orbit camera, and the
    lens that gives a 40 degree field of view on Blender's 36 mm sensor."""
    import math

    import torch
    from dreamsculpt.cameras import orbit_c2w

    matrix = orbit_c2w(torch.tensor([-90.0]), torch.tensor([elevation_deg]), torch.tensor([3.0]))[0]
    matrix[:3, 3] += torch.tensor(offset)
    spec = {"matrix_world": matrix.tolist(), "lens": 18.0 / math.tan(math.radians(20.0)),
            "sensor_width": 36.0, "sensor_height": 24.0}
    return {**spec, "depth": depth} if depth is not None else spec


def upload(client: httpx.Client, path: Path, media_type: str = "image/png") -> str:
    """POST /images; returns the image id."""
    response = client.post("/images", content=Path(path).read_bytes(), headers={"Content-Type": media_type})
    assert response.status_code == 201, response.text
    return response.json()["image"]


def tiny_image_job(kind: str, image: str, **extra) -> dict:
    """An image job small enough for CI: built-in prior; for image_to_3d 32 px renders, a
    few steps and a coarse mesh, for novel_views 4 views of 5 denoising steps."""
    if kind == "image_to_3d":
        mesh = {"resolution": 64, "threshold": 1.0, **extra.pop("mesh", {})}   # the automatic one costs seconds
        return {"kind": kind, "image": image, "elevation_deg": 10.0, "prior": "builtin", "preset": "preview",
                "steps": 60, "resolution": 32, "mesh": mesh, **extra}
    return {"kind": kind, "image": image, "elevation_deg": 10.0, "prior": "builtin", "count": 4, "steps": 5, **extra}


class ServerProcess:
    def __init__(self, root: Path, *args: str, port: int = 0, env: dict | None = None, verify=True):
        """`verify`: what client() checks an https server's certificate against (an
        ssl.SSLContext with the test CA, as httpx takes it)."""
        self.root = Path(root)
        self.args, self.port, self.verify = list(args), port, verify
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
            if match := re.search(r"serving on (https?://\S+)", line):
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
        """An httpx client with the token; kwargs go to httpx.Client (`verify` defaults to the
        server's)."""
        headers = kwargs.pop("headers", {})
        kwargs.setdefault("verify", self.verify)
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
