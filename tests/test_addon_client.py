"""The add-on's modules that have no bpy (client, plymesh, jobs, backend_process, watchers), tested
without Blender, against a real `dreamsculpt serve` where they talk to one (those tests, and
the one that starts a backend, are marked slow)."""

from __future__ import annotations

import io
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import trimesh
from addon_modules import ADDON
from addon_modules import load as _load
from asset_fixture import (
    CUBE_FACES,
    FACE_UVS,
    FolderClient,
    cube,
    ply_bytes,
    write_result,
)
from server_harness import tiny_job

BPY_FREE = ("client", "plymesh", "jobs", "backend_process", "cameras", "job_requests", "watchers")




client_mod, plymesh, jobs = _load("client"), _load("plymesh"), _load("jobs")
backend_process, cameras, watchers = _load("backend_process"), _load("cameras"), _load("watchers")


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


def test_backend_urls_are_http_or_https_and_plain_http_to_another_machine_is_flagged():
    for good in ("http://127.0.0.1:7323", "https://render.studio.lan:7323", "https://[::1]:8443/"):
        assert client_mod.url_problem(good) == "", good
    for bad in ("render.studio.lan:7323", "ftp://127.0.0.1", "https://", "http://127.0.0.1:port"):
        assert "http://" in client_mod.url_problem(bad), bad
    with pytest.raises(client_mod.BackendError, match="must start with http:// .* or https://"):
        client_mod.Client("127.0.0.1:7323").health()           # before any connection is tried
    assert client_mod.clear_text_remote("http://192.168.1.2:7323")
    assert not client_mod.clear_text_remote("https://192.168.1.2:7323")
    assert not client_mod.clear_text_remote("http://127.0.0.1:7323")


def test_local_token_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert client_mod.local_token_path() == tmp_path / "dreamsculpt" / "token"
    assert client_mod.read_local_token() == ""
    (tmp_path / "dreamsculpt").mkdir()
    (tmp_path / "dreamsculpt" / "token").write_text("abc\n")
    assert client_mod.read_local_token() == "abc"


@pytest.mark.slow
def test_the_token_path_is_the_servers(server):
    """The add-on's stdlib rule finds the file `dreamsculpt serve` wrote (platformdirs)."""
    code = ("import platformdirs; print(platformdirs.user_config_dir('dreamsculpt', appauthor=False))")
    expected = subprocess.run([sys.executable, "-c", code], env=server.env, capture_output=True, text=True,
                              check=True).stdout.strip()
    assert Path(expected) / "token" == server.root / "config" / "dreamsculpt" / "token"


def _client(server, token=None):
    return client_mod.Client(server.url, server.token if token is None else token)


@pytest.mark.slow
def test_backend_states(server):
    version = server.wait_health(lambda h: True)["version"]
    assert _client(server).state(version).kind == "connected"
    assert _client(server, "wrong-token-0123456789").state(version).kind == "wrong_token"
    mismatch = _client(server).state("99.0.0")
    assert mismatch.kind == "version_mismatch" and "pip install" in mismatch.message
    down = client_mod.Client("http://127.0.0.1:9", "x").state(version)
    assert down.kind == "not_running" and "dreamsculpt serve" in down.message


def test_the_backend_monitor_says_why_it_cannot_connect():
    def no_client():
        raise client_mod.BackendError("Online access is off.")

    offline = watchers.BackendMonitor(no_client, lambda: "0.1.0")
    offline.refresh()                       # no client: no thread, the state at once
    assert offline.state.kind == "offline" and offline.dirty and "Online access" in offline.state.message
    down = watchers.BackendMonitor(lambda: client_mod.Client("http://127.0.0.1:9", "x"), lambda: "0.1.0")
    assert down.check_now().kind == "not_running" and down.state.kind == "not_running"


@pytest.mark.slow
def test_submit_errors_say_what_is_wrong(server):
    with pytest.raises(client_mod.Rejected) as rejected:
        _client(server).submit({**tiny_job(), "prompt": ""})
    assert rejected.value.status == 422 and "prompt" in str(rejected.value)
    with pytest.raises(client_mod.WrongToken, match="dreamsculpt token"):
        _client(server, "nope-nope-nope-nope").submit(tiny_job())
    with pytest.raises(client_mod.BackendDown, match="Start backend"):
        client_mod.Client("http://127.0.0.1:9", "x").submit(tiny_job())


@pytest.mark.slow
def test_watcher_follows_a_job_to_a_parsed_mesh_and_preview(server, tmp_path):
    client = _client(server)
    job = client.submit(tiny_job(steps=60))
    snaps = []
    snap = jobs.JobWatcher(client, job["id"], tmp_path, poll_s=0.05).run_blocking(snaps.append)
    assert snap.finished and snap.error == "" and snap.status == "done"
    assert Path(snap.preview_path).is_file() and snap.preview_version >= 1
    assert any(s.status == "running" for s in snaps)
    reference = trimesh.load(io.BytesIO(client.download(job["id"], "result.ply")), file_type="ply", process=False)
    # trimesh splits vertices at UV seams; the add-on keeps the file's welded vertices: compare
    # with the elements as stored.
    vertex, face = (reference.metadata["_ply_raw"][name]["data"] for name in ("vertex", "face"))
    mesh = snap.mesh
    assert mesh.vertex_count == len(vertex) and mesh.face_count == len(face) == len(reference.faces)
    np.testing.assert_allclose(np.array(mesh.positions).reshape(-1, 3),
                               np.stack([vertex["x"], vertex["y"], vertex["z"]], 1), atol=1e-6)
    np.testing.assert_array_equal(np.array(mesh.triangles).reshape(-1, 3), face["vertex_indices"]["f1"])
    np.testing.assert_allclose(np.array(mesh.uvs).reshape(-1, 6), face["texcoord"]["f1"], atol=1e-6)
    colours = np.stack([vertex[c] for c in ("red", "green", "blue", "alpha")], 1) / 255.0
    np.testing.assert_allclose(np.array(mesh.colors).reshape(-1, 4), colours, atol=1e-6)


@pytest.mark.slow
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


def test_corner_uvs_are_read_in_face_order_next_to_normals_and_colours():
    """The backend's layout: normals between positions and colours, and after each face's
    indices its texcoord list (u, v of its three corners)."""
    uvs = [0.01 * k for k in range(6 * len(CUBE_FACES))]     # each corner's own values
    mesh = plymesh.read_ply(ply_bytes(cube(2.0), CUBE_FACES, uvs=uvs))
    assert mesh.vertex_count == 8 and mesh.face_count == 12
    assert mesh.triangles.tolist() == [i for face in CUBE_FACES for i in face]
    assert mesh.uvs.tolist() == pytest.approx(uvs) and mesh.uvs.typecode == "f"
    assert mesh.positions[:6].tolist() == [-1.0, -1.0, 0.0, 1.0, -1.0, 0.0]   # x, y, z (not the normals)
    assert mesh.colors[:4].tolist() == pytest.approx([200 / 255, 20 / 255, 20 / 255, 1.0])
    old = plymesh.read_ply(ply_bytes(cube(), CUBE_FACES, normals=False))   # a PLY from before UVs
    assert old.face_count == 12 and len(old.uvs) == 0 and old.triangles.tolist() == mesh.triangles.tolist()


def test_ascii_ply_with_texcoord_and_bad_texcoord():
    faces = "3 0 1 2 6 0 0 1 0 0 1\n3 0 2 3 6 0 0 0 1 1 1\n"
    header = ("ply\nformat ascii 1.0\nelement vertex 4\nproperty float x\nproperty float y\nproperty float z\n"
              "element face 2\nproperty list uchar int vertex_indices\nproperty list uchar float texcoord\n"
              "end_header\n")
    mesh = plymesh.read_ply((header + "0 0 0\n1 0 0\n0 1 0\n1 1 0\n" + faces).encode())
    assert mesh.triangles.tolist() == [0, 1, 2, 0, 2, 3] and mesh.uvs.tolist() == [0, 0, 1, 0, 0, 1, 0, 0, 0, 1, 1, 1]
    one_face = ply_bytes(cube(), CUBE_FACES[:1], uvs=list(FACE_UVS))   # ends: count byte, 6 floats
    with pytest.raises(plymesh.PlyError, match="texcoord must have 6"):
        plymesh.read_ply(one_face[:-25] + b"\x04" + one_face[-24:-8])     # 4 values: 2 corners
    with pytest.raises(plymesh.PlyError, match="shorter than its header"):
        plymesh.read_ply(ply_bytes(cube(), CUBE_FACES, uvs=list(FACE_UVS) * 12)[:-10])


def test_watcher_downloads_the_textures_run_json_names(tmp_path):
    served = write_result(tmp_path / "job", normal_map=True)
    snap = jobs.JobWatcher(FolderClient(served, client_mod.Rejected), "j1", tmp_path).run_blocking()
    assert snap.error == "" and snap.note == "" and snap.mesh.face_count == 12 and len(snap.mesh.uvs) == 72
    textures = snap.textures
    assert Path(textures.base_color).read_bytes() == (served / "texture.png").read_bytes()
    assert Path(textures.normal).read_bytes() == (served / "normal.png").read_bytes()
    assert Path(textures.base_color).parent == Path(textures.folder) != served


def test_an_older_server_or_a_missing_texture_leaves_vertex_colours(tmp_path):
    older = write_result(tmp_path / "older", texture=False)
    snap = jobs.JobWatcher(FolderClient(older, client_mod.Rejected), "j2", tmp_path).run_blocking()
    assert snap.error == "" and snap.note == "" and snap.textures is None and snap.mesh.face_count == 12
    lost = write_result(tmp_path / "lost", normal_map=True)
    (lost / "normal.png").unlink()
    snap = jobs.JobWatcher(FolderClient(lost, client_mod.Rejected), "j3", tmp_path).run_blocking()
    assert snap.textures.normal == "" and Path(snap.textures.base_color).is_file()
    assert snap.note.startswith("normal.png could not be downloaded") and "imported without it" in snap.note
    (lost / "texture.png").unlink()
    snap = jobs.JobWatcher(FolderClient(lost, client_mod.Rejected), "j4", tmp_path).run_blocking()
    assert snap.textures is None and snap.mesh is not None and "shows its vertex colours" in snap.note


def test_backend_command_needs_a_real_python_and_a_local_url(tmp_path):
    assert backend_process.command(sys.executable, "http://127.0.0.1:8123") == [
        sys.executable, "-m", "dreamsculpt", "serve", "--port", "8123"]
    with pytest.raises(client_mod.BackendError, match="does not exist"):
        backend_process.command(str(tmp_path / "python"), "http://127.0.0.1:7323")
    with pytest.raises(client_mod.BackendError, match="loopback"):
        backend_process.command(sys.executable, "http://10.0.0.2:7323")
    with pytest.raises(client_mod.BackendError, match="plain http backend"):   # it would have no certificate
        backend_process.command(sys.executable, "https://127.0.0.1:7323")


@pytest.mark.slow
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
        deadline = time.monotonic() + 60
        while client.state("0.1.0").kind == "not_running" and time.monotonic() < deadline:
            assert backend_process.running(), (tmp_path / "backend.log").read_text()
            time.sleep(0.2)
        assert client_mod.Client(url, client_mod.read_local_token()).state(client.health()["version"]).connected
    finally:
        backend_process.stop()
    assert not backend_process.running()
    assert "serving on" in (tmp_path / "backend.log").read_text()


# --- image modes ------------------------------------------------------------------------------

def _png(size: int = 128, shape: str = "sphere") -> bytes:
    """A built-in shape seen from the front (az -90, el 0, fov 40), RGBA on a transparent film."""
    import torch
    from dreamsculpt.cameras import Cameras
    from dreamsculpt.shapes.tracing import render_shape
    from PIL import Image

    cams = Cameras.from_orbit(torch.tensor([-90.0]), torch.tensor([0.0]), torch.tensor([3.0]), torch.tensor([40.0]))
    rgba = render_shape(shape, cams, size).rgba("red")[0]
    buffer = io.BytesIO()
    Image.fromarray((rgba.permute(1, 2, 0) * 255).round().byte().numpy()).save(buffer, format="PNG")
    return buffer.getvalue()


def test_image_types_are_told_by_their_signature():
    assert client_mod.image_type(b"\x89PNG\r\n\x1a\n....") == "image/png"
    assert client_mod.image_type(b"\xff\xd8\xff\xe0") == "image/jpeg"
    assert client_mod.image_type(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "image/webp"
    assert client_mod.image_type(b"GIF89a") is None and client_mod.image_type(b"") is None


@pytest.mark.slow
def test_upload_image_stores_it_and_refusals_say_why(server):
    client = _client(server)
    data = _png()
    info = client.upload_image(data)
    assert info["width"] == info["height"] == 128 and info["has_alpha"] is True
    assert len(info["image"]) == 64 and client.upload_image(data)["image"] == info["image"]   # by content
    with pytest.raises(client_mod.BackendError, match="not a PNG, JPEG or WebP"):
        client.upload_image(b"plain text, not a picture")            # refused before it is sent
    from PIL import Image

    tiny = io.BytesIO()
    Image.new("RGBA", (8, 8)).save(tiny, format="PNG")
    with pytest.raises(client_mod.Rejected) as rejected:
        client.upload_image(tiny.getvalue())
    assert rejected.value.status == 422 and "8x8" in str(rejected.value)
    with pytest.raises(client_mod.WrongToken):
        _client(server, "nope-nope-nope-nope").upload_image(data)
    with pytest.raises(client_mod.BackendDown, match="Start backend"):
        client_mod.Client("http://127.0.0.1:9", "x").upload_image(data)


@pytest.mark.slow
def test_watcher_uploads_submits_and_fetches_novel_views(server, tmp_path):
    """The image path: upload and submit on the watcher's thread, then views.json and each view."""
    client = _client(server)
    path = tmp_path / "sphere.png"
    path.write_bytes(_png())
    body = {"kind": "novel_views", "prior": "builtin", "count": 3, "steps": 2, "seed": 1}
    watcher = jobs.JobWatcher(client, "", tmp_path, poll_s=0.05, kind="novel_views",
                              submit=jobs.upload_and_submit(client, str(path), body))
    assert watcher.snapshot().status == "uploading"
    snap = watcher.run_blocking()
    assert snap.error == "" and snap.status == "done" and len(snap.job_id) == 22
    views = snap.views
    assert [Path(v["path"]).name for v in views.views] == ["view_00.png", "view_01.png", "view_02.png"]
    assert all(Path(v["path"]).read_bytes().startswith(b"\x89PNG") for v in views.views)
    assert Path(views.sheet).is_file() and cameras.is_matrix(views.placement)
    assert all(cameras.is_matrix(v["matrix_world"]) for v in views.views)


@pytest.mark.slow
def test_watcher_reports_an_image_it_cannot_read_or_send(server, tmp_path):
    client = _client(server)
    body = {"kind": "novel_views", "prior": "builtin"}
    missing = jobs.JobWatcher(client, "", tmp_path, submit=jobs.upload_and_submit(client, str(tmp_path / "x.png"),
                                                                                 body)).run_blocking()
    assert missing.finished and "could not be read" in missing.error and missing.job_id == ""
    (tmp_path / "x.txt").write_text("text")
    text = jobs.JobWatcher(client, "", tmp_path, submit=jobs.upload_and_submit(client, str(tmp_path / "x.txt"),
                                                                              body)).run_blocking()
    assert text.finished and "not a PNG, JPEG or WebP" in text.error


def test_a_camera_spec_is_what_the_backend_reads():
    matrix = [[1, 0, 0, 2], [0, 0, -1, -8], [0, 1, 0, 1], [0, 0, 0, 1]]   # Blender's Front view, from y = -8
    spec = cameras.CameraSpec(matrix, lens=35.0, sensor_fit="VERTICAL", shift_y=0.25)
    assert spec.location == (2.0, -8.0, 1.0)
    assert spec.to_json() == {"matrix_world": [[float(v) for v in row] for row in matrix], "lens": 35.0,
                              "sensor_width": 36.0, "sensor_height": 24.0, "sensor_fit": "VERTICAL",
                              "shift_x": 0.0, "shift_y": 0.25}
    with pytest.raises(ValueError, match="4x4"):
        cameras.CameraSpec([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    with pytest.raises(ValueError, match="sensor_fit"):
        cameras.CameraSpec(matrix, sensor_fit="DIAGONAL")


@pytest.mark.parametrize("args,size", [((1920, 1080, 100, 1.0, 1.0, 512), (512, 288)),
                                       ((400, 300, 50, 1.0, 1.0, 512), (200, 150)),       # small: not enlarged
                                       ((1080, 1920, 100, 1.0, 1.0, 256), (144, 256)),
                                       ((640, 480, 50, 2.0, 1.0, 200), (200, 75))])       # 640x240 square px
def test_capture_size_keeps_the_scene_aspect_and_caps_the_longer_side(args, size):
    assert cameras.capture_size(*args) == size


def test_depth_is_the_distance_to_the_centre_of_the_visible_box():
    # a 2 m cube centred on (1.5, 0.5, 1): its 8 corners; camera at (6, -5, 4)
    corners = [(1.5 + x, 0.5 + y, 1.0 + z) for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)]
    assert cameras.box_centre(corners) == (1.5, 0.5, 1.0)
    assert cameras.depth((6.0, -5.0, 4.0), corners) == pytest.approx(math.sqrt(4.5**2 + 5.5**2 + 3**2))
    # two boxes: the centre of their union, not the mean of their centres
    assert cameras.box_centre(corners + [(10.0, 0.5, 1.0)]) == (5.25, 0.5, 1.0)
    assert cameras.depth((0, 0, 0), []) is None


def test_a_view_plane_hangs_where_its_camera_stands_sized_to_the_frustum():
    # camera at (0, -4, 0) looking at the origin along +Y (Blender's Front view), scaled x2
    matrix = [[2, 0, 0, 0], [0, 0, -2, -4], [0, 2, 0, 0], [0, 0, 0, 1]]
    placed, side = cameras.view_plane(matrix, (0.0, 0.0, 0.0), 40.0)
    assert side == pytest.approx(2 * 4 * math.tan(math.radians(20)))       # 2.912
    assert [row[3] for row in placed[:3]] == [0.0, -4.0, 0.0]
    normal = [placed[i][2] for i in range(3)]                               # the plane's +Z: away from the object
    assert normal == [0.0, -1.0, 0.0]
    assert [placed[i][0] for i in range(3)] == [1.0, 0.0, 0.0] and placed[3] == [0.0, 0.0, 0.0, 1.0]


@pytest.mark.slow
def test_cancel_while_the_image_is_still_uploading_cancels_the_job_once_it_exists(server, tmp_path):
    import threading

    client, release = _client(server), threading.Event()
    path = tmp_path / "sphere.png"
    path.write_bytes(_png())
    send = jobs.upload_and_submit(client, str(path), {"kind": "novel_views", "prior": "builtin", "count": 8,
                                                      "steps": 1000})

    def slow_submit():
        release.wait(10)        # the upload is "slow": Cancel is pressed before the job has an id
        return send()

    watcher = jobs.JobWatcher(client, "", tmp_path, poll_s=0.05, submit=slow_submit).start()
    watcher.request_cancel()
    release.set()
    deadline = time.monotonic() + 60
    while not watcher.snapshot().finished and time.monotonic() < deadline:
        time.sleep(0.05)
    snap = watcher.snapshot()
    assert snap.job_id and snap.status == "cancelled" and snap.views is None and snap.error == ""
