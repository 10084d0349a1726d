"""The add-on's Scene walk inside real Blender 5.0 (the bpy module), against a real server: the
built-in table room built in Blender, the camera animated into it, "Scene walk" from the
camera's render with the built-in prior -> a scene mesh in "Dreamsculpt Scenes" that lies
where the room's walls are (the same pixels of the camera see the wall on both), and the walk's
frames behind the camera in step with its animation. And the start frame's depth: Blender's Z
pass, measured to be view depth, sent in millimetres."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from blender_harness import requires_bpy, run_in_blender, script
from PIL import Image

import build_addon

pytestmark = [requires_bpy, pytest.mark.slow]   # Blender, and a real server

#: The path: 7 cameras, one every 2 timeline frames (1, 3, ..., 13), from (-2, -1.5, 1.5) looking
#: along heading 35 degrees (from +X towards +Y), 10 degrees down, each 0.12 m further along
#: its heading and turned 3 degrees to the right.
PATH_FRAMES, EVERY = 7, 2


@pytest.fixture(scope="module")
def addon_zip(tmp_path_factory) -> str:
    return str(build_addon.build(tmp_path_factory.mktemp("dist")))


@pytest.fixture(scope="module")
def room_json(tmp_path_factory) -> str:
    """The backend's table room (metres, Z up) as JSON: vertices, faces, colours (sRGB, 0-1)."""
    from dreamsculpt.scenes.rooms import ROOMS

    mesh = ROOMS["table room"].mesh()
    path = tmp_path_factory.mktemp("room") / "table_room.json"
    path.write_text(json.dumps({"vertices": mesh.vertices.tolist(), "faces": mesh.faces.tolist(),
                                "colours": mesh.colours.tolist()}))
    return str(path)


# The room as an object whose render is its vertex colours (unlit, Standard view transform),
# the camera animated along the path, Cycles with few samples.
ROOM_SCENE = '''
    import math
    from mathutils import Euler, Vector
    scene = bpy.context.scene
    for obj in list(bpy.data.objects):
        if obj.name != "Camera":
            bpy.data.objects.remove(obj)
    room_data = json.load(open({room!r}))
    mesh = bpy.data.meshes.new("Table room")
    mesh.from_pydata(room_data["vertices"], [], room_data["faces"])
    colours = mesh.color_attributes.new("Color", "FLOAT_COLOR", "POINT")
    colours.data.foreach_set("color_srgb", [v for c in room_data["colours"] for v in (*c, 1.0)])
    material = bpy.data.materials.new("Room")
    nodes, links = material.node_tree.nodes, material.node_tree.links
    nodes.clear()
    attribute, emission, output = (nodes.new("ShaderNodeVertexColor"), nodes.new("ShaderNodeEmission"),
                                   nodes.new("ShaderNodeOutputMaterial"))
    attribute.layer_name = "Color"
    links.new(attribute.outputs["Color"], emission.inputs["Color"])
    links.new(emission.outputs["Emission"], output.inputs["Surface"])
    mesh.materials.append(material)
    room = bpy.data.objects.new("Room", mesh)
    scene.collection.objects.link(room)

    scene.render.engine = "CYCLES"
    scene.cycles.samples = 4
    scene.view_settings.view_transform = "Standard"
    scene.render.resolution_x, scene.render.resolution_y = 640, 480
    camera = bpy.data.objects["Camera"]
    camera.data.lens = 24.0
    scene.frame_start, scene.frame_end = 1, 1 + ({frames} - 1) * {every}
    rotation = None
    for k in range({frames}):
        heading, pitch = math.radians(35.0 - 3.0 * k), math.radians(-10.0)
        forward = Vector((math.cos(pitch) * math.cos(heading), math.cos(pitch) * math.sin(heading),
                          math.sin(pitch)))
        camera.location = (-2.0 + 0.12 * k * math.cos(heading), -1.5 + 0.12 * k * math.sin(heading), 1.5)
        quaternion = forward.to_track_quat("-Z", "Y")
        rotation = quaternion.to_euler("XYZ", rotation) if rotation else quaternion.to_euler("XYZ")
        camera.rotation_euler = rotation
        camera.keyframe_insert("location", frame=1 + k * {every})
        camera.keyframe_insert("rotation_euler", frame=1 + k * {every})
    scene.frame_set(1)
'''

USE_SERVER = '''
    prefs = bpy.context.preferences.addons["bl_ext.user_default.dreamsculpt"].preferences
    prefs.backend_url = {url!r}
    s = bpy.context.scene.dreamsculpt
'''

# Which pixels of a camera (an n x m grid of rays through the pixel centres) first hit the
# wall plane x = 3 (the far wall): against one object at a time (Object.ray_cast casts against
# that object alone, so the other is as good as hidden).
WALL_MASK = '''
    def wall_mask(obj, camera, tolerance, n=64):
        scene = bpy.context.scene
        m = n * scene.render.resolution_y // scene.render.resolution_x
        top_right, bottom_right, bottom_left, top_left = (camera.matrix_world @ v
                                                          for v in camera.data.view_frame(scene=scene))
        origin = camera.matrix_world.translation
        inverse = obj.matrix_world.inverted()
        depsgraph = bpy.context.evaluated_depsgraph_get()
        mask = set()
        for j in range(m):
            for i in range(n):
                u, v = (i + 0.5) / n, (j + 0.5) / m
                target = top_left + (top_right - top_left) * u + (bottom_left - top_left) * v
                hit, location, _, _ = obj.ray_cast(inverse @ origin, inverse.to_3x3() @ (target - origin),
                                                   depsgraph=depsgraph)
                if hit and abs((obj.matrix_world @ location).x - 3.0) <= tolerance:
                    mask.add(j * n + i)
        return mask

    def iou(a, b):
        return len(a & b) / max(len(a | b), 1)
'''


def _server_env(server) -> dict:
    return {"XDG_CONFIG_HOME": str(server.root / "config")}


def test_scene_walk_from_the_camera_render_lines_up_with_the_room(addon_zip, room_json, server, tmp_path):
    """THE acceptance test: the camera's animation every 2 frames, started from its render (and
    Z pass), with the built-in prior -> a scene mesh with vertex colours in "Dreamsculpt Scenes"
    whose far wall is where the room's is, through the first and the last path camera (IoU of
    the wall's pixels >= 0.8); the frames as an image sequence behind the camera, frame k at the
    path's k-th frame; the scene's frame and render settings as they were."""
    out = run_in_blender(script(f'''
        install({addon_zip!r})
        timer, watchers = addon_module("timer"), addon_module("watchers")
    ''', ROOM_SCENE.format(room=room_json, frames=PATH_FRAMES, every=EVERY), USE_SERVER.format(url=server.url),
        WALL_MASK, f'''
        s.mode, s.prompt, s.prior, s.seed = "scene_walk", "a room with a red table", "builtin", 3
        s.walk_path, s.walk_every, s.walk_start, s.walk_resolution, s.capture_samples = "ANIMATION", {EVERY}, \\
            "RENDER", 128, 4
        scene.frame_set(4)
        scene.render.film_transparent = True
        render_settings = lambda: [scene.frame_current, scene.render.film_transparent, scene.render.use_compositing,
                                   scene.compositing_node_group, bpy.context.view_layer.use_pass_z,
                                   scene.render.resolution_x, scene.render.filepath,
                                   len(bpy.data.node_groups)]
        before = render_settings()
        t0 = time.monotonic()
        status = bpy.ops.dreamsculpt.generate(wait="NO")          # the timer follows it, as in the UI
        after_submit = render_settings()
        deadline = time.monotonic() + 240
        while watchers.WATCHERS and time.monotonic() < deadline:
            timer.tick()
            time.sleep(0.1)
        seconds = time.monotonic() - t0
        entry = s.history[0]
        scenes = bpy.data.collections.get("Dreamsculpt Scenes")
        walked = [o for o in scenes.objects] if scenes else []
        obj = walked[0]
        colours = obj.data.color_attributes.get("Color")
        values = [0.0] * (4 * len(colours.data))
        colours.data.foreach_get("color", values)
        nodes = obj.active_material.node_tree.nodes
        masks = {{}}
        for frame in (1, 1 + ({PATH_FRAMES} - 1) * {EVERY}):
            scene.frame_set(frame)
            room_wall, scene_wall = wall_mask(room, camera, 0.01), wall_mask(obj, camera, 0.05)
            masks[frame] = {{"iou": iou(room_wall, scene_wall), "room": len(room_wall), "scene": len(scene_wall)}}
        backgrounds = camera.data.background_images
        background = backgrounds[0] if len(backgrounds) else None
        image, user = background.image, background.image_user
        shown = {{}}
        for frame in range(1, 4 + ({PATH_FRAMES} - 1) * {EVERY}):
            scene.frame_set(frame)
            shown[frame] = user.frame_current
        folder = bpy.path.abspath(image.filepath).rsplit("/", 1)[0]
        result(status=list(status), seconds=seconds, before=[str(v) for v in before],
               after_submit=[str(v) for v in after_submit], error=s.last_error, masks=masks,
               objects=len(walked), name=obj.name, faces=len(obj.data.polygons),
               matrix=[list(r) for r in obj.matrix_world], props={{k: obj[k] for k in obj.keys()}},
               colour_range=[min(values), max(values)], colour_nodes=[n.type for n in nodes],
               layer=obj.data.color_attributes.active_color_name,
               background={{"count": len(backgrounds), "show": camera.data.show_background_images,
                           "source": image.source, "folder": folder, "start": user.frame_start,
                           "duration": user.frame_duration, "offset": user.frame_offset, "shown": shown,
                           "job": image.get("dreamsculpt_job_id")}},
               entry={{"status": entry.status, "job_id": entry.job_id, "source": entry.source,
                      "object": entry.object_name, "image": entry.image_path, "start": entry.frame_start,
                      "step": entry.frame_step, "request": json.loads(entry.request)}})
    '''), tmp_path, _server_env(server))
    print(f"scene walk: {out['seconds']:.1f} s, {out['faces']} faces; far-wall IoU " +
          ", ".join(f"frame {f}: {m['iou']:.3f} (room {m['room']} px, scene {m['scene']} px)"
                    for f, m in out["masks"].items()))
    assert out["status"] == ["FINISHED"] and out["error"] == ""
    assert out["after_submit"] == out["before"]                     # frame, film, compositor, Z pass: as they were
    entry = out["entry"]
    assert entry["status"] == "done" and entry["source"] == "Camera" and (entry["start"], entry["step"]) == (1, EVERY)
    request = entry["request"]
    assert len(request["cameras"]) == PATH_FRAMES and request["resolution"] == 128
    assert request["aspect"] == pytest.approx(4 / 3)                # the render's 128 x 96
    assert "image" not in request and entry["image"].endswith("-walk.png")

    # The scene mesh: in "Dreamsculpt Scenes", where the cameras were (no re-centring), coloured.
    assert out["objects"] == 1 and out["name"] == entry["object"] and out["faces"] > 1000
    assert out["matrix"] == [[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]]
    assert out["props"]["dreamsculpt_job_id"] == entry["job_id"]
    assert out["layer"] == "Color" and out["colour_range"][1] > out["colour_range"][0]
    assert "VERTEX_COLOR" in out["colour_nodes"]                    # a Color Attribute node shows them
    for frame, mask in out["masks"].items():
        assert mask["room"] > 300, frame                            # the far wall fills a good part of the view
        assert mask["iou"] >= 0.8, (frame, mask)

    # The frames: an image sequence behind the camera, walk frame k from timeline frame 1 + 2k.
    background = out["background"]
    assert background["count"] == 1 and background["show"] and background["source"] == "SEQUENCE"
    assert background["job"] == entry["job_id"]
    length = (PATH_FRAMES - 1) * EVERY + 1
    assert (background["start"], background["duration"], background["offset"]) == (1, length, 0)
    shown = {int(frame): n for frame, n in background["shown"].items()}
    assert [shown[frame] for frame in range(1, length + 1)] == list(range(1, length + 1))
    assert shown[length + 2] == length                              # held on the last frame
    folder = Path(background["folder"])
    with server.client() as api:
        record = api.get(f"/jobs/{entry['job_id']}/run.json").json()
        assert record["request"]["depth_image"] and record["request"]["image"]    # the render and its depth
        for k in range(PATH_FRAMES):
            frame = api.get(f"/jobs/{entry['job_id']}/frames/{k:04d}.png").content
            for n in range(k * EVERY + 1, min((k + 1) * EVERY, length) + 1):
                assert (folder / f"{n:04d}.png").read_bytes() == frame, (k, n)


# A plane 5 m in front of the camera, square to it, covering all but the frame's left edge; a
# small cube 2 m in front of it. Cycles, as the scene walk's test renders.
PLANE_SCENE = '''
    scene = bpy.context.scene
    for obj in list(bpy.data.objects):
        if obj.name != "Camera":
            bpy.data.objects.remove(obj)
    scene.render.engine = "CYCLES"
    scene.cycles.samples = 2
    scene.render.resolution_x, scene.render.resolution_y = 160, 120
    camera = bpy.data.objects["Camera"]
    camera.location, camera.rotation_euler = (0.0, 0.0, 0.0), (0.0, 0.0, 0.0)   # looking down -Z
    camera.data.lens = 20.0                       # 36 mm sensor: 4.5 m either side at 5 m
    bpy.ops.mesh.primitive_plane_add(size=10.0, location=(1.5, 0.0, -5.0))   # x from -3.5 to 6.5
    bpy.ops.mesh.primitive_cube_add(size=0.4, location=(0.0, 0.0, -2.0))     # its front face 1.8 m away
'''


def test_the_start_depth_is_view_depth_in_millimetres(addon_zip, tmp_path):
    """Blender 5's Z pass is view depth (along the camera's axis), not distance along the ray:
    a plane square to the camera reads 5000 mm at the centre and at the corners (where the ray
    is 5 * sqrt(1 + 0.9^2 + 0.675^2) = 7.53 m long). The world is 0; the render is opaque RGB;
    every setting the render touched is put back."""
    out = run_in_blender(script(f'''
        install({addon_zip!r})
        capture, walks = addon_module("capture"), addon_module("walks")
    ''', PLANE_SCENE, '''
        from pathlib import Path
        r = scene.render
        r.film_transparent, r.use_compositing = True, False
        settings = lambda: [r.film_transparent, r.use_compositing, str(scene.compositing_node_group),
                            bpy.context.view_layer.use_pass_z, r.resolution_x, r.filepath,
                            r.image_settings.color_mode, len(bpy.data.node_groups), len(bpy.data.images)]
        before = settings()
        path = Path("start.png").resolve()
        t0 = time.perf_counter()
        size = capture.render_with_depth(scene, path, longest=160, samples=2)
        seconds = time.perf_counter() - t0
        png = path.read_bytes()
        result(size=list(size), seconds=seconds, before=before, after=settings(), png=list(png[24:26]),
               depth=walks.depth_path(path).read_bytes().hex())
    '''), tmp_path)
    print(f"render with depth: {out['seconds']:.2f} s")
    assert out["after"] == out["before"] and "could not restore" not in out["_stdout"]
    assert out["size"] == [160, 120] and out["png"] == [8, 2]                 # 8-bit RGB: opaque
    depth = np.asarray(Image.open(io.BytesIO(bytes.fromhex(out["depth"]))), dtype=np.int64)
    assert depth.shape == (120, 160)
    # 160 px span 9 m at 5 m: the plane's edge (x = -3.5) is at column 160 / 9 = 17.8.
    assert (depth[:, :17] == 0).all()                                        # the world: no depth
    for row, col in ((0, 19), (0, 159), (119, 159), (119, 19), (60, 159)):   # the plane's corners
        assert depth[row, col] == pytest.approx(5000, abs=2), (row, col)
    plane, cube = depth[:, 19:] >= 4000, (depth > 0) & (depth < 2500)
    assert np.abs(depth[:, 19:][plane] - 5000).max() <= 2                   # all of the plane
    # The cube's face: 0.4 m at 1.8 m, 0.4 / 1.8 * 20 / 36 * 160 = 19.8 px wide.
    assert 300 < cube.sum() < 480 and np.abs(depth[cube] - 1800).max() <= 2


def test_preset_walks_run_again_and_import_again(addon_zip, room_json, server, tmp_path):
    """Preset moves (pan, 3 frames) in the room: one from the prompt alone (no image is sent;
    its frames play one a timeline frame from the scene's start), one from the camera's render.
    Run Again puts a walk's settings back and sends the same body, the render and its depth
    again; Import Again (Replace Previous) replaces the mesh and the camera's background. A path
    that cannot be walked is a report that says what to change, and nothing is sent."""
    out = run_in_blender(script(f'''
        install({addon_zip!r})
    ''', ROOM_SCENE.format(room=room_json, frames=2, every=1), USE_SERVER.format(url=server.url), '''
        s.mode, s.prompt, s.prior, s.seed = "scene_walk", "a room with a red table", "builtin", 5
        s.walk_path, s.walk_start, s.walk_resolution, s.capture_samples = "ANIMATION", "PROMPT", 64, 1
        errors = {}
        scene.frame_end = 1
        errors["one_frame"] = error_of(bpy.ops.dreamsculpt.generate)
        scene.frame_end = 2
        s.walk_path = "PRESET"
        camera.data.type = "ORTHO"
        errors["ortho"] = error_of(bpy.ops.dreamsculpt.generate)
        camera.data.type = "PERSP"
        refused = len(s.history)
        s.walk_motion, s.walk_frames, s.walk_step = "pan", 3, 5.0
        status = [bpy.ops.dreamsculpt.generate()]                  # headless: waits
        s.replace_previous = True
        status.append(bpy.ops.dreamsculpt.history_import(index=0, wait="YES"))
        s.walk_start = "RENDER"
        status.append(bpy.ops.dreamsculpt.generate())
        s.mode, s.walk_frames, s.walk_path, s.walk_start, s.walk_motion = "text_to_3d", 9, "ANIMATION", "PROMPT", \\
            "orbit"
        status.append(bpy.ops.dreamsculpt.history_rerun(index=1, new_seed=False))
        restored = [s.mode, s.walk_path, s.walk_motion, s.walk_frames, s.walk_step, s.walk_start]
        entries = [{"job_id": e.job_id, "status": e.status, "request": json.loads(e.request), "object": e.object_name,
                    "start": e.frame_start, "step": e.frame_step, "image": e.image_path} for e in s.history]
        backgrounds = camera.data.background_images
        user = backgrounds[0].image_user
        scenes = bpy.data.collections["Dreamsculpt Scenes"]
        result(errors=errors, refused=refused, status=[list(x) for x in status], restored=restored,
               entries=entries, objects=sorted(o.name for o in scenes.objects), backgrounds=len(backgrounds),
               sequence=[user.frame_start, user.frame_duration], job=backgrounds[0].image.get("dreamsculpt_job_id"))
    '''), tmp_path, _server_env(server))
    errors = out["errors"]
    assert "at least 2" in errors["one_frame"] and "Widen the frame range" in errors["one_frame"]
    assert "orthographic" in errors["ortho"] and out["refused"] == 0
    assert out["status"] == [["FINISHED"]] * 4
    assert out["restored"] == ["scene_walk", "PRESET", "pan", 3, 5.0, "RENDER"]
    prompt_only, rendered, again = out["entries"]
    assert all(e["status"] == "done" for e in out["entries"])
    request = prompt_only["request"]
    assert (request["motion"], request["frames"], request["step"]) == ("pan", 3, 5.0) and "cameras" not in request
    assert request["aspect"] == pytest.approx(4 / 3) and prompt_only["image"] == ""           # the prompt alone
    assert (prompt_only["start"], prompt_only["step"]) == (1, 1) and out["sequence"] == [1, 3]
    assert rendered["request"] == again["request"] and rendered["image"] == again["image"] != ""
    assert out["backgrounds"] == 1 and out["job"] == again["job_id"]      # the camera shows the latest walk
    # Import Again replaced the first walk's mesh: one object per walk.
    assert out["objects"] == sorted(e["object"] for e in out["entries"]) and len(set(out["objects"])) == 3
    with server.client() as api:
        records = [api.get(f"/jobs/{e['job_id']}/run.json").json()["request"] for e in out["entries"]]
    assert records[0]["image"] is None and records[0]["depth_image"] is None
    assert records[1]["image"] and records[1]["depth_image"]
    assert (records[2]["image"], records[2]["depth_image"]) == (records[1]["image"], records[1]["depth_image"])
