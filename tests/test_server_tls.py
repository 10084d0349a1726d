"""A team server: https with the studio's certificate (--tls-cert/--tls-key), the warning when
other machines may connect over plain http, and the owner each job names. The certificates
come from throwaway test CAs (trustme); nothing leaves the loopback interface. The tests that
start a real `dreamsculpt serve` are marked slow."""

from __future__ import annotations

import http.server
import logging
import ssl
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trustme
from addon_modules import load as _load
from dreamsculpt import cli
from dreamsculpt.errors import DreamsculptError
from dreamsculpt.server.app import create_app
from dreamsculpt.server.dispatcher import Dispatcher
from dreamsculpt.server.serve import remote_warning
from dreamsculpt.server.settings import ServerSettings
from dreamsculpt.server.store import JobStore
from fastapi.testclient import TestClient
from server_harness import ServerProcess, tiny_job
from test_cli import error_line

TOKEN = "test-token-0123456789"




client_mod = _load("client")


@dataclass
class Pki:
    """PEM files: the studio CA, the server's certificate chain and key (for 127.0.0.1 and
    localhost), and another CA, with a key of its own, that signed nothing of the server's."""

    ca: Path
    cert: Path
    key: Path
    other_ca: Path
    other_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca, other = trustme.CA(), trustme.CA()
    issued, stranger = ca.issue_cert("127.0.0.1", "localhost"), other.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(folder / "ca.pem")
    other.cert_pem.write_to_path(folder / "other-ca.pem")
    for i, pem in enumerate(issued.cert_chain_pems):   # the server's certificate first, then intermediates
        pem.write_to_path(folder / "cert.pem", append=i > 0)
    issued.private_key_pem.write_to_path(folder / "key.pem")
    stranger.private_key_pem.write_to_path(folder / "other-key.pem")
    return Pki(folder / "ca.pem", folder / "cert.pem", folder / "key.pem", folder / "other-ca.pem",
               folder / "other-key.pem")


def trusting(ca: Path) -> ssl.SSLContext:
    """What httpx verifies the server against: the given CA only."""
    return ssl.create_default_context(cafile=str(ca))


# --- settings and start-up errors (fast) ---------------------------------------------------------
def test_tls_needs_both_files_and_each_must_exist(pki, tmp_path):
    with pytest.raises(DreamsculptError, match=r"--tls-cert needs --tls-key too.*--tls-key PEM"):
        ServerSettings(data_dir=tmp_path, tls_cert=pki.cert)
    with pytest.raises(DreamsculptError, match=r"--tls-key needs --tls-cert too"):
        ServerSettings(data_dir=tmp_path, tls_key=pki.key)
    missing = tmp_path / "nope.pem"
    with pytest.raises(DreamsculptError, match=rf"--tls-key {missing}: no such file"):
        ServerSettings(data_dir=tmp_path, tls_cert=pki.cert, tls_key=missing)
    with pytest.raises(DreamsculptError, match=rf"--tls-cert {tmp_path}: a folder, not a file"):
        ServerSettings(data_dir=tmp_path, tls_cert=tmp_path, tls_key=pki.key)
    assert ServerSettings(data_dir=tmp_path, tls_cert=str(pki.cert), tls_key=pki.key).tls
    assert not ServerSettings(data_dir=tmp_path).tls


def _serve_error(capsys, tmp_path: Path, cert: Path, key: Path) -> str:
    """`dreamsculpt serve` with these files: it must stop before binding, with one error line."""
    code = cli.main(["serve", "--port", "0", "--data-dir", str(tmp_path / "data"), "--tls-cert", str(cert),
                     "--tls-key", str(key)])
    assert code == 1
    return error_line(capsys.readouterr().err)


def test_files_that_do_not_load_are_one_error_line(pki, tmp_path, capsys):
    line = _serve_error(capsys, tmp_path, pki.cert, pki.other_key)
    assert f"--tls-key {pki.other_key} is not the private key of --tls-cert {pki.cert}" in line
    line = _serve_error(capsys, tmp_path, pki.key, pki.key)               # the key given as the certificate
    assert f"--tls-cert {pki.key} is not a PEM certificate" in line
    line = _serve_error(capsys, tmp_path, pki.cert, pki.cert)             # the certificate given as the key
    assert f"--tls-key {pki.cert} is not an unencrypted PEM private key" in line
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(pki.key.read_bytes(), None)
    locked = tmp_path / "locked.pem"
    locked.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.BestAvailableEncryption(b"secret")))
    line = _serve_error(capsys, tmp_path, pki.cert, locked)              # no password prompt: an answer
    assert "it is encrypted" in line and "openssl pkey" in line


def test_plain_http_for_other_machines_is_warned_about(pki, tmp_path):
    warning = remote_warning(ServerSettings(data_dir=tmp_path, host="0.0.0.0", allow_remote=True))
    lines = warning.splitlines()
    assert len(lines) >= 4 and any(line.startswith("WARNING:") for line in lines)
    assert "clear text" in warning and "--tls-cert" in warning and "reverse proxy" in warning
    assert remote_warning(ServerSettings(data_dir=tmp_path, host="0.0.0.0", allow_remote=True,
                                         tls_cert=pki.cert, tls_key=pki.key)) is None
    assert remote_warning(ServerSettings(data_dir=tmp_path, allow_remote=True)) is None   # 127.0.0.1
    assert remote_warning(ServerSettings(data_dir=tmp_path, host="::1")) is None


# --- the API in-process (fast) -------------------------------------------------------------------
class IdleExecutor:
    """An executor that is never started: queued jobs stay queued."""


@pytest.fixture
def app_client(tmp_path, pki, caplog):
    """The app over https in-process (a dispatcher whose lane never runs: jobs stay queued)."""
    settings = ServerSettings(data_dir=tmp_path, device="cpu", tls_cert=pki.cert, tls_key=pki.key)
    dispatcher = Dispatcher(JobStore(tmp_path), settings, [IdleExecutor()])
    caplog.set_level(logging.INFO, logger="dreamsculpt.server")
    with TestClient(create_app(dispatcher, TOKEN, settings), base_url="https://127.0.0.1:7323") as client:
        client.headers["Authorization"] = f"Bearer {TOKEN}"
        yield client


def test_the_owner_shows_in_the_job_list_and_the_log(app_client, caplog):
    ada = app_client.post("/jobs", json=tiny_job(owner="Ada Lovelace"))
    anonymous = app_client.post("/jobs", json=tiny_job("a blue ball"))
    assert ada.status_code == 201 and anonymous.status_code == 201, (ada.text, anonymous.text)
    owners = {job["id"]: job["request"].get("owner") for job in app_client.get("/jobs").json()["jobs"]}
    assert owners == {ada.json()["id"]: "Ada Lovelace", anonymous.json()["id"]: None}
    queued = [r.getMessage() for r in caplog.records if " queued: " in r.getMessage()]
    assert len(queued) == 2 and queued[0].endswith("owner=Ada Lovelace") and queued[1].endswith("owner=-")
    refused = app_client.post("/jobs", json=tiny_job(owner="x" * 65))
    assert refused.status_code == 422 and "owner" in refused.json()["message"]


def test_the_guards_take_https_origins_and_hosts(app_client):
    """The Origin of a local https page is as local as an http one; a remote page is refused,
    and a foreign Host is told the https address."""
    assert app_client.get("/jobs", headers={"Origin": "https://127.0.0.1:7323"}).status_code == 200
    assert app_client.get("/jobs", headers={"Origin": "https://localhost:7323"}).status_code == 200
    assert app_client.get("/jobs", headers={"Origin": "https://evil.example"}).status_code == 403
    wrong_host = app_client.get("/jobs", headers={"Host": "evil.example"})
    assert wrong_host.status_code == 403 and "https://127.0.0.1:<port>" in wrong_host.json()["detail"]


# --- a real https server and the add-on's client (slow) ------------------------------------------
@pytest.fixture(scope="module")
def https_server(tmp_path_factory, pki):
    server = ServerProcess(tmp_path_factory.mktemp("https"), "--device", "cpu", "--tls-cert", str(pki.cert),
                           "--tls-key", str(pki.key), verify=trusting(pki.ca)).start()
    yield server
    server.stop()


@pytest.mark.slow
def test_the_server_answers_https_verified_against_the_studio_ca(https_server, pki):
    assert https_server.url.startswith("https://127.0.0.1:")
    with https_server.client(token=None) as c:
        health = c.get("/health")
    assert health.status_code == 200 and health.json()["version"]
    with https_server.client() as c:
        assert c.get("/jobs").json() == {"jobs": []}
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):   # another CA signed nothing here
        https_server.client(token=None, verify=trusting(pki.other_ca)).get("/health")
    plain = https_server.url.replace("https://", "http://")
    with pytest.raises(httpx.TransportError):                            # no plain http beside https
        httpx.get(plain + "/health", timeout=10)
    assert "WARNING" not in https_server.stderr()


@pytest.mark.slow
def test_the_addon_client_trusts_the_ca_file_it_is_given(https_server, pki):
    version = https_server.wait_health(lambda h: True)["version"]
    client = client_mod.Client(https_server.url, https_server.token, cafile=str(pki.ca))
    assert client.state(version).kind == "connected"
    assert client.jobs() == []
    for stranger in (client_mod.Client(https_server.url, https_server.token, cafile=str(pki.other_ca)),
                     client_mod.Client(https_server.url, https_server.token)):   # the system's CAs
        state = stranger.state(version)
        assert state.kind == "untrusted" and "Traceback" not in state.message
        assert "certificate is not trusted" in state.message and "CA file" in state.message
        with pytest.raises(client_mod.UntrustedCertificate, match="set the CA file in the add-on's preferences"):
            stranger.jobs()
    missing = client_mod.Client(https_server.url, https_server.token, cafile=str(pki.ca.with_name("gone.pem")))
    with pytest.raises(client_mod.BackendError, match="gone.pem cannot be used"):
        missing.health()


@contextmanager
def stdlib_server(tls: ssl.SSLContext | None = None):
    """A do-nothing HTTP server on a loopback port in a thread (https with `tls`); yields its port."""
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()


def test_the_addon_client_says_when_a_server_does_not_speak_https(pki):
    """https:// to a plain http server: a sentence that says to use http://."""
    with stdlib_server() as port:
        client = client_mod.Client(f"https://127.0.0.1:{port}", "x", cafile=str(pki.ca), timeout=5)
        with pytest.raises(client_mod.BackendError, match=r"No secure connection.*use an http:// URL"):
            client.health()


def test_a_certificate_for_another_host_is_refused_with_what_to_change(tmp_path):
    """Signed by the trusted CA, but for another name than the URL's host."""
    ca = trustme.CA()
    ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("render.studio.example").configure_cert(tls)
    with stdlib_server(tls) as port:
        client = client_mod.Client(f"https://127.0.0.1:{port}", "x", cafile=str(tmp_path / "ca.pem"), timeout=5)
        with pytest.raises(client_mod.UntrustedCertificate, match=r"not trusted \(IP address mismatch.*backend URL"):
            client.health()
    with stdlib_server(tls) as port:
        client = client_mod.Client(f"https://localhost:{port}", "x", cafile=str(tmp_path / "ca.pem"), timeout=5)
        with pytest.raises(client_mod.UntrustedCertificate, match=r"not trusted \(Hostname mismatch.*backend URL"):
            client.health()


@pytest.mark.slow
def test_allow_remote_without_tls_warns_and_still_serves(tmp_path):
    """Bound to 0.0.0.0 (a port the system picks) for a moment: the warning is on stderr, and
    the server answers."""
    server = ServerProcess(tmp_path, "--device", "cpu", "--host", "0.0.0.0", "--allow-remote").start()
    try:
        health = httpx.get(f"http://127.0.0.1:{server.port}/health", timeout=10)
        assert health.status_code == 200
    finally:
        server.stop()
    stderr = server.stderr()
    assert "WARNING: serving plain http on 0.0.0.0" in stderr and "clear text" in stderr
    assert "--tls-cert" in stderr and "reverse proxy" in stderr
