"""Starting `dreamsculpt serve` as a child process of Blender, and stopping it. No `bpy`.

The backend runs in its own Python environment (torch, diffusers...), never in Blender's:
the add-on only needs that environment's Python executable, or a `dreamsculpt` command on
PATH. Its output goes to a log file; it is stopped by the Stop button, when the add-on is
disabled, and when Blender quits.
"""

from __future__ import annotations

import atexit
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

from .client import BackendError, is_loopback_url

_process: subprocess.Popen | None = None
_log_file = None


def command(python: str, url: str) -> list[str]:
    """The command line that serves `url` (its port) with the backend's Python, or the
    `dreamsculpt` on PATH when no Python is set. Only a loopback http:// URL can be started."""
    if not is_loopback_url(url):
        raise BackendError(f"The add-on starts a backend on this machine only; {url} is not a loopback address. "
                           "Start that backend where it runs, or set the URL to http://127.0.0.1:7323.")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http":   # the backend it starts has no certificate to serve https with
        raise BackendError(f"The add-on starts a plain http backend on this machine only; {url} is not http://. "
                           "Run `dreamsculpt serve --tls-cert CERT --tls-key KEY` yourself, or set the URL to "
                           "http://127.0.0.1:7323.")
    port = parts.port or 7323
    if python:
        if not Path(python).is_file():
            raise BackendError(f"The backend Python '{python}' does not exist. In the add-on's preferences, "
                               "pick the python executable of the environment where dreamsculpt is installed.")
        return [python, "-m", "dreamsculpt", "serve", "--port", str(port)]
    found = shutil.which("dreamsculpt")
    if not found:
        raise BackendError("No backend Python is set and no `dreamsculpt` command is on PATH. In the add-on's "
                           "preferences, pick the python executable of the environment where dreamsculpt is "
                           "installed (pip install dreamsculpt).")
    return [found, "serve", "--port", str(port)]


def start(python: str, url: str, log_path: Path) -> subprocess.Popen:
    """Start the backend (once); its output goes to `log_path`."""
    global _process, _log_file
    if running():
        return _process
    args = command(python, url)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    _log_file = open(log_path, "ab")
    flags = subprocess.CREATE_NEW_PROCESS_GROUP if sys.platform == "win32" else 0
    try:
        _process = subprocess.Popen(args, stdout=_log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    creationflags=flags)
    except OSError as exc:
        raise BackendError(f"Could not start the backend ({exc.strerror}): {' '.join(args)}") from exc
    return _process


def running() -> bool:
    return _process is not None and _process.poll() is None


def exit_code() -> int | None:
    return None if _process is None else _process.poll()


def stop(timeout: float = 20.0) -> None:
    """Stop the backend we started (SIGTERM: the running job saves a checkpoint and resumes
    on the next start)."""
    global _process, _log_file
    if _process is not None and _process.poll() is None:
        _process.terminate()
        try:
            _process.wait(timeout)
        except subprocess.TimeoutExpired:
            _process.kill()
            _process.wait(5)
    _process = None
    if _log_file is not None:
        _log_file.close()
        _log_file = None


atexit.register(stop)
