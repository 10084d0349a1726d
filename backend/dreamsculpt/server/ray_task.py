"""What a Ray worker process runs for one job (ray_executor.py submits it).

The same engine call as the local worker process (worker.run_job), reporting through the
job's folder (channel.py) instead of a pipe. Models are kept in the Ray worker process
between the jobs it runs, as the local worker keeps them. Imported on the Ray nodes only;
nothing here imports ray.
"""

from __future__ import annotations

import os
from pathlib import Path

from .channel import TaskEnd, describe_host
from .messages import Cancelled, Failed, Finished, Hello, ModelLoaded, RunJob

#: The models this Ray worker process holds, and where their loading is reported now.
_models = None
_send = None


def _model_cache():
    global _models
    if _models is None:
        from ..models import ModelCache

        _models = ModelCache(on_load=lambda name, seconds: _send(ModelLoaded(name, seconds)))
    return _models


def run_on_ray(job: RunJob, attempt: str, device: str) -> Finished | Failed | Cancelled:
    """Run `job` as attempt `attempt`; returns the outcome (also written to its events)."""
    global _send
    folder = Path(job.folder)
    host = describe_host()
    if not (folder / "request.json").is_file():
        return Failed(job.job_id, f"The Ray worker on {host} cannot see the job's folder {folder}. Put the "
                                  "server's --data-dir on storage that every Ray node mounts at the same path "
                                  "(NFS or similar), and start the server with that path.")
    channel = TaskEnd(folder, attempt)
    _send = channel.send
    from .worker import hello, run_job

    said = hello(device)
    channel.send(Hello(said.device, said.torch, os.getpid(), host))
    return run_job(channel.send, channel.stop_asked, _model_cache(), job, device)


def probe(path: str, expected: str) -> tuple[str, bool]:
    """(this node, whether it reads `expected` at `path`): can a task see the data folder?"""
    try:
        seen = Path(path).read_text() == expected
    except OSError:
        seen = False
    return describe_host(), seen
