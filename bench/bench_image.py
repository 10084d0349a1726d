"""One picture -> 3D and novel views with the built-in prior: seconds, and IoU against the truth.

Each shape is sphere-traced from one oblique camera (azimuth -60, elevation 25, 3.5 units from
the object, which sits off the origin at (1, 2, 0.5)) into an RGBA PNG with that camera's
CameraSpec, exactly what the Blender add-on sends. the image_to_3d task reconstructs it; the
mesh, mapped into the world by run.json's placement, is scored by voxel IoU at 64^3 against
the true solid. Novel views: the novel_views task, a ring of 8 (7 sampled) at 50 DDIM steps.
Ablations (cube, CI size): reference-view losses alone, and the prior alone. The cube is also
run with the tests' tiny random Zero123, for the Zero123 path's own cost at both settings.

    .venv/bin/python bench/bench_image.py                        # CI size and standard, all shapes (~15 min)
    .venv/bin/python bench/bench_image.py --settings ci --shapes cube torus --no-ablation
Zero123's own timings (tiny and XL-sized random weights) are in bench/bench_zero123.py.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import trimesh
from dreamsculpt.cameras import Cameras, orbit_c2w
from dreamsculpt.metrics import voxel_iou
from dreamsculpt.server.uploads import decode_image
from dreamsculpt.shapes.geometry import SHAPES, shape_occupancy
from dreamsculpt.shapes.tracing import render_shape
from dreamsculpt.tasks import TASKS
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tables import OtherCpuUse, code_version, machine, markdown_table  # noqa: E402

TARGET = (1.0, 2.0, 0.5)
SETTINGS = {  # name -> request fields
    "ci": {"preset": "preview", "steps": 300, "resolution": 32, "mesh": {"resolution": 96}},
    "standard": {"preset": "standard"},
}


def picture(shape: str, folder: Path) -> tuple[Path, dict]:
    c2w = orbit_c2w(torch.tensor([-60.0]), torch.tensor([25.0]), torch.tensor([3.5]))[0]
    c2w[:3, 3] += torch.tensor(TARGET)
    cam = Cameras(c2w[None], torch.tensor([40.0]), torch.zeros(1), torch.zeros(1), torch.ones(1))
    rgba = render_shape(shape, cam, 256, offset=TARGET).rgba("red")[0]
    path = folder / f"{shape}.png"
    Image.fromarray((rgba.permute(1, 2, 0) * 255).round().byte().numpy()).save(path)
    lens = 0.5 * 256 / math.tan(math.radians(20.0)) * 36.0 / 256
    return path, {"matrix_world": c2w.tolist(), "lens": lens, "sensor_width": 36.0, "sensor_height": 24.0,
                  "sensor_fit": "AUTO", "shift_x": 0.0, "shift_y": 0.0}


def reconstruct(shape: str, setting: str, folder: Path, zero123: str | None = None, **image) -> dict:
    path, spec = picture(shape, folder)
    prior = {"prior": "zero123", "model": zero123} if zero123 else {"prior": "builtin"}
    request = image_request("image_to_3d", path, camera=spec, depth=3.5, **prior, **SETTINGS[setting])
    config = request.to_config("auto", path)
    for key, value in image.items():   # engine settings no request exposes
        setattr(config.image if hasattr(config.image, key) else config.train, key, value)
    out = folder / f"{shape}-{setting}-{'-'.join(image) or 'full'}{'-zero123' if zero123 else ''}"
    with OtherCpuUse() as others:
        result = TASKS["image_to_3d"].run(request, out, image=path, config=config)
    placement = torch.tensor(json.loads((out / "run.json").read_text())["placement"])
    mesh = trimesh.load(out / "mesh.ply", process=False)
    shift = torch.tensor(TARGET)
    iou = voxel_iou(mesh, lambda p: shape_occupancy(shape, p * placement[0, 0] + placement[:3, 3] - shift))
    variant = ", ".join(f"{k}={v}" for k, v in image.items()) or "full"
    if zero123:
        variant = "tiny random Zero123 (timing only)"
    return {"shape": shape, "setting": setting, "variant": variant,
            "steps": config.train.steps, "render_px": config.render.resolution, "seconds": round(result.seconds, 1),
            "iou": round(iou, 3), "faces": result.record.outputs.faces,
            "others": None if others.cores is None else round(others.cores, 2)}


def views(shape: str, folder: Path, count: int, steps: int) -> dict:
    path, spec = picture(shape, folder)
    request = image_request("novel_views", path, prior="builtin", camera=spec, depth=3.5, count=count, steps=steps)
    started = time.perf_counter()
    result = TASKS["novel_views"].run(request, folder / f"{shape}-views", image=path)
    seconds, made = time.perf_counter() - started, result.record.outputs.views - 1
    return {"shape": shape, "views": made, "steps": steps, "seconds": round(seconds, 2),
            "per_view": round(seconds / made, 3)}


def image_request(kind: str, path: Path, **fields):
    """The request the add-on would send for the picture at `path` (named by its upload id)."""
    return TASKS[kind].request.model_validate({"kind": kind, "image": decode_image(path.read_bytes()).sha256,
                                               **fields})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=["ci", "standard"])
    parser.add_argument("--shapes", nargs="+", choices=SHAPES, default=list(SHAPES))
    parser.add_argument("--no-ablation", action="store_true")
    parser.add_argument("--no-zero123", action="store_true", help="skip the runs with the tests' tiny random Zero123")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    version = code_version()
    folder = args.out or Path(tempfile.mkdtemp(prefix="dreamsculpt-bench-image-"))
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for setting in args.settings:
        for shape in args.shapes:
            print(f"{shape} {setting} ...", file=sys.stderr)
            rows.append(reconstruct(shape, setting, folder))
    if not args.no_ablation:
        rows.append(reconstruct("cube", "ci", folder, guidance_weight=0.0))
        rows.append(reconstruct("cube", "ci", folder, lambda_rgb=0.0, lambda_mask=0.0))
    if not args.no_zero123:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from tiny_zero123 import build_tiny_zero123

        model = build_tiny_zero123(folder / "tiny-zero123")
        for setting in args.settings:
            rows.append(reconstruct("cube", setting, folder, zero123=model))
    print(f"\n### One picture -> 3D, built-in prior (image_to_3d)\n\nMachine: {machine()}; {version}. Outputs: {folder}\n")
    print(markdown_table(["shape", "setting", "variant", "steps", "render px", "seconds", "voxel IoU (world)", "faces",
                          "cores used by others"],
                         [[r["shape"], r["setting"], r["variant"], r["steps"], r["render_px"], r["seconds"], r["iou"],
                           r["faces"], "?" if r["others"] is None else r["others"]] for r in rows]))
    for setting in args.settings:
        chosen = [r for r in rows if r["setting"] == setting and r["variant"] == "full"]
        if not chosen:
            continue
        print(f"\n{setting}: mean IoU {np.mean([r['iou'] for r in chosen]):.3f}, "
              f"mean seconds {np.mean([r['seconds'] for r in chosen]):.1f}")
    print("\n- variant guidance_weight=0.0: reference-view losses only (no prior); lambda_rgb=lambda_mask=0: the prior only.")
    print("- tiny random Zero123: the real Zero123 code path at CI size (a random model teaches nothing: its IoU is "
          "the reference-view losses' alone); Zero123-XL-sized step costs are in bench/bench_zero123.py.")
    view_rows = [views(shape, folder, 8, 50) for shape in args.shapes[:2]]
    print("\n### Novel views, built-in prior (ring of 8: 7 sampled, 50 DDIM steps of the exact denoiser)\n")
    print(markdown_table(["shape", "views", "DDIM steps", "seconds", "seconds per view"],
                         [[r["shape"], r["views"], r["steps"], r["seconds"], r["per_view"]] for r in view_rows]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
