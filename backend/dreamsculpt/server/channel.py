"""A job's channel through its folder, for executors whose worker may be on another machine
(Ray): the job store is on storage every node sees, so the folder is the one place both
ends share, and it survives the server, the worker and Ray itself.

    <job>/attempt        the id of the submission that owns the job now
    <job>/events.jsonl   what each attempt reported, one JSON line per event (messages.py)
    <job>/stop           "stop <attempt>": that attempt is asked to stop at its next step

Each submission is a new attempt. A task whose attempt is no longer the job's stops at its
next step, as if asked: after a server restart hands the job to a new task, an old one that
is somehow still alive never runs it to completion alongside. A retry of the same task (Ray
retrying after a worker died) keeps its attempt and resumes from the checkpoint.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import asdict
from pathlib import Path

from . import messages
from .store import write_atomic

EVENTS = "events.jsonl"
ATTEMPT = "attempt"
STOP = "stop"
#: Seconds between a task's looks at the attempt and stop files (a stat or two on NFS).
CHECK_EVERY_S = 0.5
_TYPES = {cls.__name__: cls for cls in (messages.Hello, messages.Started, messages.ProgressUpdate,
                                        messages.PreviewReady, messages.ModelLoaded, messages.ModelsHeld,
                                        messages.Finished, messages.Failed, messages.Cancelled)}


def encode(event, attempt: str) -> str:
    return json.dumps({"type": type(event).__name__, "attempt": attempt, "t": round(time.time(), 3),
                       "event": asdict(event)}) + "\n"


def decode(line: str) -> tuple[str, float, object]:
    """(attempt, unix time, event) of one line; ValueError for a line that is not one."""
    record = json.loads(line)
    return record["attempt"], record["t"], _TYPES[record["type"]](**record["event"])


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


class TaskEnd:
    """The running side: report events, and tell whether to stop."""

    def __init__(self, folder: Path, attempt: str):
        self.folder, self.attempt = Path(folder), attempt
        self._checked, self._stop = 0.0, False
        self._end_last_line()

    def _end_last_line(self) -> None:
        """A task killed mid-write left half a line: end it, so that ours start on lines of their own."""
        try:
            with open(self.folder / EVENTS, "rb+") as f:
                if f.seek(0, os.SEEK_END) and (f.seek(-1, os.SEEK_END), f.read(1))[1] != b"\n":
                    f.write(b"\n")
        except FileNotFoundError:
            pass

    def send(self, event) -> None:
        # One write of one line, appended: the server reads whole lines only.
        with open(self.folder / EVENTS, "a", encoding="utf-8") as f:
            f.write(encode(event, self.attempt))

    def stop_asked(self) -> bool:
        now = time.monotonic()
        if not self._stop and now - self._checked >= CHECK_EVERY_S:
            self._checked = now
            owner = _read_text(self.folder / ATTEMPT)
            self._stop = owner != self.attempt or _read_text(self.folder / STOP) == f"stop {self.attempt}"
        return self._stop


class ServerEnd:
    """The server's side of one attempt: start it, read its events, ask it to stop."""

    def __init__(self, folder: Path, attempt: str):
        self.folder, self.attempt = Path(folder), attempt
        self._offset = 0

    @classmethod
    def begin(cls, folder: Path) -> "ServerEnd":
        """A new attempt at the job in `folder`: it owns the job from now on."""
        attempt = secrets.token_hex(8)
        (Path(folder) / STOP).unlink(missing_ok=True)
        write_atomic(Path(folder) / ATTEMPT, attempt.encode())
        channel = cls(folder, attempt)
        try:
            channel._offset = (Path(folder) / EVENTS).stat().st_size   # earlier attempts' lines
        except OSError:
            pass
        return channel

    def ask_stop(self) -> None:
        write_atomic(self.folder / STOP, f"stop {self.attempt}".encode())

    def read(self) -> list[tuple[float, object]]:
        """(time, event) of this attempt's lines written since the last call."""
        try:
            with open(self.folder / EVENTS, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except OSError:
            return []
        end = data.rfind(b"\n") + 1   # a line still being written waits for the next call
        self._offset += end
        events = []
        for line in data[:end].decode("utf-8", "replace").splitlines():
            try:
                attempt, t, event = decode(line)
            except (ValueError, KeyError, TypeError):
                continue
            if attempt == self.attempt:
                events.append((t, event))
        return events


def finished_count(folder: Path) -> int:
    """How many attempts reported the job finished (exactly one, for a job done once)."""
    try:
        lines = (Path(folder) / EVENTS).read_text().splitlines()
    except OSError:
        return 0
    return sum(1 for line in lines if line.startswith('{"type": "Finished"'))


def describe_host() -> str:
    return os.uname().nodename if hasattr(os, "uname") else os.environ.get("COMPUTERNAME", "?")
