"""The backend's diffusion models, as the add-on's preferences show them: fetched (and
downloaded or removed) on a thread so that draw() never waits on the network, and how their
sizes and downloads read. No `bpy`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from .client import BackendError, Client

#: A downloading job reports bytes as its step and total; the panel keeps them in Blender's
#: integer properties, which stop at 2**31 - 1 (2.1 GB), so they are kept in KiB.
DOWNLOAD_UNIT = 1024


def byte_size(count: int | None) -> str:
    """Decimal units, as the hub and the backend's CLI show them: 4.9 GB, 335 MB, 12 kB."""
    if count is None:
        return "?"
    value, unit = float(count), "B"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            break
        value /= 1000
    return f"{value:.0f} {unit}" if unit in ("B", "kB") or value >= 100 else f"{value:.1f} {unit}"


def download_text(done: int, total: int) -> str:
    """Bytes done of a total, both in the total's unit: "1.2 / 4.9 GB"."""
    unit = byte_size(total).split()[-1]
    scale = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}[unit]
    digits = 0 if unit in ("B", "kB") or total / scale >= 100 else 1
    return f"{done / scale:.{digits}f} / {total / scale:.{digits}f} {unit}"


def stored_progress(job: dict) -> tuple[int, int]:
    """A job's (step, total) as the panel's integer properties keep them: KiB (DOWNLOAD_UNIT)
    while it downloads a model, steps otherwise."""
    step, total = int(job.get("step", 0)), int(job.get("total", 0))
    if job.get("stage") == "downloading":
        return step // DOWNLOAD_UNIT, -(-total // DOWNLOAD_UNIT)
    return step, total


def progress_text(stage: str, step: int, total: int) -> str:
    """The running job's progress line (step and total as stored_progress keeps them)."""
    if stage == "downloading":
        return "Downloading " + download_text(step * DOWNLOAD_UNIT, total * DOWNLOAD_UNIT)
    return f"{stage} {step}/{total}"


def model_summary(model: dict) -> str:
    """One model of GET /models in a few words: its state, size and any download."""
    download, total = model.get("download"), model.get("bytes_total")
    if download:
        return f"downloading {download_text(download['done'], download['total'])}" if download["total"] else \
            "downloading…"
    if model["state"] == "present":
        return f"present · {byte_size(model['bytes_on_disk'])}"
    if model["state"] == "partial":
        return f"partial · {byte_size(model['bytes_on_disk'])}" + (f" of {byte_size(total)}" if total else "")
    return "missing" + (f" · {byte_size(total)}" if total else "")


class ModelsMonitor:
    """GET /models for the preferences, on a thread. `connect` makes a client for the
    configured backend (main thread: it reads the preferences; BackendError when none can be
    made). `dirty` tells the UI timer to redraw; `drawn_at` (set by the preferences' draw)
    tells it whether anyone is looking."""

    def __init__(self, connect: Callable[[], Client]):
        self.connect = connect
        self.models: list[dict] = []
        self.message = ""                 # why the list could not be read, or an action refused
        self.checked_at = self.drawn_at = 0.0
        self.dirty = False
        self._thread: threading.Thread | None = None

    @property
    def downloading(self) -> bool:
        return any(model.get("download") for model in self.models)

    def refresh(self, force: bool = False, max_age: float = 5.0) -> None:
        """Fetch the list on a thread, unless one runs or the last is younger than `max_age` s."""
        if self._thread is not None and self._thread.is_alive():
            return
        if force or time.monotonic() - self.checked_at >= max_age:
            self._thread = self._start(None)

    def act(self, action: Callable[[Client], object]) -> None:
        """Run `action(client)` (a download or a removal) on a thread, then fetch the list."""
        self._start(action)

    def _start(self, action: Callable[[Client], object] | None) -> threading.Thread | None:
        self.checked_at = time.monotonic()
        try:
            client = self.connect()
        except BackendError as exc:
            self.models, self.message, self.dirty = [], str(exc), True
            return None
        thread = threading.Thread(target=self._work, args=(client, action), daemon=True, name="dreamsculpt-models")
        thread.start()
        return thread

    def _work(self, client: Client, action: Callable[[Client], object] | None) -> None:
        message = ""
        if action is not None:
            try:
                action(client)
            except BackendError as exc:
                message = str(exc)
        try:
            models = client.models()
        except BackendError as exc:
            models, message = [], message or str(exc)
        self.models, self.message = models, message
        self.checked_at, self.dirty = time.monotonic(), True
