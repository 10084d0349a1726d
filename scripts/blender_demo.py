"""The demo through Blender: the add-on, headless, makes "a red cube" and renders it.

    python scripts/blender_demo.py [--out out] [--preset standard] [--refine 600] [--samples 32]
    python scripts/blender_demo.py --mode camera [--preset preview]

`--mode camera` shows "Camera image -> 3D" instead: the default cube, moved off the origin, is
captured by an oblique camera; the add-on rebuilds it from that one picture with the built-in
prior and places the result where the camera saw it. OUT/demo_camera.png renders the result
alone (the original cube hidden) from that camera, next to OUT/demo_camera_input.png, the
original; OUT/demo_camera.blend keeps both.

Blender runs as the `bpy` module with its own user folders (under OUT/.blender-user, so the
demo leaves your Blender settings alone). The script installs the add-on zip that
build_addon.py writes, starts the backend with the add-on's "Start Backend" (or uses one
already answering on http://127.0.0.1:7323), runs `bpy.ops.dreamsculpt.generate()` with the
built-in prior, renders the scene with Cycles to OUT/demo.png and saves OUT/demo.blend.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out"))
    parser.add_argument("--prompt", default="a red cube")
    parser.add_argument("--preset", default="standard", choices=("preview", "standard", "high"))
    parser.add_argument("--samples", type=int, default=32, help="Cycles samples")
    parser.add_argument("--refine", type=int, default=600, metavar="STEPS",
                        help="text mode: mesh refinement steps after the field (0: off; default 600)")
    parser.add_argument("--mode", default="text", choices=("text", "camera"),
                        help="text: the prompt -> 3D (default); camera: the camera's picture of a cube -> 3D")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("BLENDER_USER_RESOURCES", str(out / ".blender-user"))  # read when bpy loads

    import bpy

    sys.path.insert(0, str(ROOT))
    import build_addon

    started = time.perf_counter()
    bpy.ops.wm.read_factory_settings(use_empty=False)
    status = bpy.ops.extensions.package_install_files(filepath=str(build_addon.build()), repo="user_default",
                                                      enable_on_install=True, overwrite=True)
    if status != {"FINISHED"}:
        print("error: the add-on did not install", file=sys.stderr)
        return 1
    prefs = bpy.context.preferences.addons["bl_ext.user_default.dreamsculpt"].preferences
    prefs.python = sys.executable          # this environment has the backend installed
    bpy.ops.dreamsculpt.start_backend()    # waits (background mode) until it answers

    scene = bpy.context.scene
    if args.mode == "camera":
        return camera_demo(bpy, scene, args, out, started)
    cube = bpy.data.objects.get("Cube")
    if cube is not None:
        bpy.data.objects.remove(cube)
    s = scene.dreamsculpt
    s.prompt, s.prior, s.preset = args.prompt, "builtin", args.preset
    s.refine_mode = "CUSTOM" if args.refine > 0 else "OFF"   # the panel's Refine Mesh
    s.refine_steps = max(args.refine, 1)
    try:
        bpy.ops.dreamsculpt.generate()     # headless: waits for the job, printing progress
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    result = bpy.context.view_layer.objects.active

    camera = scene.camera
    camera.location = (3.4, -3.4, 2.6)
    track = camera.constraints.new("TRACK_TO")
    track.target, track.track_axis, track.up_axis = result, "TRACK_NEGATIVE_Z", "UP_Y"
    scene.render.engine = "CYCLES"
    scene.cycles.samples, scene.cycles.device = args.samples, "CPU"
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 800, 600, 100
    scene.render.filepath = str(out / "demo.png")
    bpy.ops.render.render(write_still=True)
    bpy.ops.wm.save_as_mainfile(filepath=str(out / "demo.blend"))
    print(f"wrote {out / 'demo.png'} and {out / 'demo.blend'} ('{result.name}', {len(result.data.polygons)} faces) "
          f"in {time.perf_counter() - started:.0f} s")
    return 0


def camera_demo(bpy, scene, args, out: Path, started: float) -> int:
    cube, camera = bpy.data.objects["Cube"], scene.camera
    cube.location = (1.5, 0.5, 1.0)
    camera.location = (6.0, -5.0, 4.0)
    camera.rotation_euler = (cube.location - camera.location).to_track_quat("-Z", "Y").to_euler()
    scene.render.engine = "CYCLES"
    scene.cycles.samples, scene.cycles.device = args.samples, "CPU"
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 800, 600, 100
    scene.render.filepath = str(out / "demo_camera_input.png")
    bpy.ops.render.render(write_still=True)
    s = scene.dreamsculpt
    s.mode, s.image_source, s.image_prior, s.preset = "image_to_3d", "CAMERA", "builtin", args.preset
    try:
        bpy.ops.dreamsculpt.generate()     # captures the camera, waits for the job, places the result
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    result = bpy.context.view_layer.objects.active
    cube.hide_render = True
    scene.render.filepath = str(out / "demo_camera.png")
    bpy.ops.render.render(write_still=True)
    bpy.ops.wm.save_as_mainfile(filepath=str(out / "demo_camera.blend"))
    print(f"wrote {out / 'demo_camera.png'} (the result, placed) beside {out / 'demo_camera_input.png'} (the cube) "
          f"and {out / 'demo_camera.blend'} ('{result.name}', {len(result.data.polygons)} faces) "
          f"in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
