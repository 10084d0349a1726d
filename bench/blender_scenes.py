"""Posed reference folders rendered in real Blender (the `bpy` module), with their ground truth.

A scene is a few primitives built in Blender from the same dimensions as its signed distance
function here, so the truth is exact (up to Blender's tessellation). `write_blender_folder`
renders it from orbit cameras in our convention (cameras.py: Z up, azimuth from +X towards +Y,
elevation above the XY plane, degrees) over a white world, as plain RGB PNGs (no alpha: the
loader must find the outline itself), with poses.json beside them:

    from blender_scenes import write_blender_folder, scene_occupancy
    folder = write_blender_folder("table", "refs/table")             # 36 views, 128 px
    inside = scene_occupancy("table", points)                         # [P] bool

Blender runs in a child process (a fresh factory scene each time; `bpy` and torch never share
a process). Cycles on the CPU, 16 samples: about 0.3 s a view at 128 px on 2 cores. The world
is pure white to the camera and a dim grey to the object, and a sun lights it from the
front-right above, so undersides are dark: the near-white haze the white-background prior
cannot see is not the object's own colour.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from dreamsculpt.cameras import Cameras
from dreamsculpt.image_folders import POSES_FILE
from dreamsculpt.shapes.geometry import SHAPE_DIMENSIONS, shape_sdf

#: name -> parts ("torus", major, minor) / ("box", centre xyz, half-size xyz), an albedo and the
#: lowest z. The ring is light grey (near-white haze in its hole is what white hides); the
#: table is made of five boxes, wood-brown.
TABLE_TOP = ((0.0, 0.0, 0.36), (0.55, 0.4, 0.04))
TABLE_LEGS = tuple(((x, y, -0.04), (0.04, 0.04, 0.36)) for x in (-0.47, 0.47) for y in (-0.32, 0.32))
SCENES: dict[str, dict] = {
    "torus": {"parts": [("torus", SHAPE_DIMENSIONS["torus"]["major_radius"],
                         SHAPE_DIMENSIONS["torus"]["minor_radius"])],
              "albedo": (0.75, 0.75, 0.75), "bottom": -SHAPE_DIMENSIONS["torus"]["minor_radius"]},
    "table": {"parts": [("box", *TABLE_TOP), *(("box", *leg) for leg in TABLE_LEGS)],
              "albedo": (0.55, 0.33, 0.15), "bottom": -0.4},
}


def default_views(azimuths: int = 6, elevations: tuple[float, ...] = (-30, -10, 10, 30, 50, 70)) -> Cameras:
    """azimuths x elevations orbit cameras at distance 3.0, fov 40 (the built-in library's
    framing); each elevation ring is turned by half a step from the one below, so 36 views see
    72 distinct azimuths."""
    step = 360.0 / azimuths
    az = [(i + 0.5 * (k % 2)) * step for k in range(len(elevations)) for i in range(azimuths)]
    el = [e for e in elevations for _ in range(azimuths)]
    return Cameras.from_orbit(torch.tensor(az), torch.tensor(el, dtype=torch.float32), 3.0, 40.0)


def scene_sdf(name: str, points: torch.Tensor) -> torch.Tensor:
    """Signed distance [P] (negative inside) of scene `name` at points [P, 3]."""
    parts = []
    for part in SCENES[name]["parts"]:
        if part[0] == "torus":
            parts.append(shape_sdf("torus", points))
        else:
            q = (points - points.new_tensor(part[1])).abs() - points.new_tensor(part[2])
            parts.append(q.clamp_min(0).norm(dim=-1) + q.amax(-1).clamp_max(0))
    return torch.stack(parts).amin(0)


def scene_occupancy(name: str, points: torch.Tensor) -> torch.Tensor:
    return scene_sdf(name, points.float()) <= 0


_BLENDER_SCRIPT = r'''
import json, sys
import bpy
from mathutils import Matrix

spec = json.load(open(sys.argv[-1]))
bpy.ops.wm.read_factory_settings(use_empty=True)
scene = bpy.context.scene
scene.render.engine = "CYCLES"
scene.cycles.device = "CPU"
scene.cycles.samples = spec["samples"]
scene.cycles.use_denoising = False
scene.render.resolution_x = scene.render.resolution_y = spec["resolution"]
scene.render.resolution_percentage = 100
scene.render.film_transparent = False
scene.render.image_settings.file_format = "PNG"
scene.render.image_settings.color_mode = "RGB"
scene.view_settings.view_transform = "Standard"      # white stays 1.0 (AgX would grey it)

# The world: white to the camera, a dim grey light to the object.
world = bpy.data.worlds.new("white")
world.use_nodes = True
nodes, links = world.node_tree.nodes, world.node_tree.links
nodes.clear()
path = nodes.new("ShaderNodeLightPath")
camera_bg, light_bg = nodes.new("ShaderNodeBackground"), nodes.new("ShaderNodeBackground")
camera_bg.inputs["Color"].default_value = (1, 1, 1, 1)
light_bg.inputs["Color"].default_value = (1, 1, 1, 1)
light_bg.inputs["Strength"].default_value = 0.35
mix, out = nodes.new("ShaderNodeMixShader"), nodes.new("ShaderNodeOutputWorld")
links.new(path.outputs["Is Camera Ray"], mix.inputs[0])
links.new(light_bg.outputs[0], mix.inputs[1])
links.new(camera_bg.outputs[0], mix.inputs[2])
links.new(mix.outputs[0], out.inputs[0])
scene.world = world

sun = bpy.data.objects.new("sun", bpy.data.lights.new("sun", "SUN"))
sun.data.energy = 2.5
sun.rotation_euler = (0.6, 0.5, 0.4)
scene.collection.objects.link(sun)

material = bpy.data.materials.new("albedo")
material.use_nodes = True
bsdf = material.node_tree.nodes["Principled BSDF"]
bsdf.inputs["Base Color"].default_value = (*spec["albedo"], 1)
bsdf.inputs["Roughness"].default_value = 0.9
for part in spec["parts"]:
    if part[0] == "torus":
        bpy.ops.mesh.primitive_torus_add(major_radius=part[1], minor_radius=part[2], major_segments=128,
                                         minor_segments=48)
        bpy.ops.object.shade_smooth()
    else:
        bpy.ops.mesh.primitive_cube_add(size=2.0, location=part[1], scale=part[2])
    bpy.context.object.data.materials.append(material)

camera = bpy.data.objects.new("camera", bpy.data.cameras.new("camera"))
scene.collection.objects.link(camera)
scene.camera = camera
camera.data.sensor_fit = "HORIZONTAL"
for name, view in zip(spec["names"], spec["views"]):
    camera.matrix_world = Matrix(view["c2w"])
    camera.data.angle = view["fov_rad"]
    scene.render.filepath = spec["folder"] + "/" + name
    bpy.ops.render.render(write_still=True)
'''


def write_blender_folder(scene: str, folder: str | Path, resolution: int = 128, views: Cameras | None = None,
                         samples: int = 16, timeout_s: float = 900.0) -> Path:
    """Render `scene` (a SCENES name) in Blender from `views` (default_views()) as
    view_000.png ... over white, plus poses.json, into `folder` (created). Returns the folder.
    Needs the bpy module in this Python (pip install bpy==5.0.1)."""
    views = default_views() if views is None else views
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"view_{i:03d}.png" for i in range(len(views))]
    # Our camera-to-world matrices are Blender's (camera looks down -Z, +Y up): used as they are.
    spec = {"resolution": resolution, "samples": samples, "folder": str(folder), "names": names,
            "parts": SCENES[scene]["parts"], "albedo": SCENES[scene]["albedo"],
            "views": [{"c2w": c2w.tolist(), "fov_rad": float(torch.deg2rad(fov))}
                      for c2w, fov in zip(views.c2w, views.fov_deg)]}
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, script = Path(tmp) / "spec.json", Path(tmp) / "render.py"
        spec_path.write_text(json.dumps(spec))
        script.write_text(_BLENDER_SCRIPT)
        done = subprocess.run([sys.executable, str(script), str(spec_path)], capture_output=True, text=True,
                              timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"Blender failed rendering {scene}:\n{done.stderr[-3000:]}")
    poses = {name: {"azimuth_deg": round(float(a), 4), "elevation_deg": round(float(e), 4),
                    "distance": round(float(d), 4), "fov_deg": round(float(f), 4)}
             for name, a, e, d, f in zip(names, views.azimuth_deg, views.elevation_deg, views.distance,
                                         views.fov_deg)}
    (folder / POSES_FILE).write_text(json.dumps(poses, indent=1) + "\n", encoding="utf-8")
    return folder


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scene", choices=sorted(SCENES))
    parser.add_argument("folder", type=Path)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--samples", type=int, default=16)
    args = parser.parse_args()
    print(write_blender_folder(args.scene, args.folder, args.resolution, samples=args.samples))
