"""Talking to the Dreamsculpt job server over HTTP or HTTPS (urllib). No `bpy` here: this
module is unit-tested without Blender, and everything it raises carries a message that says
what to do. An https server's certificate is always verified: against the system's trusted
CAs, or against the studio's own CA file (a preference).
"""

from __future__ import annotations

import ipaddress
import json
import os
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:7323"
#: OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH: a trusted
#: certificate, made for another host name or address than the URL's.
HOST_MISMATCH = (62, 64)


class BackendError(Exception):
    """Something the artist can fix; str() says how."""


class BackendDown(BackendError):
    pass


class WrongToken(BackendError):
    pass


class UntrustedCertificate(BackendError):
    """The https server's certificate did not verify (unknown CA, wrong host name, expired)."""


class Rejected(BackendError):
    """The server refused the request (a bad option, an unknown job...)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def is_loopback_url(url: str) -> bool:
    try:
        host = (urllib.parse.urlsplit(url).hostname or "").lower()
    except ValueError:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_problem(url: str) -> str:
    """What is wrong with a backend URL ("" when nothing): it must be http:// or https://
    with a host."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        _ = parts.port   # a port that is not a number raises ValueError
    except ValueError:
        return f"The backend URL {url!r} is not a valid URL: use http://127.0.0.1:7323, or https://HOST:PORT."
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return (f"The backend URL {url!r} must start with http:// (this machine: http://127.0.0.1:7323) or "
                "https:// (a team server), followed by its host and port.")
    return ""


def clear_text_remote(url: str) -> bool:
    """A plain http URL to another machine: the token would cross the network readable."""
    return url.strip().lower().startswith("http:") and not url_problem(url) and not is_loopback_url(url)


def local_token_path() -> Path:
    """Where `dreamsculpt serve` keeps its token on this machine (platformdirs' user config
    folder for "dreamsculpt", rewritten here because the add-on may use only the stdlib)."""
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "dreamsculpt" / "token"


def read_local_token() -> str:
    try:
        return local_token_path().read_text().strip()
    except OSError:
        return ""


def compatible(addon_version: str, backend_version: str) -> bool:
    """Same major and minor version: the API is the same."""
    return addon_version.split(".")[:2] == backend_version.split(".")[:2]


#: The first bytes of the image files the backend takes, and their content types.
IMAGE_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"))


def image_type(data: bytes) -> str | None:
    """The content type of PNG, JPEG or WebP bytes, from their signature; None for anything else."""
    for signature, content_type in IMAGE_SIGNATURES:
        if data.startswith(signature):
            return content_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


@dataclass
class BackendState:
    """What the panel's backend box shows."""

    kind: str     # connected | not_running | wrong_token | untrusted | version_mismatch | offline | error
    message: str = ""
    health: dict = field(default_factory=dict)

    @property
    def connected(self) -> bool:
        return self.kind == "connected"


class Client:
    def __init__(self, url: str = DEFAULT_URL, token: str = "", timeout: float = 10.0, cafile: str = ""):
        """`cafile`: a PEM file of the CA that signed an https server's certificate ("": the
        system's trusted CAs)."""
        self.url, self.token, self.timeout = url.strip().rstrip("/"), token, timeout
        self.cafile = cafile
        self._context: ssl.SSLContext | None = None

    def _ssl_context(self) -> ssl.SSLContext | None:
        """What an https URL's certificate is verified against, made once (None for http)."""
        if not self.url.lower().startswith("https:"):
            return None
        if self._context is None:
            try:
                self._context = ssl.create_default_context(cafile=self.cafile or None)
            except (OSError, ValueError) as exc:   # missing file, or not PEM (ssl.SSLError is an OSError)
                raise BackendError(f"The CA certificate file {self.cafile} cannot be used ({exc}). In the add-on's "
                                   "preferences pick the PEM file of the CA that signed the server's certificate, "
                                   "or clear it to trust the system's CAs.") from None
        return self._context

    def _request(self, method: str, path: str, body: dict | None = None, auth: bool = True,
                 timeout: float | None = None, raw: bytes | None = None, content_type: str = "") -> bytes:
        if problem := url_problem(self.url):
            raise BackendError(problem)
        context = self._ssl_context()
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", content_type or "application/json")
        if auth:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout, context=context) as reply:
                return reply.read()
        except urllib.error.HTTPError as exc:
            raise self._http_error(exc) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, ssl.SSLError):
                raise self._tls_error(reason) from None
            if not is_loopback_url(self.url):   # a team server: the Start button cannot help
                raise BackendDown(f"The Dreamsculpt server at {self.url} is not answering ({reason}). Check the "
                                  "URL, and ask whoever runs it whether `dreamsculpt serve` is up.") from None
            raise BackendDown(f"The Dreamsculpt backend at {self.url} is not answering ({reason}). Start it with "
                              "the 'Start backend' button, or run `dreamsculpt serve` in a terminal.") from None

    def _tls_error(self, exc: ssl.SSLError) -> BackendError:
        if isinstance(exc, ssl.SSLCertVerificationError):
            why = exc.verify_message or exc.reason
            if exc.verify_code in HOST_MISMATCH:
                return UntrustedCertificate(f"The server's certificate is not trusted ({why}): put a host name "
                                            "the certificate names into the backend URL.")
            where = f"the CA file {self.cafile} did not sign it" if self.cafile else "no CA the system trusts signed it"
            return UntrustedCertificate(
                f"The server's certificate is not trusted ({why}; {where}): set the CA file in the add-on's "
                "preferences to the PEM of the CA that signed it (ask whoever runs the server).")
        return BackendError(f"No secure connection to {self.url} ({exc.reason or exc}). If that server serves plain "
                            "http, use an http:// URL; otherwise check its --tls-cert and --tls-key.")

    def _http_error(self, exc: urllib.error.HTTPError) -> BackendError:
        try:
            payload = json.loads(exc.read() or b"{}")
        except ValueError:
            payload = {}
        detail = payload.get("message") or payload.get("detail") or exc.reason
        if not isinstance(detail, str):
            detail = json.dumps(detail)
        if exc.code == 401:
            return WrongToken("The backend refused the token. Paste the output of `dreamsculpt token` into the "
                              "add-on's preferences (or leave it empty to read the local token file).")
        return Rejected(f"The backend refused the request ({exc.code}): {detail}", exc.code)

    def _json(self, method: str, path: str, body: dict | None = None, auth: bool = True) -> dict:
        return json.loads(self._request(method, path, body, auth))

    # --- the API ---------------------------------------------------------------------------
    def health(self) -> dict:
        return self._json("GET", "/health", auth=False)

    def jobs(self) -> list[dict]:
        return self._json("GET", "/jobs")["jobs"]

    def upload_image(self, data: bytes) -> dict:
        """POST /images: store a PNG, JPEG or WebP on the backend. Returns {"image": sha256,
        "width", "height", "has_alpha"}; a job then names the image by its sha."""
        content_type = image_type(data)
        if content_type is None:
            raise BackendError("That file is not a PNG, JPEG or WebP image. Pick an image file, or render the "
                               "active camera instead.")
        return json.loads(self._request("POST", "/images", raw=data, content_type=content_type,
                                        timeout=max(self.timeout, 60)))

    def upload_depth(self, data: bytes) -> dict:
        """POST /images?depth=true: store a view depth map, a 16-bit grey PNG in millimetres (0:
        none). Returns {"image": sha256, ...}; a scene walk names it as its "depth_image"."""
        if image_type(data) != "image/png":
            raise BackendError("The depth map is not a PNG. Render the start frame again.")
        return json.loads(self._request("POST", "/images?depth=true", raw=data, content_type="image/png",
                                        timeout=max(self.timeout, 60)))

    def submit(self, body: dict) -> dict:
        return self._json("POST", "/jobs", body)

    def job(self, job_id: str) -> dict:
        return self._json("GET", f"/jobs/{urllib.parse.quote(job_id)}")

    def cancel(self, job_id: str) -> dict:
        return self._json("POST", f"/jobs/{urllib.parse.quote(job_id)}/cancel")

    def delete(self, job_id: str) -> None:
        self._request("DELETE", f"/jobs/{urllib.parse.quote(job_id)}")

    def download(self, job_id: str, name: str) -> bytes:
        return self._request("GET", f"/jobs/{urllib.parse.quote(job_id)}/{name}", timeout=max(self.timeout, 60))

    # --- models: the backend's Hugging Face cache ---------------------------------------------
    def models(self) -> list[dict]:
        """GET /models: each model the backend's defaults load, its state in the backend's cache
        (present / partial / missing), its size, and the download running there (bytes)."""
        return self._json("GET", "/models")["models"]

    def download_model(self, name: str) -> dict:
        """POST /models/{name}/download: the backend downloads the model (and what it needs) in
        the background; returns the model's status. Asking again while it runs is harmless."""
        return self._json("POST", f"/models/{urllib.parse.quote(name, safe='')}/download")

    def remove_model(self, name: str) -> int:
        """DELETE /models/{name}: delete it from the backend's cache; returns the bytes freed.
        Rejected (409) while a job uses it or it downloads."""
        return self._json("DELETE", f"/models/{urllib.parse.quote(name, safe='')}")["freed_bytes"]

    def state(self, addon_version: str) -> BackendState:
        """Which of the panel's backend states holds now (two requests; call it off the UI thread)."""
        try:
            health = self.health()
        except BackendDown as exc:
            return BackendState("not_running", str(exc))
        except UntrustedCertificate as exc:
            return BackendState("untrusted", str(exc))
        except BackendError as exc:
            return BackendState("error", str(exc))
        if not compatible(addon_version, health.get("version", "")):
            return BackendState("version_mismatch",
                                f"The backend is version {health.get('version')} and this add-on {addon_version}: "
                                "install the same version of both (pip install -U dreamsculpt, and the add-on "
                                "zip built with it).", health)
        try:
            self._request("GET", "/jobs/00000000-000000-000000")  # cheapest authenticated call: 404
        except WrongToken as exc:
            return BackendState("wrong_token", str(exc), health)
        except Rejected:
            pass
        except BackendError as exc:
            return BackendState("error", str(exc), health)
        return BackendState("connected", "", health)
