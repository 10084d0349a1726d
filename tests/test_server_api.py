"""The job server's HTTP surface: auth, origin checks, validation, limits. A real
`dreamsculpt serve` process on a loopback port (see server_harness.py)."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys

import pytest
from server_harness import ServerProcess, tiny_job

pytestmark = pytest.mark.slow   # a real server process

AUTH_ROUTES = [("GET", "/jobs"), ("POST", "/jobs"), ("GET", "/jobs/20261121-093512-4f2a9c"),
               ("GET", "/jobs/20261121-093512-4f2a9c/result.ply"), ("POST", "/jobs/20261121-093512-4f2a9c/cancel"),
               ("DELETE", "/jobs/20261121-093512-4f2a9c"), ("POST", "/models/release"), ("GET", "/openapi.json")]


def test_health_needs_no_token_and_says_what_runs(server):
    health = server.wait_health(lambda h: h["device"] is not None)
    assert health["status"] == "ok" and health["version"]
    assert health["device"] == "cpu" and health["torch"].startswith("2.") and health["diffusers"]
    assert health["queue"] == 0 and health["running"] is None and isinstance(health["models"], list)


def test_token_file_is_private_and_printed_by_dreamsculpt_token(server):
    path = server.root / "config" / "dreamsculpt" / "token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    printed = subprocess.run([sys.executable, "-m", "dreamsculpt", "token"], env=server.env, capture_output=True,
                             text=True, check=True).stdout.strip()
    assert printed == server.token and len(printed) >= 32


@pytest.mark.parametrize("token", [None, "wrong-token-0123456789"])
@pytest.mark.parametrize("method,path", AUTH_ROUTES)
def test_every_route_but_health_needs_the_token(server, method, path, token):
    with server.client(token=token) as client:
        response = client.request(method, path, json=tiny_job() if method == "POST" else None)
    assert response.status_code == 401
    assert "dreamsculpt token" in response.json()["detail"]


def test_openapi_schema_is_served_with_the_token(api):
    schema = api.get("/openapi.json").json()
    assert schema["openapi"].startswith("3.")
    assert {"/jobs", "/jobs/{job_id}", "/jobs/{job_id}/cancel", "/jobs/{job_id}/result.ply",
            "/health"} <= set(schema["paths"])
    request = schema["components"]["schemas"]["TextTo3DRequest"]
    assert request["additionalProperties"] is False and "prompt" in request["properties"]


@pytest.mark.parametrize("origin", ["http://evil.example", "https://evil.example:7323", "null",
                                    "http://127.0.0.1.evil.example"])
def test_web_pages_are_refused_even_with_the_token(api, origin):
    for method, path in [("GET", "/jobs"), ("POST", "/jobs"), ("GET", "/health")]:
        response = api.request(method, path, headers={"Origin": origin},
                               json=tiny_job() if method == "POST" else None)
        assert response.status_code == 403, (method, path)
        assert "web pages" in response.json()["detail"]


def test_loopback_origins_are_allowed(api, server):
    for origin in (f"http://127.0.0.1:{server.port}", "http://localhost:8080", "http://[::1]"):
        assert api.get("/jobs", headers={"Origin": origin}).status_code == 200


def test_dns_rebinding_host_is_refused(api):
    """A page on evil.example whose name was rebound to 127.0.0.1 sends Host: evil.example."""
    response = api.get("/jobs", headers={"Host": "evil.example:7323"})
    assert response.status_code == 403 and "Host" in response.json()["detail"]


INVALID = [
    ("prompt", {"prompt": ""}),
    ("prompt", {"prompt": "   "}),
    ("prior", {"prior": "dalle"}),
    ("kind", {"kind": "text_to_4d"}),
    ("steps", {"steps": 0}),
    ("steps", {"steps": 10**9}),
    ("refine", {"refine": -1}),
    ("seed", {"seed": -1}),
    ("preset", {"preset": "ultra"}),
    ("resolution", {"resolution": 4}),
    ("guidance_scale", {"guidance_scale": -3}),
    ("mesh.resolution", {"mesh": {"resolution": 8}}),
    ("mesh.max_faces", {"mesh": {"max_faces": 0}}),
    ("mesh.colour", {"mesh": {"colour": True}}),
    ("temperature", {"temperature": 0.7}),
    ("steps", {"steps": "many"}),
    ("references", {"prior": "references"}),
    ("model", {"model": "a\x00b"}),
]


@pytest.mark.parametrize("field,change", INVALID, ids=[f"{f}-{i}" for i, (f, _) in enumerate(INVALID)])
def test_invalid_jobs_get_422_naming_the_field(api, field, change):
    body = {**tiny_job(), **change}
    response = api.post("/jobs", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["message"].startswith(field + ":") or f"{field}:" in response.json()["message"]


def test_missing_kind_and_non_json_bodies_are_422(api):
    body = tiny_job()
    del body["kind"]
    response = api.post("/jobs", json=body)
    assert response.status_code == 422 and "kind" in response.json()["message"]
    response = api.post("/jobs", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    response = api.post("/jobs", content=b'{"kind": "text_to_3d", "prompt": "a cube", "steps": NaN}',
                        headers={"Content-Type": "application/json"})
    assert response.status_code == 422


def test_nothing_invalid_was_queued(api):
    assert api.get("/jobs").json()["jobs"] == []


@pytest.mark.parametrize("path", [
    "/jobs/..%2F..%2F..%2Fetc%2Fpasswd/result.ply",
    "/jobs/%2E%2E/run.json",
    "/jobs/20261121-093512-4f2a9c%2F..%2F..%2Fserver.lock/run.json",
    "/jobs/20261121-093512-4f2a9c/..%2F..%2Fserver.log",
    "/jobs/20261121-093512-4F2A9C/result.ply",
])
def test_paths_outside_the_job_store_cannot_be_read(api, path):
    response = api.get(path)
    assert response.status_code in (404, 422), response.text
    assert b"root:" not in response.content and b"INFO" not in response.content


def test_raw_dot_dot_paths_are_refused(server):
    """Paths an HTTP library would normalise, sent byte for byte."""
    for raw in (b"/jobs/../../../etc/passwd", b"/jobs/../server.log", b"/../../etc/passwd"):
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            s.sendall(b"GET " + raw + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
                      + server.token.encode() + b"\r\nConnection: close\r\n\r\n")
            reply = b"".join(iter(lambda: s.recv(65536), b""))
        status = int(reply.split(b" ", 2)[1])
        assert status in (404, 422), reply[:200]
        assert b"root:" not in reply and b"INFO" not in reply


def test_unknown_job_is_404_with_a_hint(api):
    response = api.get("/jobs/20261121-093512-4f2a9c")
    assert response.status_code == 404 and "GET /jobs" in response.json()["detail"]


def test_oversized_bodies_are_413(api):
    huge = json.dumps({**tiny_job(), "negative": "x" * (17 * 2**20)}).encode()
    response = api.post("/jobs", content=huge, headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and "MiB" in response.json()["detail"]

    def chunks():  # no Content-Length: the limit is counted as the body arrives
        for _ in range(17):
            yield b"x" * 2**20

    response = api.post("/jobs", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413


def test_release_models_when_idle(api, server):
    server.wait_health(lambda h: h["worker"] == "idle")
    assert api.post("/models/release").status_code == 200
    assert server.wait_health(lambda h: h["worker"] == "stopped")["worker"] == "stopped"


# --- starting the server ------------------------------------------------------------------------

def _serve(tmp_path, *args, env=None):
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config"), "XDG_DATA_HOME": str(tmp_path / "data"),
           **(env or {})}
    return subprocess.run([sys.executable, "-m", "dreamsculpt", "serve", *args], env=env, capture_output=True,
                          text=True, timeout=60)


def test_port_in_use_is_one_clear_line(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _serve(tmp_path, "--port", str(port))
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert f"Port {port}" in result.stderr and "--port" in result.stderr


def test_non_loopback_host_needs_allow_remote(tmp_path):
    result = _serve(tmp_path, "--host", "0.0.0.0", "--port", "0")
    assert result.returncode == 1 and "--allow-remote" in result.stderr
    assert "Traceback" not in result.stderr


def test_two_servers_cannot_share_a_data_folder(server, tmp_path):
    result = _serve(tmp_path, "--port", "0", "--data-dir", str(server.data_dir))
    assert result.returncode == 1 and "--data-dir" in result.stderr and "Another" in result.stderr


def test_folders_follow_xdg_and_data_dir_overrides(server, tmp_path):
    assert (server.root / "data" / "dreamsculpt" / "jobs").is_dir()
    assert (server.root / "data" / "dreamsculpt" / "server.log").is_file()
    other = ServerProcess(tmp_path, "--data-dir", str(tmp_path / "elsewhere")).start()
    try:
        assert (tmp_path / "elsewhere" / "jobs").is_dir()
        assert not (tmp_path / "data").exists()
    finally:
        other.stop()
