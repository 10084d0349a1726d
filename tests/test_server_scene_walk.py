"""Scene walks through a real `dreamsculpt serve`: the start frame and its depth uploaded, the
cameras inline, the frames served one by one, and a server killed mid-walk that goes on from
its last finished frame."""

from __future__ import annotations

import io
import json
import signal
import sys
import time

import pytest
from PIL import Image
from server_harness import ServerProcess, upload, wait_job

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="kills the server's process")]


@pytest.fixture(scope="module")
def walk(tmp_path_factory) -> dict:
    """A 12-frame path into the table room and its start frame and depth on disk."""
    from dreamsculpt.scenes.frames import save_depth, save_rgb
    from dreamsculpt.scenes.rooms import ROOMS
    from dreamsculpt.scenes.scene_mesh import render_mesh
    from test_scene_walk import FOCAL, W, walk_path

    folder = tmp_path_factory.mktemp("walk")
    path = walk_path(12)
    first = render_mesh(ROOMS["table room"].mesh(), path[0])
    save_rgb(first.rgb[0], folder / "start.png")
    save_depth(first.depth[0], folder / "start_depth.png")
    cameras = [{"matrix_world": c.c2w[0].tolist(), "lens": FOCAL / W * 36.0} for c in path]
    return {"folder": folder, "cameras": cameras}


def submit(api, walk) -> dict:
    image = upload(api, walk["folder"] / "start.png")
    response = api.post("/images?depth=true", content=(walk["folder"] / "start_depth.png").read_bytes(),
                        headers={"Content-Type": "image/png"})
    assert response.status_code == 201, response.text
    job = {"kind": "scene_walk", "prompt": "a room with a red table", "prior": "builtin",
           "cameras": walk["cameras"], "image": image, "depth_image": response.json()["image"]}
    response = api.post("/jobs", json=job)
    assert response.status_code == 201, response.text
    return response.json()


def test_a_walk_killed_mid_way_goes_on_from_its_last_frame(tmp_path, walk):
    server = ServerProcess(tmp_path).start()
    try:
        with server.client() as api:
            job = submit(api, walk)
            assert job["total"] == 12
            running = wait_job(api, job["id"], until=lambda j: j["step"] >= 5, timeout=300)
            assert running["stage"] in ("inpainting", "depth", "fusing")
            preview = api.get(f"/jobs/{job['id']}/preview.png")
            assert preview.status_code == 200 and Image.open(io.BytesIO(preview.content)).size == (128, 96)
        server.kill(signal.SIGKILL)
        time.sleep(1.0)
        server.start()
        with server.client() as api:
            done = wait_job(api, job["id"], timeout=300)
            assert done["status"] == "done" and done["step"] == 12
            assert done["resumed_from"] is not None and done["resumed_from"] >= 3   # not from the start
            for k in (0, 11):
                frame = api.get(f"/jobs/{job['id']}/frames/{k:04d}.png")
                assert frame.status_code == 200 and Image.open(io.BytesIO(frame.content)).size == (128, 96)
                depth = api.get(f"/jobs/{job['id']}/depth/{k:04d}.png")
                assert Image.open(io.BytesIO(depth.content)).mode.startswith("I")
            assert api.get(f"/jobs/{job['id']}/frames/0012.png").status_code == 404
            assert api.get(f"/jobs/{job['id']}/scene.ply").status_code == 200
            assert len(api.get(f"/jobs/{job['id']}/cameras.json").json()) == 12
            record = api.get(f"/jobs/{job['id']}/run.json").json()
            assert [f["frame"] for f in record["per_frame"]] == list(range(12))   # each frame once
            assert {"scene.glb", "scene.ply", "cameras.json"} <= set(done["result"]["files"])
    finally:
        server.stop()


def test_a_bad_walk_is_refused_before_it_is_queued(tmp_path, walk):
    server = ServerProcess(tmp_path).start()
    try:
        with server.client() as api:
            one = api.post("/jobs", json={"kind": "scene_walk", "prompt": "a room", "prior": "builtin",
                                          "cameras": walk["cameras"][:1]})
            assert one.status_code == 422 and "at least 2" in json.dumps(one.json())
            rgb = api.post("/images?depth=true", content=(walk["folder"] / "start.png").read_bytes(),
                           headers={"Content-Type": "image/png"})
            assert rgb.status_code == 422 and "16-bit" in rgb.json()["detail"]
    finally:
        server.stop()
