"""The add-on's image modes inside real Blender 5.0 (the bpy module), against a real server:
"Camera image -> 3D" lines the result up with what the camera saw (silhouette IoU through
that camera), novel views come back as packed images and image planes, the capture leaves the
scene's render settings as they were, and every way to get it wrong is a report that says what
to do."""

from __future__ import annotations

import math

import pytest
from blender_harness import requires_bpy, run_in_blender, script

import build_addon

pytestmark = [requires_bpy, pytest.mark.slow]   # Blender, and a real server


@pytest.fixture(scope="module")
def addon_zip(tmp_path_factory) -> str:
    return str(build_addon.build(tmp_path_factory.mktemp("dist")))


def _server_env(server) -> dict:
    return {"XDG_CONFIG_HOME": str(server.root / "config")}


# A 2 m cube away from the origin, seen from an oblique camera that looks at it; Cycles with
# few samples (EEVEE compiles shaders for ~40 s without a GPU).
CUBE_SCENE = '''
    from mathutils import Matrix, Vector
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.samples = 4
    scene.render.resolution_x, scene.render.resolution_y = 640, 480
    cube = bpy.data.objects["Cube"]
    cube.location = (1.5, 0.5, 1.0)
    camera = bpy.data.objects["Camera"]
    camera.location = (6.0, -5.0, 4.0)
    camera.rotation_euler = (cube.location - camera.location).to_track_quat("-Z", "Y").to_euler()
    bpy.context.view_layer.update()
'''

USE_SERVER = '''
    prefs = bpy.context.preferences.addons["bl_ext.user_default.dreamsculpt"].preferences
    prefs.backend_url = {url!r}
    s = bpy.context.scene.dreamsculpt
'''

# Silhouettes measured by projection: every triangle of a mesh through the camera
# (world_to_camera_view), filled into an N x N grid of pixel centres in pure Python.
SILHOUETTE = '''
    from bpy_extras.object_utils import world_to_camera_view

    def silhouette(obj, camera, n=128):
        scene = bpy.context.scene
        mesh = obj.evaluated_get(bpy.context.evaluated_depsgraph_get()).to_mesh()
        mesh.calc_loop_triangles()
        world = obj.matrix_world
        points = [world_to_camera_view(scene, camera, world @ v.co) for v in mesh.vertices]
        filled = set()
        for tri in mesh.loop_triangles:
            (ax, ay, _), (bx, by, _), (cx, cy, _) = (points[i] for i in tri.vertices)
            area = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
            if abs(area) < 1e-12:
                continue
            x0, x1 = max(0, int(min(ax, bx, cx) * n)), min(n - 1, int(max(ax, bx, cx) * n))
            y0, y1 = max(0, int(min(ay, by, cy) * n)), min(n - 1, int(max(ay, by, cy) * n))
            for j in range(y0, y1 + 1):
                py = (j + 0.5) / n
                for i in range(x0, x1 + 1):
                    px = (i + 0.5) / n
                    w0 = ((bx - px) * (cy - py) - (by - py) * (cx - px)) / area
                    w1 = ((cx - px) * (ay - py) - (cy - py) * (ax - px)) / area
                    if w0 >= 0 and w1 >= 0 and w0 + w1 <= 1:
                        filled.add(j * n + i)
        obj.evaluated_get(bpy.context.evaluated_depsgraph_get()).to_mesh_clear()
        return filled

    def iou(a, b):
        return len(a & b) / max(len(a | b), 1)
'''


def test_camera_image_to_3d_lines_up_with_what_the_camera_saw(addon_zip, server, tmp_path):
    """THE acceptance test: a cube away from the origin and an oblique camera (vertical sensor
    fit, shifted lens) -> "Camera image -> 3D" with the built-in prior -> an object whose
    silhouette through that camera is the cube's (IoU >= 0.8), and only because it is placed."""
    out = run_in_blender(script(f'''
        install({addon_zip!r})
    ''', CUBE_SCENE, USE_SERVER.format(url=server.url), SILHOUETTE, '''
        camera.data.sensor_fit, camera.data.shift_x, camera.data.shift_y = "VERTICAL", 0.08, -0.05   # off-centre
        s.mode, s.image_source, s.image_prior, s.preset, s.seed = "image_to_3d", "CAMERA", "builtin", "preview", 1
        s.steps, s.mesh_resolution, s.capture_size = 250, 64, 256
        objects_before = sorted(o.name for o in bpy.data.objects)
        t0 = time.monotonic()
        status = bpy.ops.dreamsculpt.generate()          # background: waits for the job
        seconds = time.monotonic() - t0
        new = [o for o in bpy.data.objects if o.name not in objects_before]
        obj = new[0]
        cube_mask, result_mask = silhouette(cube, camera), silhouette(obj, camera)
        placed = obj.matrix_world.copy()
        obj.matrix_world = Matrix.Identity(4)              # control: the same mesh, not placed
        unplaced = iou(cube_mask, silhouette(obj, camera))
        obj.matrix_world = placed
        entry = s.history[0]
        s.replace_previous = True
        again = bpy.ops.dreamsculpt.history_import(index=0, wait="NO")   # Import Again, through the timer
        timer, watchers, deadline = addon_module("timer"), addon_module("watchers"), time.monotonic() + 60
        while watchers.WATCHERS and time.monotonic() < deadline:
            timer.tick()
            time.sleep(0.05)
        twin = bpy.data.objects[entry.object_name]
        result(status=list(status), count=len(new), iou=iou(cube_mask, result_mask), cube_pixels=len(cube_mask),
               result_pixels=len(result_mask), seconds=seconds, unplaced=unplaced, again=list(again),
               objects=len([o for o in bpy.data.objects if o.get("dreamsculpt_job_id")]),
               same_place=max(abs(a - b) for ra, rb in zip(twin.matrix_world, placed) for a, b in zip(ra, rb)),
               collection=[c.name for c in twin.users_collection],
               props={k: twin[k] for k in twin.keys() if k.startswith("dreamsculpt")},
               entry={"mode": entry.mode, "source": entry.source, "status": entry.status, "job_id": entry.job_id,
                      "object": entry.object_name, "image": entry.image_path,
                      "request": json.loads(entry.request)})
    '''), tmp_path, _server_env(server))
    print(f"silhouette IoU through the camera: {out['iou']:.3f} (cube {out['cube_pixels']} px, "
          f"result {out['result_pixels']} px, {out['seconds']:.1f} s)")
    assert out["status"] == ["FINISHED"] and out["count"] == 1
    assert out["iou"] >= 0.8
    assert out["unplaced"] < 0.3                                       # the placement is what lines it up
    assert out["again"] == ["FINISHED"] and out["objects"] == 1 and out["same_place"] < 1e-5
    assert out["collection"] == ["Dreamsculpt"]
    entry = out["entry"]
    assert entry["mode"] == "image_to_3d" and entry["source"] == "Camera" and entry["status"] == "done"
    assert entry["object"] and not entry["job_id"].startswith("local-")
    camera = entry["request"]["camera"]
    assert entry["image"].endswith(".png") and camera["lens"] == 50.0 and camera["sensor_fit"] == "VERTICAL"
    assert (camera["shift_x"], camera["shift_y"]) == (pytest.approx(0.08), pytest.approx(-0.05))
    assert entry["request"]["depth"] == pytest.approx(((6 - 1.5) ** 2 + 5.5 ** 2 + 3 ** 2) ** 0.5, rel=1e-4)
    assert out["props"]["dreamsculpt_job_id"] == entry["job_id"] and out["props"]["dreamsculpt_source"] == "Camera"


def test_novel_views_come_back_as_packed_images_and_image_planes(addon_zip, server, tmp_path):
    """Through the timer (the job is uploaded and submitted on a thread): 4 views, packed, and
    4 planes where the views' cameras stand, facing the object, the size of the frustum there.
    Then the same picture as a picked file: no camera is sent, the orbit fields are."""
    out = run_in_blender(script(f'''
        install({addon_zip!r})
        timer, watchers = addon_module("timer"), addon_module("watchers")
    ''', CUBE_SCENE, USE_SERVER.format(url=server.url), '''
        s.mode, s.image_source, s.image_prior, s.seed = "novel_views", "CAMERA", "builtin", 2
        s.view_count, s.steps, s.view_planes, s.capture_size = 4, 4, True, 256
        bpy.ops.ed.undo_push(message="before Dreamsculpt")
        status = bpy.ops.dreamsculpt.generate(wait="NO")
        keys, deadline = [s.job_id], time.monotonic() + 120
        while watchers.WATCHERS and time.monotonic() < deadline:
            timer.tick()
            keys.append(s.job_id)
            time.sleep(0.05)
        entry = s.history[0]
        images = [i for i in bpy.data.images if i.get("dreamsculpt_job_id")]
        collection = bpy.data.collections.get("Dreamsculpt Views")
        planes = sorted(collection.objects, key=lambda o: o.name) if collection else []
        view_images = sorted((i for i in images if "view_" in i.name), key=lambda i: i.name)
        checks = []
        for plane, image in zip(planes, view_images):
            m = plane.matrix_world
            location, normal = m.translation, m.to_3x3().col[2].normalized()
            outward = (location - cube.location).normalized()
            corners = [m @ v.co for v in plane.data.vertices]
            side = (corners[1] - corners[0]).length
            nodes = plane.active_material.node_tree.nodes
            texture = next(n for n in nodes if n.type == "TEX_IMAGE")
            checks.append({"facing": normal.dot(outward), "side": side, "location": list(location),
                           "file": image.name.rsplit(" ", 1)[-1] + ".png", "image": texture.image.name == image.name,
                           "blended": plane.active_material.surface_render_method})
        first = {"images": len(images), "packed": all(i.packed_file is not None for i in images),
                 "sizes": sorted({tuple(i.size) for i in view_images}), "planes": len(planes), "checks": checks,
                 "status": entry.status, "mode": entry.mode, "job_id": entry.job_id, "keys": keys[:2],
                 "error": s.last_error, "request": json.loads(entry.request)}
        capture_path = entry.image_path
        bpy.ops.ed.undo()                                  # undo gives new Blender data: fetch it again
        views = bpy.data.collections.get("Dreamsculpt Views")
        first["after_undo"] = len(views.objects) if views else 0

        s = bpy.context.scene.dreamsculpt
        s.image_source, s.image_path, s.view_count, s.view_planes = "FILE", capture_path, 2, False
        status_file = bpy.ops.dreamsculpt.generate()      # headless: waits
        second = s.history[-1]
        file_run = {"status": second.status, "request": json.loads(second.request), "source": second.source,
                    "images": len([i for i in bpy.data.images if i.get("dreamsculpt_job_id") == second.job_id])}
        s.mode = "text_to_3d"
        rerun = bpy.ops.dreamsculpt.history_rerun(index=len(s.history) - 1, new_seed=True)   # same image, new seed
        third = s.history[-1]
        again = {"status": third.status, "request": json.loads(third.request), "image": third.image_path,
                 "mode": s.mode, "source": s.image_source, "path": s.image_path}
        result(first=first, status=list(status), status_file=list(status_file), file_run=file_run,
               rerun=list(rerun), again=again, capture_path=capture_path)
    '''), tmp_path, _server_env(server))
    first = out["first"]
    assert out["status"] == ["FINISHED"] and first["status"] == "done" and first["mode"] == "novel_views"
    assert first["keys"][0].startswith("local-") and not first["job_id"].startswith("local-")   # the thread's id
    assert first["images"] == 5 and first["packed"]                # 4 views and the contact sheet
    assert len(first["sizes"]) == 1 and first["planes"] == 4
    with server.client() as api:
        record = api.get(f"/jobs/{first['job_id']}/views.json").json()
    centre = [row[3] for row in record["placement"][:3]]
    views = {view["file"]: view for view in record["views"]}
    assert sorted(check["file"] for check in first["checks"]) == sorted(views)
    for check in first["checks"]:
        view = views[check["file"]]
        camera = [row[3] for row in view["matrix_world"][:3]]
        assert check["location"] == pytest.approx(camera, abs=1e-4)       # where the view's camera stands
        assert check["facing"] > 0.99 and check["image"] and check["blended"] == "BLENDED"
        d = math.dist(camera, centre)
        assert check["side"] == pytest.approx(2 * d * math.tan(math.radians(view["fov_deg"]) / 2), rel=1e-4)
    assert first["request"]["count"] == 4 and first["request"]["steps"] == 4 and "camera" in first["request"]
    assert first["after_undo"] == 0
    file_run = out["file_run"]
    assert out["status_file"] == ["FINISHED"] and file_run["status"] == "done" and file_run["images"] == 3
    assert "camera" not in file_run["request"] and file_run["request"]["azimuth_deg"] == -90.0   # the orbit fields
    assert file_run["source"].endswith(".png")
    again = out["again"]
    assert out["rerun"] == ["FINISHED"] and again["status"] == "done" and again["image"] == out["capture_path"]
    assert again["request"] == {**file_run["request"], "seed": again["request"]["seed"]}
    assert again["request"]["seed"] != file_run["request"]["seed"]
    assert (again["mode"], again["source"], again["path"]) == ("novel_views", "FILE", out["capture_path"])


def test_capture_renders_the_camera_and_puts_the_render_settings_back(addon_zip, tmp_path):
    """The capture: a PNG (RGBA, 8 bit) at the scene's aspect, longer side capped, whose alpha
    is the cube; the camera's spec; the depth of the cube (not of an image plane in view); and
    every render setting as it was."""
    out = run_in_blender(script(f'''
        install({addon_zip!r})
        capture, cameras = addon_module("capture"), addon_module("cameras")
    ''', CUBE_SCENE, '''
        import struct
        from pathlib import Path
        r = scene.render
        r.resolution_percentage, r.pixel_aspect_x, r.use_compositing, r.use_stamp = 50, 2.0, True, True
        r.image_settings.media_type = "VIDEO"                # FFMPEG: no PNG until the media type is IMAGE
        r.filepath = "//renders/frame_"
        camera.data.shift_x, camera.data.sensor_fit = 0.1, "HORIZONTAL"
        plane = bpy.data.objects.new("Dreamsculpt x view_00", bpy.data.meshes.new("p"))   # an earlier view plane
        plane.data.from_pydata([(-1, -1, 0), (1, -1, 0), (1, 1, 0), (-1, 1, 0)], [], [(0, 1, 2, 3)])
        views = bpy.data.collections.new("Dreamsculpt Views")
        scene.collection.children.link(views)
        views.objects.link(plane)
        plane.location = (3.0, -2.0, 2.0)                   # between the camera and the cube
        bpy.context.view_layer.update()

        def settings():
            i = r.image_settings
            return [r.resolution_x, r.resolution_y, r.resolution_percentage, r.pixel_aspect_x, r.pixel_aspect_y,
                    r.film_transparent, r.filepath, r.use_compositing, r.use_stamp, i.media_type, i.file_format,
                    i.color_mode, i.color_depth, scene.cycles.samples, r.engine, plane.hide_render]

        before = settings()
        path = Path("capture.png").resolve()
        t0 = time.perf_counter()
        spec, depth = capture.capture(scene, path, longest=200, samples=2)
        seconds = time.perf_counter() - t0
        data = path.read_bytes()
        width, height, bits, colour_type = struct.unpack(">IIBB", data[16:26])
        image = bpy.data.images.load(str(path))
        alpha = list(image.pixels)[3::4]
        result(before=before, after=settings(), spec=spec.to_json(), depth=depth, seconds=seconds,
               png=[width, height, bits, colour_type], opaque=sum(a > 0.5 for a in alpha) / len(alpha),
               corner=alpha[0], matrix=[list(row) for row in camera.matrix_world],
               cube_distance=(cube.location - camera.location).length)
    '''), tmp_path)
    assert out["after"] == out["before"] and "FFMPEG" in out["before"]
    assert "could not restore" not in out["_stdout"]
    # 640x480 at 50 % with pixels twice as wide: 640x240 of square pixels, capped at 200 px
    assert out["png"] == [200, 75, 8, 6]                                 # 8-bit RGBA
    assert 0.05 < out["opaque"] < 0.6 and out["corner"] == 0.0          # the cube, on a transparent film
    spec = out["spec"]
    assert spec["matrix_world"] == out["matrix"] and spec["lens"] == 50.0
    assert (spec["sensor_fit"], spec["shift_x"], spec["shift_y"]) == ("HORIZONTAL", pytest.approx(0.1), 0.0)
    assert out["depth"] == pytest.approx(out["cube_distance"], rel=1e-5)   # the cube's centre, not the plane's


def test_image_mode_errors_are_reports_that_say_what_to_do(addon_zip, server, tmp_path):
    out = run_in_blender(script(f'''
        install({addon_zip!r})
    ''', CUBE_SCENE, USE_SERVER.format(url=server.url), '''
        s.mode, s.image_prior, s.preset, s.steps, s.mesh_resolution = "image_to_3d", "builtin", "preview", 20, 32
        errors = {}
        s.image_source = "FILE"
        s.image_path = str(__import__("pathlib").Path("notes.txt").resolve())
        open(s.image_path, "w").write("not a picture")
        errors["not_an_image"] = error_of(bpy.ops.dreamsculpt.generate)
        s.image_path = "/nowhere/picture.png"
        errors["missing"] = error_of(bpy.ops.dreamsculpt.generate)
        s.image_source = "CAMERA"
        camera.data.type = "ORTHO"
        errors["ortho"] = error_of(bpy.ops.dreamsculpt.generate)
        camera.data.type = "PANO"
        errors["pano"] = error_of(bpy.ops.dreamsculpt.generate)
        camera.data.type = "PERSP"
        scene.camera = None
        errors["no_camera"] = error_of(bpy.ops.dreamsculpt.generate)
        unchanged = len(s.history) == 0 and not s.last_error
        scene.camera = camera
        bpy.data.objects.remove(cube)                        # nothing in view
        errors["empty"] = error_of(bpy.ops.dreamsculpt.generate)
        entry = s.history[0]
        result(errors=errors, unchanged=unchanged, status=entry.status, entry_error=entry.error,
               request=json.loads(entry.request), objects=sorted(o.name for o in bpy.data.objects))
    '''), tmp_path, _server_env(server))
    errors = out["errors"]
    assert "not a PNG, JPEG or WebP" in errors["not_an_image"] and "Pick" in errors["not_an_image"]
    assert "cannot be read" in errors["missing"] and "Pick another" in errors["missing"]
    assert "orthographic" in errors["ortho"] and "Perspective" in errors["ortho"]
    assert "panoramic" in errors["pano"]
    assert "no active camera" in errors["no_camera"] and "Set Active Object as Camera" in errors["no_camera"]
    assert out["unchanged"]                                # refused before anything was sent
    assert "No object found" in errors["empty"] and out["status"] == "failed"
    assert "No object found" in out["entry_error"]
    assert "depth" not in out["request"] and out["objects"] == ["Camera", "Light"]
