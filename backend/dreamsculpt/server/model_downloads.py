"""The model downloads the job server runs for `POST /models/{name}/download`: a thread each in
the server process (a download needs no engine, and the worker stays free for jobs), their
bytes kept for `GET /models`. A job whose model is missing downloads it in its worker instead,
reported as the job's stage "downloading" (model_download.py); huggingface_hub's file locks
keep the two from writing the same file at once.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from ..errors import DreamsculptError
from ..model_store import human_bytes, with_needs

log = logging.getLogger("dreamsculpt.server")
detail = logging.getLogger("dreamsculpt.server.detail")


@dataclass
class Download:
    """One download of a model and what it needs (`names`); `done`/`total` in bytes."""

    name: str
    names: tuple[str, ...]
    done: int = 0
    total: int = 0
    running: bool = True
    error: str | None = None   # why it stopped, and what to do
    thread: threading.Thread | None = field(default=None, repr=False)


class ModelDownloads:
    """The latest download of each model this server started; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: dict[str, Download] = {}

    def start(self, name: str) -> Download:
        """Start downloading `name` (and what it needs) unless it is downloading already; a
        DreamsculptError for an unknown name."""
        names = tuple(model.name for model in with_needs(name))
        with self._lock:
            current = self._latest.get(name)
            if current is not None and current.running:
                return current
            download = Download(name, names)
            download.thread = threading.Thread(target=self._run, args=(download,), daemon=True,
                                               name=f"dreamsculpt-download-{name}")
            self._latest[name] = download
        download.thread.start()
        log.info("downloading model %s (%s)", name, ", ".join(names))
        return download

    def latest(self, name: str) -> Download | None:
        with self._lock:
            return self._latest.get(name)

    def downloading(self, name: str) -> str | None:
        """The running download that writes `name`'s files (its own, or one of a model that
        needs it), by the name it was started for; None when none is."""
        with self._lock:
            return next((d.name for d in self._latest.values() if d.running and name in d.names), None)

    def _run(self, download: Download) -> None:
        from ..model_download import fetch

        def report(done: int, total: int) -> None:
            download.done, download.total = done, total

        error = None
        try:
            fetched = fetch(download.name, report)
            log.info("model %s downloaded: %s written, %s in all", download.name, human_bytes(fetched.downloaded),
                     human_bytes(fetched.total))
        except DreamsculptError as exc:
            error = str(exc)
            log.error("model %s: download failed: %s", download.name, error)
        except Exception as exc:  # noqa: BLE001 - a bug: report it, keep serving
            error = f"Internal error ({type(exc).__name__}: {exc}); the traceback is in the server log."
            log.error("model %s: download failed: %r", download.name, exc)
            detail.exception("model %s: download error", download.name)
        with self._lock:
            download.error, download.running = error, False
