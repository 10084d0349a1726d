"""Image jobs through a real `dreamsculpt serve` process: uploads (POST /images), the checks on
image_to_3d and novel_views requests, and both kinds run, cancelled and failed with the
built-in prior at CI size (see server_harness.tiny_image_job)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import time

import numpy as np
import pytest
import trimesh
from PIL import Image
from server_harness import (
    camera_spec,
    reference_image,
    tiny_image_job,
    upload,
    wait_job,
)

pytestmark = pytest.mark.slow   # a real server process

UNKNOWN = "0" * 64


@pytest.fixture(scope="module")
def cube_png(tmp_path_factory) -> bytes:
    return reference_image(tmp_path_factory.mktemp("cube")).read_bytes()


@pytest.fixture(scope="module")
def image_id(server, cube_png) -> str:
    with server.client() as client:
        return upload_bytes(client, cube_png).json()["image"]


def upload_bytes(client, data: bytes, media_type: str = "image/png"):
    return client.post("/images", content=data, headers={"Content-Type": media_type})


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def object_share(image: Image.Image) -> float:
    """Share of the pixels that show the object: opaque ones, or (no alpha) ones not white."""
    pixels = np.asarray(image.convert("RGBA")).astype(int)
    if image.mode == "RGBA":
        return float((pixels[..., 3] > 127).mean())
    return float((pixels[..., :3].min(-1) < 230).mean())


def stored(server, image: str) -> Image.Image:
    path = server.data_dir / "images" / f"{image}.png"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == image   # the id is the PNG's hash
    return Image.open(path)


# --- uploads ----------------------------------------------------------------------------------------

def test_png_upload_keeps_its_alpha_and_the_same_picture_gets_the_same_id(api, server, cube_png):
    first = upload_bytes(api, cube_png)
    assert first.status_code == 201, first.text
    info = first.json()
    assert info["width"] == info["height"] == 64 and info["has_alpha"] is True
    with stored(server, info["image"]) as png:
        assert png.mode == "RGBA"
        assert np.array_equal(np.asarray(png), np.asarray(Image.open(io.BytesIO(cube_png)).convert("RGBA")))
    assert upload_bytes(api, cube_png).json() == info


def test_jpeg_and_webp_become_png(api, server, cube_png):
    rgba = Image.open(io.BytesIO(cube_png)).convert("RGBA")
    jpeg = upload_bytes(api, encode(rgba.convert("RGB"), "JPEG", quality=95), "image/jpeg").json()
    assert jpeg["has_alpha"] is False and stored(server, jpeg["image"]).mode == "RGB"
    webp = upload_bytes(api, encode(rgba, "WEBP", lossless=True), "image/webp").json()
    assert webp["has_alpha"] is True and stored(server, webp["image"]).mode == "RGBA"
    # A phone photo stored sideways: the EXIF orientation is applied (6: rotate 90 degrees).
    wide = Image.new("RGB", (80, 40), "white")
    exif = Image.Exif()
    exif[0x0112] = 6
    turned = upload_bytes(api, encode(wide, "JPEG", exif=exif), "image/jpeg; charset=binary").json()
    assert (turned["width"], turned["height"]) == (40, 80)


def test_an_opaque_alpha_channel_is_no_mask(api, server):
    info = upload_bytes(api, encode(Image.new("RGBA", (48, 48), (200, 10, 10, 255)), "PNG")).json()
    assert info["has_alpha"] is False and stored(server, info["image"]).mode == "RGB"


def test_upload_needs_the_token(server, cube_png):
    with server.client(token=None) as client:
        response = upload_bytes(client, cube_png)
    assert response.status_code == 401 and "dreamsculpt token" in response.json()["detail"]


@pytest.mark.parametrize("case", ["garbage", "empty", "truncated", "gif", "too small", "too large", "too tall"])
def test_unusable_uploads_are_422_saying_why(api, cube_png, case):
    body, words = {
        "garbage": (b"not an image at all", ["not a PNG, JPEG or WebP image"]),
        "empty": (b"", ["not a PNG, JPEG or WebP image"]),
        "truncated": (cube_png[: len(cube_png) // 2], ["truncated or corrupt"]),
        "gif": (encode(Image.new("RGB", (64, 64)), "GIF"), ["not a PNG, JPEG or WebP image"]),
        "too small": (encode(Image.new("RGB", (31, 64)), "PNG"), ["31x64", "between 32 and 4096"]),
        "too large": (encode(Image.new("L", (4097, 32)), "PNG"), ["4097x32", "between 32 and 4096"]),
        "too tall": (encode(Image.new("L", (40, 5000)), "PNG"), ["40x5000", "between 32 and 4096"]),
    }[case]
    response = upload_bytes(api, body)
    assert response.status_code == 422, response.text
    for word in words:
        assert word in response.json()["message"], response.json()


@pytest.mark.parametrize("media_type", ["text/plain", "image/gif", "application/json", "multipart/form-data", None])
def test_other_content_types_are_415_naming_the_accepted_ones(api, cube_png, media_type):
    headers = {"Content-Type": media_type} if media_type else {}
    response = api.post("/images", content=cube_png, headers=headers)
    assert response.status_code == 415
    assert "image/png, image/jpeg, image/webp" in response.json()["detail"]


def test_an_upload_over_the_body_limit_is_413(api):
    response = upload_bytes(api, b"\x89PNG\r\n\x1a\n" + b"\0" * (17 * 2**20))
    assert response.status_code == 413 and "MiB" in response.json()["detail"]


def test_only_accepted_uploads_were_stored(server):
    for path in (server.data_dir / "images").iterdir():   # each a PNG named by its hash: no refused upload
        assert path.suffix == ".png"
        with stored(server, path.stem) as image:
            assert image.format == "PNG"


# --- requests ---------------------------------------------------------------------------------------

IDENTITY = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
INVALID = [
    ("image", "image_to_3d", {"image": UNKNOWN}, "upload it first with POST /images"),
    ("image", "novel_views", {"image": "not-a-sha"}, "pattern"),
    ("camera.matrix_world", "image_to_3d", {"camera": {"matrix_world": IDENTITY[:3], "lens": 50}}, "at least 4"),
    ("camera.matrix_world", "novel_views", {"camera": {"matrix_world": [[0.0] * 4] * 3 + [IDENTITY[3]]}},
     "zero scale"),
    ("camera.matrix_world", "image_to_3d", {"camera": {"matrix_world": [[-1.0, 0, 0, 0], *IDENTITY[1:]]}},
     "mirrored"),
    ("camera.matrix_world", "image_to_3d", {"camera": {"matrix_world": [*IDENTITY[:3], [0, 0, 1.0, 1.0]]}},
     "last row"),
    ("camera.lens", "image_to_3d", {"camera": {"matrix_world": IDENTITY, "lens": 0}}, "greater than 0"),
    ("camera.sensor_fit", "novel_views", {"camera": {"matrix_world": IDENTITY, "sensor_fit": "FILL"}}, "AUTO"),
    ("camera.shift_x", "novel_views", {"camera": {"matrix_world": IDENTITY, "shift_x": 11}}, "less than"),
    ("depth", "image_to_3d", {"depth": 0}, "greater than 0"),
    ("fov_deg", "image_to_3d", {"fov_deg": 170}, "less than 170"),
    ("elevation_deg", "novel_views", {"elevation_deg": 90}, "less than or equal to 89"),
    ("views.1.elevation_deg", "novel_views", {"views": [{"azimuth_deg": 30}, {"azimuth_deg": 60, "elevation_deg": 95}]},
     "89"),
    ("views.0.azimuth_deg", "novel_views", {"views": [{"azimuth_deg": 361}]}, "360"),
    ("views", "novel_views", {"views": [{"azimuth_deg": 5.0 * i} for i in range(64)]}, "at most 63"),
    ("views", "novel_views", {"views": []}, "at least 1"),
    ("count", "novel_views", {"count": 1}, "greater than or equal to 2"),
    ("count", "novel_views", {"count": 65}, "less than or equal to 64"),
    ("neighbours", "novel_views", {"neighbours": 0}, "greater than or equal to 1"),
    ("steps", "novel_views", {"steps": 0}, "greater than or equal to 1"),
    ("text_weight", "image_to_3d", {"text_weight": 0.5}, "needs a prompt"),
    ("text_weight", "image_to_3d", {"text_weight": -1, "prompt": "a red cube"}, "greater than or equal to 0"),
    ("prior", "image_to_3d", {"prior": "sd"}, "zero123"),
    ("variant", "novel_views", {"variant": "zero456"}, "stable_zero123"),
    ("model", "novel_views", {"model": "a\nb"}, "control characters"),
    ("prompt", "image_to_3d", {"prompt": "a\x00cube"}, "control characters"),
    ("mesh.resolution", "image_to_3d", {"mesh": {"resolution": 8}}, "greater than or equal to 32"),
    ("count", "image_to_3d", {"count": 4}, "Extra inputs"),             # a novel_views field
    ("preset", "novel_views", {"preset": "preview"}, "Extra inputs"),    # an image_to_3d field
    ("references", "image_to_3d", {"references": "/tmp"}, "Extra inputs"),
]


@pytest.mark.parametrize("field,kind,change,words", INVALID, ids=[f"{k}-{f}-{i}" for i, (f, k, _, _) in
                                                                  enumerate(INVALID)])
def test_invalid_image_jobs_get_422_naming_the_field(api, image_id, field, kind, change, words):
    body = {**tiny_image_job(kind, image_id), **change}
    response = api.post("/jobs", json=body)
    assert response.status_code == 422, response.text
    message = response.json()["message"]
    assert message.startswith(f"{field}: ") or f"; {field}: " in message, message
    assert words in message, message


def test_non_finite_camera_numbers_are_422(api, image_id):
    body = json.dumps(tiny_image_job("image_to_3d", image_id, camera={"matrix_world": IDENTITY, "lens": 50}))
    for bad in ("NaN", "Infinity", "1e999"):
        raw = body.replace('"lens": 50', f'"lens": {bad}').replace("[0.0, 1.0, 0.0, 0.0]", f"[0.0, 1.0, 0.0, {bad}]")
        response = api.post("/jobs", content=raw, headers={"Content-Type": "application/json"})
        assert response.status_code == 422, (bad, response.text)
        message = response.json()["message"]
        assert "camera.matrix_world.1.3: " in message and "camera.lens: " in message, message


@pytest.mark.parametrize("body,words", [({"image": UNKNOWN}, "kind: is missing"),
                                        ({"kind": "image_to_4d", "image": UNKNOWN}, "kind: 'image_to_4d' is unknown"),
                                        ({"kind": None}, "kind: ")])
def test_a_missing_or_unknown_kind_names_the_kinds(api, body, words):
    response = api.post("/jobs", json=body)
    assert response.status_code == 422
    message = response.json()["message"]
    assert words in message and "'text_to_3d', 'image_to_3d', 'novel_views'" in message, message


def test_nothing_invalid_was_queued(api):
    assert api.get("/jobs").json()["jobs"] == []


# --- running ------------------------------------------------------------------------------------------

def test_image_to_3d_runs_and_says_where_its_mesh_goes(api, server, image_id, cube_png):
    submitted = api.post("/jobs", json=tiny_image_job("image_to_3d", image_id))
    assert submitted.status_code == 201, submitted.text
    job = submitted.json()
    assert job["kind"] == "image_to_3d" and job["total"] == 60 and job["request"]["image"] == image_id
    folder = server.data_dir / "jobs" / job["id"]
    assert hashlib.sha256((folder / "input.png").read_bytes()).hexdigest() == image_id
    job = wait_job(api, job["id"], timeout=180)
    assert job["status"] == "done", job["error"]
    assert job["step"] == job["total"] == 60
    result = job["result"]
    assert result["faces"] > 100 and result["vertices"] > 50 and result["views"] is None
    assert {"result.ply", "result.glb", "views.png", "turntable.gif", "run.json", "input.png",
            "reference.png"} <= set(result["files"])
    assert not any(name.startswith("view_") for name in result["files"])

    ply = api.get(f"/jobs/{job['id']}/result.ply")
    mesh = trimesh.load(io.BytesIO(ply.content), file_type="ply")
    assert len(mesh.faces) == result["faces"]
    assert np.abs(mesh.vertices).max() <= 1.0 + 1e-3          # written in the canonical frame
    colours = mesh.vertex_attributes["color"][:, :3].astype(float)
    assert (colours[:, 0] > colours[:, 1] + 30).mean() > 0.5   # a red cube is red
    run = api.get(f"/jobs/{job['id']}/run.json").json()
    assert run["kind"] == "image_to_3d" and run["steps"] == 60
    placement = np.array(run["placement"])
    assert placement.shape == (4, 4) and np.allclose(placement[3], [0, 0, 0, 1])
    with Image.open(io.BytesIO(api.get(f"/jobs/{job['id']}/reference.png").content)) as reference:
        assert reference.mode == "RGBA" and reference.size[0] == reference.size[1]
    assert hashlib.sha256(api.get(f"/jobs/{job['id']}/input.png").content).hexdigest() == image_id
    assert api.get(f"/jobs/{job['id']}/views.json").status_code == 404


def test_novel_views_come_back_as_images_with_their_cameras(api, image_id):
    job = api.post("/jobs", json=tiny_image_job("novel_views", image_id)).json()
    assert job["total"] == (4 - 1) * 5      # denoising steps of the three views made
    job = wait_job(api, job["id"], timeout=120)
    assert job["status"] == "done", job["error"]
    result = job["result"]
    assert result["views"] == 4 and result["vertices"] is None and result["faces"] is None
    names = [f"view_{i:02d}.png" for i in range(4)]
    assert {*names, "views.json", "novel_views.png", "reference.png", "input.png", "run.json"} <= set(result["files"])
    views = api.get(f"/jobs/{job['id']}/views.json").json()
    assert [v["file"] for v in views["views"]] == names
    assert [round(v["azimuth_deg"] - views["views"][0]["azimuth_deg"]) for v in views["views"]] == [0, 90, 180, 270]
    assert np.array(views["placement"]).shape == (4, 4)
    for view in views["views"]:
        assert np.array(view["matrix_world"]).shape == (4, 4)
        response = api.get(f"/jobs/{job['id']}/{view['file']}")
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        with Image.open(io.BytesIO(response.content)) as image:
            assert image.size[0] == image.size[1] >= 64
            assert 0.02 < object_share(image) < 0.9
    missing = api.get(f"/jobs/{job['id']}/view_04.png")
    assert missing.status_code == 404 and "no view_04.png" in missing.json()["detail"]
    assert api.get(f"/jobs/{job['id']}/view_4.png").status_code in (404, 422)
    assert api.get(f"/jobs/{job['id']}/novel_views.png").headers["content-type"] == "image/png"


def test_given_views_from_a_blender_camera(api, image_id):
    """The scene moved by (1, 2, 0.5): the camera that took the picture says where the object is."""
    spec = camera_spec(offset=(1.0, 2.0, 0.5))
    depth = spec.pop("depth")
    offsets = [{"azimuth_deg": 45.0, "elevation_deg": 10.0}, {"azimuth_deg": -45.0}]
    body = tiny_image_job("novel_views", image_id, views=offsets, count=8, camera=spec, depth=depth)
    del body["elevation_deg"]
    job = api.post("/jobs", json=body).json()
    assert job["total"] == 2 * 5            # the views given, not count
    job = wait_job(api, job["id"], timeout=120)
    assert job["status"] == "done", job["error"]
    assert job["result"]["views"] == 3
    record = api.get(f"/jobs/{job['id']}/views.json").json()
    views, reference = record["views"], record["views"][0]
    assert [(round(v["azimuth_deg"] - reference["azimuth_deg"]), round(v["elevation_deg"] - reference["elevation_deg"]))
            for v in views] == [(0, 0), (45, 10), (-45, 0)]
    # view_00 is seen from where the real camera stood, and the placement puts the object's
    # centre where it was (the cube's silhouette centre is a little below its middle).
    assert np.allclose(np.array(reference["matrix_world"])[:3, 3], np.array(spec["matrix_world"])[:3, 3], atol=1e-3)
    assert np.allclose(np.array(record["placement"])[:3, 3], [1.0, 2.0, 0.5], atol=0.15)


def test_image_jobs_can_be_cancelled(api, tmp_path):
    image = upload(api, reference_image(tmp_path, "sphere"))
    running = api.post("/jobs", json=tiny_image_job("image_to_3d", image, steps=5000)).json()
    queued = api.post("/jobs", json=tiny_image_job("novel_views", image)).json()
    wait_job(api, running["id"], until=lambda j: j["step"] >= 3, timeout=120)
    assert api.post(f"/jobs/{queued['id']}/cancel").json()["status"] == "cancelled"
    asked = api.post(f"/jobs/{running['id']}/cancel")
    assert asked.status_code == 200
    cancelled = wait_job(api, running["id"], timeout=30)
    assert cancelled["status"] == "cancelled" and cancelled["step"] <= asked.json()["step"] + 2
    assert api.get("/health").json()["running"] is None


def test_an_image_without_an_object_fails_saying_why(api):
    empty = upload_bytes(api, encode(Image.new("RGBA", (64, 64), (0, 0, 0, 0)), "PNG")).json()
    assert empty["has_alpha"] is True
    job = wait_job(api, api.post("/jobs", json=tiny_image_job("novel_views", empty["image"])).json()["id"])
    assert job["status"] == "failed" and "No object found" in job["error"]


def test_old_uploads_are_pruned_when_the_server_starts(server, image_id):
    images = server.data_dir / "images"
    old = images / f"{'a' * 64}.png"
    old.write_bytes(b"an upload from last month")
    week_ago = time.time() - 8 * 24 * 3600
    os.utime(old, (week_ago, week_ago))
    server.stop()
    server.start()
    assert not old.exists()
    assert (images / f"{image_id}.png").is_file()
    assert "deleted 1 uploaded image(s) older than a week" in server.stderr()
