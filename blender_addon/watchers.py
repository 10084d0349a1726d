"""What the background threads watch, as the main thread sees it. No `bpy`.

`WATCHERS` holds the jobs this Blender follows (a `jobs.JobWatcher` thread each, and the scene
its results go to); `BackendMonitor` checks the backend's state on a thread so that draw()
never waits on the network. Blender's side (the timers that read both) is in timer.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import NamedTuple

from .client import BackendError, BackendState, Client
from .jobs import JobWatcher

#: Seconds between polls of a followed job (and between runs of the poll timer).
POLL_S = 0.25


class Followed(NamedTuple):
    """A job being followed: its watcher thread and the name of the scene it belongs to (a
    name, not the Scene: undo and file loads replace Blender's data)."""

    watcher: JobWatcher
    scene_name: str


#: job id (or the local key of a job still being submitted) -> the job being followed
WATCHERS: dict[str, Followed] = {}


def is_followed(job_id: str) -> bool:
    """Whether `job_id` is a job this Blender is following now (one job per scene at a time)."""
    return bool(job_id) and job_id in WATCHERS


def stop_all() -> None:
    """Stop every watcher thread (the add-on is being disabled)."""
    for followed in WATCHERS.values():
        if followed.watcher is not None:
            followed.watcher.stop()
    WATCHERS.clear()


class BackendMonitor:
    """The backend's state for the panel, checked on a thread (never in draw()).

    `connect` makes a client for the configured backend (main thread: it reads the add-on's
    preferences; it raises BackendError when none can be made); `version` is the add-on's
    version, which the backend must be compatible with. `dirty` tells the UI timer to redraw.
    """

    def __init__(self, connect: Callable[[], Client], version: Callable[[], str]):
        self.connect, self.version = connect, version
        self.state = BackendState("checking", "Checking the backend…")
        self.checked_at = 0.0
        self.dirty = False
        self._thread: threading.Thread | None = None

    def refresh(self, force: bool = False, max_age: float = 3.0) -> None:
        """Start a check on a thread, unless one runs or the last is younger than `max_age` s."""
        if self._thread is not None and self._thread.is_alive():
            return
        if not force and time.monotonic() - self.checked_at < max_age:
            return
        try:
            client = self.connect()
        except BackendError as exc:
            self.state, self.checked_at, self.dirty = BackendState("offline", str(exc)), time.monotonic(), True
            return
        self.checked_at = time.monotonic()
        self._thread = threading.Thread(target=self._check, args=(client, self.version()), daemon=True)
        self._thread.start()

    def _check(self, client: Client, version: str) -> None:
        self.state = client.state(version)
        self.checked_at, self.dirty = time.monotonic(), True

    def check_now(self) -> BackendState:
        """Check on this thread (operators and start-up, which act on the answer)."""
        try:
            self.state = self.connect().state(self.version())
        except BackendError as exc:
            self.state = BackendState("offline", str(exc))
        self.checked_at = time.monotonic()
        return self.state
