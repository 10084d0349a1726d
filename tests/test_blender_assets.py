"""A mesh result as a UV-textured asset inside real Blender 5.0 (the bpy module): through the
add-on's own import path (the job thread's downloads, then results.finish), the object gets a
UV map and a material of its own with its textures packed, stands on the 3D cursor with the
backend's "bottom" origin, and renders in the texture's colours; the "Vertex Colours Only"
preference and an older server (no texture) give the colour-attribute material.

The result comes from tests/asset_fixture.py (a folder laid out as the server serves a job);
IMPORT_JOB and DESCRIBE take any client with job() and download(), so the same assertions can
be pointed at a real job through client.Client."""

from __future__ import annotations

from pathlib import Path

import pytest
from asset_fixture import write_result
from blender_harness import requires_bpy, run_in_blender, script

import build_addon

pytestmark = [requires_bpy, pytest.mark.slow]   # Blender

TESTS = str(Path(__file__).resolve().parent)


@pytest.fixture(scope="module")
def addon_zip(tmp_path_factory) -> str:
    return str(build_addon.build(tmp_path_factory.mktemp("dist")))


# import_job(client, job_id): the add-on's path for a finished job (download and parse on a
# JobWatcher, then results.finish into the scene); returns the new object, the report and the
# snapshot. describe(obj): what a user would look at.
IMPORT_JOB = '''
    import os
    sys.path.insert(0, {tests!r})
    from asset_fixture import FolderClient
    jobs, results, client_mod = addon_module("jobs"), addon_module("results"), addon_module("client")
    prefs = bpy.context.preferences.addons["bl_ext.user_default.dreamsculpt"].preferences

    def import_job(client, job_id):
        before = set(bpy.data.objects)
        snap = jobs.JobWatcher(client, job_id, bpy.app.tempdir).run_blocking()
        level, message = results.finish(bpy.context, bpy.context.scene, job_id, snap)
        new = [o for o in bpy.data.objects if o not in before]
        assert len(new) == 1, (level, message, snap.error)
        return new[0], message, snap

    def socket_source(socket):
        return socket.links[0].from_node if socket.is_linked else None

    def describe(obj):
        mesh, material = obj.data, obj.data.materials[0]
        bsdf = next(n for n in material.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
        base, normal_map = socket_source(bsdf.inputs["Base Color"]), socket_source(bsdf.inputs["Normal"])
        normal = socket_source(normal_map.inputs["Color"]) if normal_map else None
        image = lambda node: {{"packed": node.image.packed_file is not None, "size": list(node.image.size),
                               "colorspace": node.image.colorspace_settings.name}}
        colors = mesh.color_attributes.get("Color")
        return {{"name": obj.name, "material": material.name, "uv_maps": [uv.name for uv in mesh.uv_layers],
                "smooth": all(p.use_smooth for p in mesh.polygons), "base": base.type if base else None,
                "base_image": image(base) if base and base.type == "TEX_IMAGE" else None,
                "normal_map": {{"space": normal_map.space, "uv_map": normal_map.uv_map, **image(normal)}}
                if normal_map else None,
                "roughness": bsdf.inputs["Roughness"].default_value, "metallic": bsdf.inputs["Metallic"].default_value,
                "color": [colors.data_type, colors.domain] if colors else None,
                "lowest_z": min((obj.matrix_world @ v.co).z for v in mesh.vertices)}}
'''

# A 80 px Cycles render from the front (the camera on -Y looking along +Y at the cursor),
# white world light, Standard view transform (colours as they are); the pixel at the centre.
RENDER_FRONT = '''
    def render_front(path, target):
        scene = bpy.context.scene
        camera = bpy.data.objects.new("Front", bpy.data.cameras.new("Front"))
        scene.collection.objects.link(camera)
        camera.location, camera.rotation_euler = (target[0], target[1] - 6.0, target[2] + 0.5), (1.5708, 0.0, 0.0)
        scene.camera = camera
        world = scene.world or bpy.data.worlds.new("World")
        scene.world = world
        if world.node_tree is None:
            world.use_nodes = True
        background = next(n for n in world.node_tree.nodes if n.type == "BACKGROUND")
        background.inputs["Color"].default_value, background.inputs["Strength"].default_value = (1, 1, 1, 1), 1.0
        scene.render.engine, scene.cycles.device, scene.cycles.samples = "CYCLES", "CPU", 8
        scene.cycles.use_denoising = False
        scene.render.resolution_x = scene.render.resolution_y = 80
        scene.render.resolution_percentage = 100
        scene.view_settings.view_transform = "Standard"
        scene.render.image_settings.file_format = "PNG"
        scene.render.filepath = path
        bpy.ops.render.render(write_still=True)
        image = bpy.data.images.load(path)
        w, h = image.size
        pixels = list(image.pixels)
        i = 4 * ((h // 2) * w + w // 2)
        return pixels[i:i + 3]
'''


def test_a_textured_result_stands_on_the_cursor_with_its_packed_textures_and_renders_them(addon_zip, tmp_path):
    folder = write_result(tmp_path / "job", side=1.0, origin="bottom", normal_map=True)
    out = run_in_blender(script(f'''
        install({addon_zip!r})
    ''', IMPORT_JOB.format(tests=TESTS), RENDER_FRONT, f'''
        bpy.context.scene.cursor.location = (0.0, 0.0, 1.5)
        obj, message, snap = import_job(FolderClient({str(folder)!r}, client_mod.Rejected), "textured")
        described = describe(obj)
        downloads_left = os.path.exists(snap.textures.folder)
        images = sorted(image.name for image in bpy.data.images if image.packed_file)
        centre = render_front({str(tmp_path / "front.png")!r}, (0.0, 0.0, 1.5))
        result(described=described, message=message, downloads_left=downloads_left, images=images, centre=centre)
    '''), tmp_path)
    d = out["described"]
    assert d["uv_maps"] == ["UVMap"] and d["smooth"] and d["color"] == ["FLOAT_COLOR", "POINT"]
    assert d["material"] == d["name"] and d["base"] == "TEX_IMAGE"              # its own material
    assert d["base_image"] == {"packed": True, "size": [64, 64], "colorspace": "sRGB"}
    assert d["normal_map"] == {"space": "TANGENT", "uv_map": "UVMap", "packed": True, "size": [16, 16],
                               "colorspace": "Non-Color"}
    assert d["roughness"] == pytest.approx(0.9) and d["metallic"] == 0.0
    assert d["lowest_z"] == pytest.approx(1.5, abs=1e-6)                        # bottom origin on the cursor
    assert not out["downloads_left"]                                            # packed: the folder is gone
    assert out["images"] == [f"{d['name']} base color", f"{d['name']} normal"]
    r, g, b = out["centre"]
    assert r > 0.3 and r > 3 * g and r > 3 * b, out["centre"]   # the texture's red quadrant, not its green


def test_vertex_colours_only_an_older_server_and_replacing_a_textured_result(addon_zip, tmp_path):
    textured = write_result(tmp_path / "textured")
    older = write_result(tmp_path / "older", texture=False, origin="center")
    out = run_in_blender(script(f'''
        install({addon_zip!r})
    ''', IMPORT_JOB.format(tests=TESTS), f'''
        importer = addon_module("importer")
        prefs.vertex_colors_only = True
        images_before = len(bpy.data.images)
        only, message, snap = import_job(FolderClient({str(textured)!r}, client_mod.Rejected), "prefs")
        vertex_only = describe(only)
        images_added = len(bpy.data.images) - images_before
        downloads_left = os.path.exists(snap.textures.folder)
        prefs.vertex_colors_only = False
        old, message, snap = import_job(FolderClient({str(older)!r}, client_mod.Rejected), "older")
        older = describe(old)
        first, _, _ = import_job(FolderClient({str(textured)!r}, client_mod.Rejected), "first")
        first_material = first.data.materials[0].name
        again = jobs.JobWatcher(FolderClient({str(textured)!r}, client_mod.Rejected), "again",
                                bpy.app.tempdir).run_blocking()
        second = importer.import_result(bpy.context, again.mesh, "second", {{}}, replace=first,
                                        textures=again.textures)
        result(vertex_only=vertex_only, images_added=images_added, downloads_left=downloads_left,
               older=older, older_message=message, first_material=first_material,
               materials=sorted(m.name for m in bpy.data.materials),
               images=sorted(i.name for i in bpy.data.images), second=second.name)
    '''), tmp_path)
    for d in (out["vertex_only"], out["older"]):
        assert d["material"] == "Dreamsculpt Vertex Color" and d["base"] == "VERTEX_COLOR"
        assert d["color"] == ["FLOAT_COLOR", "POINT"] and d["smooth"]
    assert out["vertex_only"]["uv_maps"] == ["UVMap"] and out["older"]["uv_maps"] == []
    assert out["images_added"] == 0 and not out["downloads_left"]
    assert out["older"]["lowest_z"] == pytest.approx(-0.5)                     # centre origin at the cursor (0)
    assert out["first_material"] not in out["materials"]                        # replaced: its material went
    assert out["second"] in out["materials"]
    assert [i for i in out["images"] if "base color" in i] == [f"{out['second']} base color"]
