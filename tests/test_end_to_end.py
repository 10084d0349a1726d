"""Whole runs through the CLI at a CI-sized setting, judged as a user would judge them: the mesh
has the asked-for shape (voxel IoU against the analytic solid) and colour, and every output
file is there and readable.

Marked slow (one to two minutes each on 2 CPU cores, most of it meshing and the preview
renders) but run by default; `-m "not slow"` skips them.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pytest
import trimesh
from dreamsculpt import cli
from dreamsculpt.metrics import voxel_iou
from dreamsculpt.shapes.geometry import shape_occupancy
from dreamsculpt.shapes.library import write_shape_folder
from PIL import Image

pytestmark = pytest.mark.slow

#: Optimisation steps of each run: the preview preset (32 px renders, 128^3 marching cubes)
#: cut short so CI stays within minutes. The thresholds below are the acceptance bar. A
#: perfect red shape does not reach R = 0.85: the library bakes its lighting into the images,
#: so the learned albedo is darker on the unlit side (about R = 0.56 averaged over a sphere).
STEPS = 60
MIN_IOU = 0.6
RUN_JSON_KEYS = ("kind", "request", "prior", "model", "seed", "steps", "seconds", "device", "vertices", "faces",
                 "training_views", "ms_per_step", "config")


@pytest.fixture(autouse=True)
def keep_sigint_handler():
    """run_generate installs its own Ctrl-C handler; give pytest its own back."""
    handler = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, handler)


def generate(out: Path, prompt: str, *options: str) -> dict:
    """Run `dreamsculpt generate` in-process; returns run.json after checking every output."""
    code = cli.main(["generate", prompt, *options, "--preset", "preview", "--steps", str(STEPS),
                     "--out", str(out), "--quiet"])
    assert code == 0
    for name in ("mesh.ply", "mesh.glb", "preview.png", "turntable.gif", "run.json", "checkpoint.pt"):
        assert (out / name).is_file(), f"{name} missing"
    with Image.open(out / "preview.png") as preview:
        width, height = preview.size
        assert width >= 4 * height, "preview.png shows at least 4 views side by side"
    with Image.open(out / "turntable.gif") as gif:
        assert gif.n_frames >= 8 and gif.size[0] == gif.size[1]
    run = json.loads((out / "run.json").read_text())
    for key in RUN_JSON_KEYS:
        assert key in run, f"run.json has no {key!r}"
    assert run["request"]["prompt"] == prompt and run["steps"] == STEPS and run["seed"] == 0
    assert run["device"] == "cpu" and run["seconds"] > 0
    return run


def measure(out: Path, shape: str, run: dict) -> tuple[float, np.ndarray]:
    """(voxel IoU against the built-in `shape`, mean vertex colour RGB in [0, 1])."""
    mesh = trimesh.load(out / "mesh.ply", process=False)
    mesh.merge_vertices(merge_tex=True, merge_norm=True)   # trimesh splits vertices at UV seams
    assert len(mesh.vertices) == run["vertices"] and len(mesh.faces) == run["faces"]
    assert mesh.is_watertight and run["watertight"]
    mesh.apply_translation(run["anchor"])      # from the asset's origin back to the field's frame
    iou = voxel_iou(mesh, lambda p: shape_occupancy(shape, p))
    colour = np.asarray(mesh.vertex_attributes["color"])[:, :3].mean(0) / 255.0
    print(f"{out.name}: IoU {iou:.3f}, mean colour {np.round(colour, 3).tolist()}, "
          f"{run['vertices']} vertices, {run['seconds']:.0f} s")
    return iou, colour


def assert_red(colour: np.ndarray) -> None:
    # The library bakes a fixed light into its images (ambient 0.55 + 0.45 n.l on albedo
    # 0.85, 0.1, 0.1), so a faithful mesh averages roughly R 0.45-0.6: red is the hue, a
    # bright red channel far above green and blue, not a fixed brightness.
    r, g, b = colour
    assert r > 0.35 and r > 3 * g and r > 3 * b, f"mean vertex colour {colour} is not red"


@pytest.mark.parametrize("shape", ["cube", "sphere"])
def test_builtin_red_shape(shape, tmp_path):
    out = tmp_path / f"red-{shape}"
    run = generate(out, f"a red {shape}", "--prior", "builtin")
    assert run["prior"] == "builtin" and run["model"] is None
    iou, colour = measure(out, shape, run)
    assert iou >= MIN_IOU
    assert_red(colour)
    check_textured_glb(out, run)


def glb_json(path: Path) -> dict:
    """The JSON chunk of a GLB (what an engine reads first)."""
    data = path.read_bytes()
    length = int.from_bytes(data[12:16], "little")
    return json.loads(data[20:20 + length])


def check_textured_glb(out: Path, run: dict) -> None:
    """mesh.glb is an asset an engine takes as it is: normals, UVs, a PBR material whose
    embedded base-colour texture is red on the surface; welded, it is closed; it keeps to the
    preset's face budget; and texture.png has no black texel (every seam padded)."""
    gltf = glb_json(out / "mesh.glb")
    (primitive,) = gltf["meshes"][0]["primitives"]
    assert {"POSITION", "NORMAL", "TEXCOORD_0"} <= set(primitive["attributes"])
    pbr = gltf["materials"][primitive["material"]]["pbrMetallicRoughness"]
    assert "baseColorTexture" in pbr and pbr["metallicFactor"] == 0 and pbr["roughnessFactor"] == 0.9
    assert len(gltf["images"]) == 1 and gltf["images"][0]["mimeType"] == "image/png"   # embedded

    glb = trimesh.load(out / "mesh.glb").to_geometry()
    assert glb.visual.material.baseColorTexture.size == (512, 512)   # the preview preset's
    on_surface = np.asarray(glb.visual.to_color().vertex_colors)[:, :3].mean(0) / 255.0
    assert_red(on_surface)
    glb.merge_vertices(merge_tex=True, merge_norm=True)
    assert glb.is_watertight and len(glb.faces) == run["faces"] <= 10_000
    texture = np.asarray(Image.open(out / "texture.png").convert("RGB"))
    assert texture.shape == (512, 512, 3) and (texture.max(-1) > 8).all(), "a black texel in texture.png"


def test_reference_folder_with_poses(tmp_path):
    shape = "cylinder"
    folder = write_shape_folder(shape, "green", tmp_path / "photos", resolution=64)
    assert (folder / "poses.json").is_file()
    out = tmp_path / "from-photos"
    run = generate(out, f"a {shape}", "--prior", "references", "--references", str(folder))
    assert run["prior"] == "references" and "with poses" in run["prior_detail"]
    iou, colour = measure(out, shape, run)
    assert iou >= MIN_IOU
    r, g, b = colour
    assert g > r and g > b, f"mean vertex colour {colour} is not green"
