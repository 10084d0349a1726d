"""The add-on's modules that have no bpy (client, plymesh, jobs, backend_process), tested
without Blender, against a real `dreamsculpt serve` where they talk to one."""

from __future__ import annotations

import importlib.util
import io
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import trimesh
from server_harness import tiny_job

ADDON = Path(__file__).resolve().parent.parent / "blender_addon"
BPY_FREE = ("client", "plymesh", "jobs", "backend_process")


def _load(name: str):
    """Import blender_addon.<name> without running the package's __init__ (which needs bpy)."""
    if "addon" not in sys.modules:
        package = types.ModuleType("addon")
        package.__path__ = [str(ADDON)]
        sys.modules["addon"] = package
    return importlib.import_module(f"addon.{name}")


client_mod, plymesh, jobs = _load("client"), _load("plymesh"), _load("jobs")
backend_process = _load("backend_process")


def test_these_modules_import_without_bpy():
    code = ("import sys, types; sys.modules['bpy'] = None; pkg = types.ModuleType('addon'); "
            f"pkg.__path__ = [{str(ADDON)!r}]; sys.modules['addon'] = pkg; "
            + "; ".join(f"import addon.{name}" for name in BPY_FREE))
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("url,loopback", [("http://127.0.0.1:7323", True), ("http://localhost:1", True),
                                          ("http://[::1]:7323", True), ("http://127.9.9.9", True),
                                          ("http://192.168.1.2:7323", False), ("http://example.com", False),
                                          ("http://127.0.0.1.example.com", False), ("not a url", False)])
def test_loopback_urls(url, loopback):
    assert client_mod.is_loopback_url(url) is loopback


def test_local_token_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert client_mod.local_token_path() == tmp_path / "dreamsculpt" / "token"
    assert client_mod.read_local_token() == ""
    (tmp_path / "dreamsculpt").mkdir()
    (tmp_path / "dreamsculpt" / "token").write_text("abc\n")
    assert client_mod.read_local_token() == "abc"


def test_the_token_path_is_the_servers(server):
    """The add-on's stdlib rule finds the file `dreamsculpt serve` wrote (platformdirs)."""
    code = ("import platformdirs; print(platformdirs.user_config_dir('dreamsculpt', appauthor=False))")
    expected = subprocess.run([sys.executable, "-c", code], env=server.env, capture_output=True, text=True,
                              check=True).stdout.strip()
    assert Path(expected) / "token" == server.root / "config" / "dreamsculpt" / "token"


def _client(server, token=None):
    return client_mod.Client(server.url, server.token if token is None else token)


def test_backend_states(server):
    version = server.wait_health(lambda h: True)["version"]
    assert _client(server).state(version).kind == "connected"
    assert _client(server, "wrong-token-0123456789").state(version).kind == "wrong_token"
    mismatch = _client(server).state("99.0.0")
    assert mismatch.kind == "version_mismatch" and "pip install" in mismatch.message
    down = client_mod.Client("http://127.0.0.1:9", "x").state(version)
    assert down.kind == "not_running" and "dreamsculpt serve" in down.message


def test_submit_errors_say_what_is_wrong(server):
    with pytest.raises(client_mod.Rejected) as rejected:
        _client(server).submit({**tiny_job(), "prompt": ""})
    assert rejected.value.status == 422 and "prompt" in str(rejected.value)
    with pytest.raises(client_mod.WrongToken, match="dreamsculpt token"):
        _client(server, "nope-nope-nope-nope").submit(tiny_job())
    with pytest.raises(client_mod.BackendDown, match="Start backend"):
        client_mod.Client("http://127.0.0.1:9", "x").submit(tiny_job())


def test_watcher_follows_a_job_to_a_parsed_mesh_and_preview(server, tmp_path):
    client = _client(server)
    job = client.submit(tiny_job(steps=60))
    snaps = []
    snap = jobs.JobWatcher(client, job["id"], tmp_path, poll_s=0.05).run_blocking(snaps.append)
    assert snap.finished and snap.error == "" and snap.status == "done"
    assert Path(snap.preview_path).is_file() and snap.preview_version >= 1
    assert any(s.status == "running" for s in snaps)
    reference = trimesh.load(io.BytesIO(client.download(job["id"], "result.ply")), file_type="ply", process=False)
    mesh = snap.mesh
    assert mesh.vertex_count == len(reference.vertices) and mesh.face_count == len(reference.faces)
    np.testing.assert_allclose(np.array(mesh.positions).reshape(-1, 3), reference.vertices, atol=1e-6)
    np.testing.assert_array_equal(np.array(mesh.triangles).reshape(-1, 3), reference.faces)
    np.testing.assert_allclose(np.array(mesh.colors).reshape(-1, 4), reference.visual.vertex_colors / 255.0, atol=1e-6)


def test_watcher_reports_a_failed_job(server, tmp_path):
    client = _client(server)
    job = client.submit(tiny_job("a dragon"))
    snap = jobs.JobWatcher(client, job["id"], tmp_path, poll_s=0.05).run_blocking()
    assert snap.finished and snap.mesh is None and "No built-in shape matches" in snap.error


def test_ascii_ply_and_bad_files(tmp_path):
    box = trimesh.creation.box()
    box.visual.vertex_colors = [255, 0, 0, 255]
    ascii_ply = box.export(file_type="ply", encoding="ascii")
    mesh = plymesh.read_ply(ascii_ply)
    assert mesh.vertex_count == 8 and mesh.face_count == 12 and mesh.colors[:4].tolist() == [1.0, 0.0, 0.0, 1.0]
    binary = plymesh.read_ply(box.export(file_type="ply"))
    assert binary.triangles.tolist() == mesh.triangles.tolist()
    with pytest.raises(plymesh.PlyError):
        plymesh.read_ply(b"not a ply at all")


def test_backend_command_needs_a_real_python_and_a_local_url(tmp_path):
    assert backend_process.command(sys.executable, "http://127.0.0.1:8123") == [
        sys.executable, "-m", "dreamsculpt", "serve", "--port", "8123"]
    with pytest.raises(client_mod.BackendError, match="does not exist"):
        backend_process.command(str(tmp_path / "python"), "http://127.0.0.1:7323")
    with pytest.raises(client_mod.BackendError, match="loopback"):
        backend_process.command(sys.executable, "http://10.0.0.2:7323")


def test_start_and_stop_a_backend(tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    url = f"http://127.0.0.1:{port}"
    backend_process.start(sys.executable, url, tmp_path / "backend.log")
    try:
        client = client_mod.Client(url, "")
        import time

        deadline = time.monotonic() + 60
        while client.state("0.1.0").kind == "not_running" and time.monotonic() < deadline:
            assert backend_process.running(), (tmp_path / "backend.log").read_text()
            time.sleep(0.2)
        assert client_mod.Client(url, client_mod.read_local_token()).state(client.health()["version"]).connected
    finally:
        backend_process.stop()
    assert not backend_process.running()
    assert "serving on" in (tmp_path / "backend.log").read_text()
