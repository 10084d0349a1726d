"""`dreamsculpt serve`: lock the data folder, bind the port, start the queue, serve HTTP
(or https with --tls-cert and --tls-key).

The socket is bound here (not by uvicorn) so that a port in use is one clear line, and so
that `--port 0` can print the port the system picked. The certificate and key are loaded
here once before uvicorn loads them, so that a wrong file is one clear line too.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import logging.handlers
import signal
import socket
import ssl
import sys
from pathlib import Path

from filelock import FileLock, Timeout

from .. import __version__
from ..errors import DreamsculptError
from .settings import ServerSettings, load_or_create_token, token_path

LOG_FILE = "server.log"


def setup_logging(data_dir: Path) -> None:
    """Job events: one line each on stderr and in <data dir>/server.log (rotated at 5 MB);
    tracebacks go to the file only."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    to_file = logging.handlers.RotatingFileHandler(data_dir / LOG_FILE, maxBytes=5_000_000, backupCount=3,
                                                   encoding="utf-8")
    to_stderr = logging.StreamHandler(sys.stderr)
    for handler in (to_file, to_stderr):
        handler.setFormatter(fmt)
    server = logging.getLogger("dreamsculpt.server")
    server.setLevel(logging.INFO)
    server.handlers[:] = [to_file, to_stderr]
    server.propagate = False
    detail = logging.getLogger("dreamsculpt.server.detail")
    detail.handlers[:] = [to_file]
    detail.propagate = False


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket, or a DreamsculptError that says what to do."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise DreamsculptError(f"Cannot resolve --host {host}: {exc.strerror}.") from exc
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    if sys.platform != "win32":  # restart at once after a crash (TIME_WAIT); on Windows it would allow stealing
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise DreamsculptError(f"Port {port} on {host} is already in use (another `dreamsculpt serve`?). "
                                   "Stop that program, or pick another port with --port N.") from exc
        raise DreamsculptError(f"Cannot listen on {host}:{port}: {exc.strerror}.") from exc
    return sock


def check_tls(cert: Path, key: Path) -> None:
    """Load the certificate chain and its key as uvicorn will; a DreamsculptError names the
    file that does not load and says what it must be."""
    try:
        ssl.create_default_context(cafile=str(cert))
    except (ssl.SSLError, ValueError) as exc:
        raise DreamsculptError(f"--tls-cert {cert} is not a PEM certificate (-----BEGIN CERTIFICATE-----: "
                               f"the server's first, then any intermediates): {exc}.") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:   # a password callback, so that an encrypted key fails here instead of prompting on the terminal
        context.load_cert_chain(cert, key, password=lambda: b"")
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise DreamsculptError(f"--tls-key {key} is not the private key of --tls-cert {cert}: pass the key "
                                   "the certificate was made with.") from None
        hint = ("; it is encrypted: write a decrypted copy with `openssl pkey -in KEY -out PLAIN.pem`"
                if _encrypted(key) else "")
        raise DreamsculptError(f"--tls-key {key} is not an unencrypted PEM private key (-----BEGIN PRIVATE "
                               f"KEY-----){hint}: {exc}.") from None


def _encrypted(key: Path) -> bool:
    """An encrypted PEM key: PKCS#8 (BEGIN ENCRYPTED PRIVATE KEY) or OpenSSL's older Proc-Type header."""
    try:
        return b"ENCRYPTED" in key.read_bytes()[:8192]
    except OSError:
        return False


def remote_warning(settings: ServerSettings) -> str | None:
    """The warning printed when other machines may connect over plain http; None otherwise."""
    if not settings.clear_text_remote:
        return None
    rule = "!" * 78
    return "\n".join((
        rule,
        f"WARNING: serving plain http on {settings.host}, which other machines can reach.",
        "The access token and every prompt, image and mesh cross the network in clear text:",
        "anyone on the network path can read the token and then use this server.",
        "Serve https with --tls-cert CERT.pem --tls-key KEY.pem, or listen on 127.0.0.1",
        "behind a reverse proxy (Caddy, nginx) that terminates TLS.",
        rule))


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn re-raises SIGINT/SIGTERM once it has shut down, which would end the process
        before the queue has stopped; here the signal only starts the shutdown, and `serve`
        then stops the queue (the running job saves a checkpoint) and returns."""

        @contextlib.contextmanager
        def capture_signals(self):
            signals = [signal.SIGINT, signal.SIGTERM]
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in signals}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return Server


def serve(settings: ServerSettings) -> int:
    import uvicorn

    from .app import create_app
    from .dispatcher import Dispatcher
    from .store import JobStore

    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DreamsculptError(f"Cannot create the data folder {settings.data_dir}: {exc.strerror}. "
                               "Pass a writable --data-dir.") from exc
    lock = FileLock(settings.data_dir / "server.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise DreamsculptError(f"Another `dreamsculpt serve` is using {settings.data_dir}. Stop it, or "
                               "pass another --data-dir.") from None
    try:
        if settings.tls:
            check_tls(settings.tls_cert, settings.tls_key)
        token = load_or_create_token()
        sock = bind(settings.host, settings.port)
        host, port = sock.getsockname()[:2]
        setup_logging(settings.data_dir)
        store = JobStore(settings.data_dir)
        dispatcher = Dispatcher(store, settings)
        app = create_app(dispatcher, token, settings)
        dispatcher.start()   # the store is loaded (and old uploads pruned) before we say we serve
        shown = f"[{host}]" if ":" in host else host
        if (warning := remote_warning(settings)) is not None:
            print(warning, file=sys.stderr, flush=True)
        scheme = "https" if settings.tls else "http"
        print(f"dreamsculpt {__version__} serving on {scheme}://{shown}:{port}", flush=True)
        print(f"token: {token_path()} (`dreamsculpt token` prints it)", flush=True)
        print(f"jobs and log: {settings.data_dir}", flush=True)
        tls = {"ssl_certfile": settings.tls_cert, "ssl_keyfile": settings.tls_key} if settings.tls else {}
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=5, **tls)
        try:
            _server_class()(config).run(sockets=[sock])
        finally:
            logging.getLogger("dreamsculpt.server").info("stopping")
            dispatcher.stop()
    finally:
        lock.release()
    return 0
