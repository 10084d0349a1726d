"""Where the server keeps things, which address it binds, and its access token.

Folders follow the platform's conventions through platformdirs (on Linux
`$XDG_DATA_HOME/dreamsculpt` and `$XDG_CONFIG_HOME/dreamsculpt`); `--data-dir` overrides
the data folder. The token lives in the config folder, readable by its owner only.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from ..errors import DreamsculptError

APP_NAME = "dreamsculpt"
DEFAULT_HOST = "127.0.0.1"
#: The server's fixed port (the add-on's default backend URL is http://127.0.0.1:7323).
DEFAULT_PORT = 7323
#: Largest request body accepted (bytes); larger ones get 413.
MAX_BODY_BYTES = 16 * 1024 * 1024
#: Seconds without a job after which the worker process exits and frees its models.
DEFAULT_IDLE_RELEASE_S = 600.0
TOKEN_FILE = "token"
#: Most local workers one server runs (one per device entry).
MAX_WORKERS = 16


def data_dir() -> Path:
    """Jobs and the server log: ~/.local/share/dreamsculpt on Linux (honours XDG_DATA_HOME)."""
    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


def config_dir() -> Path:
    """The token: ~/.config/dreamsculpt on Linux (honours XDG_CONFIG_HOME)."""
    return Path(platformdirs.user_config_dir(APP_NAME, appauthor=False))


def token_path() -> Path:
    return config_dir() / TOKEN_FILE


def load_or_create_token(path: Path | None = None) -> str:
    """The access token, created (32 random bytes, URL-safe) with mode 0600 the first time.
    A token file that others can read is tightened to 0600 rather than trusted as is."""
    path = path or token_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32) + "\n")
        elif os.name == "posix" and stat.S_IMODE(path.stat().st_mode) & 0o077:
            os.chmod(path, 0o600)
        token = path.read_text().strip()
    except FileExistsError:  # another process created it between the check and the open
        token = path.read_text().strip()
    except OSError as exc:
        raise DreamsculptError(f"Cannot create or read the token file {path}: {exc.strerror}. "
                               "Make its folder writable, or set XDG_CONFIG_HOME to one that is.") from exc
    if len(token) < 16:
        raise DreamsculptError(f"The token file {path} holds no valid token. Delete it and start "
                               "`dreamsculpt serve` again to create a new one.")
    return token


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1), with or without brackets."""
    host = host.strip().strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


#: What runs the jobs: worker processes on this machine, or tasks on a Ray cluster.
EXECUTORS = ("local", "ray")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:[0-9]{1,2})?)$")


def parse_devices(text: str) -> tuple[str, ...]:
    """`cuda:0,cuda:1` or `cpu,cpu` -> one worker per entry; a DreamsculptError says what is wrong."""
    devices = tuple(part.strip().lower() for part in text.split(","))
    bad = [d for d in devices if not _DEVICE.match(d)]
    if bad or not devices:
        raise DreamsculptError(f"--devices {text!r}: each entry must be auto, cpu, cuda, cuda:N or mps, "
                               "separated by commas (e.g. cuda:0,cuda:1 or cpu,cpu).")
    if len(devices) > MAX_WORKERS:
        raise DreamsculptError(f"--devices names {len(devices)} workers; at most {MAX_WORKERS} run on one host.")
    return devices


@dataclass
class ServerSettings:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    data_dir: Path | None = None    # None: the platform's data folder (see data_dir())
    allow_remote: bool = False
    device: str = "auto"
    idle_release_s: float = DEFAULT_IDLE_RELEASE_S
    max_body_bytes: int = MAX_BODY_BYTES
    devices: tuple[str, ...] | str = ()   # one local worker per entry ("cpu,cpu" too); () is (device,)
    executor: str = "local"
    ray_address: str | None = None  # None: RAY_ADDRESS, else a Ray started on this machine
    ray_resource: str = "GPU"       # what one job takes on the cluster: 1 of this resource
    ray_jobs: int | None = None     # jobs in flight on Ray (default: the cluster's amount of ray_resource)
    tls_cert: Path | None = None
    tls_key: Path | None = None

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).expanduser() if self.data_dir else data_dir()
        if isinstance(self.devices, str):
            self.devices = parse_devices(self.devices)
        self.devices = tuple(self.devices) or (self.device,)
        if self.executor not in EXECUTORS:
            raise DreamsculptError(f"--executor must be one of {', '.join(EXECUTORS)} (got {self.executor!r}).")
        if self.executor == "ray" and len(self.devices) > 1:
            raise DreamsculptError("--devices is for local workers; with --executor ray the cluster's "
                                   "resources decide where jobs run (see --ray-resource and --ray-jobs).")
        if self.ray_jobs is not None and not 1 <= self.ray_jobs <= 1024:
            raise DreamsculptError(f"--ray-jobs must be between 1 and 1024 (got {self.ray_jobs}).")
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_:.-]{0,63}$", self.ray_resource):
            raise DreamsculptError(f"--ray-resource {self.ray_resource!r} is not a Ray resource name "
                                   "(e.g. GPU, CPU or a custom resource of your cluster).")
        if not self.allow_remote and not is_loopback(self.host):
            raise DreamsculptError(
                f"Refusing to listen on {self.host}: it is reachable from other machines. Use the "
                f"default --host {DEFAULT_HOST}, or add --allow-remote (the token is still required).")
        if not 0 <= self.port <= 65535:
            raise DreamsculptError(f"--port must be between 0 and 65535 (got {self.port}).")
        self._check_tls()

    def _check_tls(self) -> None:
        """Both PEM files or neither, each one a readable file (whether they load is serve's check)."""
        if (self.tls_cert is None) != (self.tls_key is None):
            given, missing = ("--tls-cert", "--tls-key") if self.tls_key is None else ("--tls-key", "--tls-cert")
            raise DreamsculptError(f"{given} needs {missing} too: pass the certificate (--tls-cert PEM) and its "
                                   "private key (--tls-key PEM), or neither to serve plain http.")
        for flag in ("tls_cert", "tls_key"):
            if getattr(self, flag) is None:
                continue
            path = Path(getattr(self, flag)).expanduser()
            setattr(self, flag, path)
            option = "--" + flag.replace("_", "-")
            if not path.is_file():
                what = "a folder, not a file" if path.is_dir() else "no such file"
                raise DreamsculptError(f"{option} {path}: {what}. Pass the PEM file's path.")
            if not os.access(path, os.R_OK):
                raise DreamsculptError(f"{option} {path}: not readable by this user. Fix its permissions "
                                       "(the key should be readable by the server's user only).")

    @property
    def tls(self) -> bool:
        """Whether the server speaks https."""
        return self.tls_cert is not None

    @property
    def clear_text_remote(self) -> bool:
        """Listening for other machines without TLS: the token would cross the network readable."""
        return not self.loopback_only and not self.tls

    @property
    def loopback_only(self) -> bool:
        return is_loopback(self.host)
