"""White vs random training backgrounds on posed reference sets rendered in Blender.

Over white alone the reference prior cannot see near-white density, so SDS never removes it.
Each scene (bench/blender_scenes.py: a ring lying flat and a four-legged table) is rendered in
Blender over a white world as plain RGB (the loader derives the masks), then run through the
text_to_3d task with `--prior references` twice: background forced "white" (as before) and
"random" (what "auto" picks for a set with masks). Per run: voxel IoU at 64^3 against the
scene's exact SDF, how far the mesh reaches below the true bottom, and mesh vertices in space
that must stay empty (the ring's hole; between the table's legs, under its top).

    .venv/bin/python bench/bench_backgrounds.py --wait-quiet 300           # 32 px renders: ~6 min
    .venv/bin/python bench/bench_backgrounds.py --resolution 64            # ~10 min; the legs resolve
    .venv/bin/python bench/bench_backgrounds.py --scenes torus --steps 300
    .venv/bin/python bench/bench_backgrounds.py --tracer                    # no Blender: our tracer

`--tracer` renders the ring with the project's own sphere tracer (shapes/tracing.py) instead
(the table is not a built-in shape). Folders are kept under --out and reused.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import trimesh
from dreamsculpt.metrics import voxel_iou
from dreamsculpt.requests import TextTo3DRequest
from dreamsculpt.tasks import text_to_3d

sys.path.insert(0, str(Path(__file__).resolve().parent))
from blender_scenes import SCENES, default_views, scene_occupancy, write_blender_folder  # noqa: E402
from tables import OtherCpuUse, code_version, machine, markdown_table, wait_until_quiet  # noqa: E402

#: Boxes (lo xyz, hi xyz) that must stay empty, per scene.
EMPTY: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "torus": ((-0.2, -0.2, -0.2), (0.2, 0.2, 0.2)),        # inside the hole (radius 0.3)
    "table": ((-0.35, -0.2, -0.4), (0.35, 0.2, 0.25)),      # between the legs, under the top
}


def reference_folder(scene: str, root: Path, resolution: int, tracer: bool) -> Path:
    """The scene's posed folder (rendered once, then reused)."""
    folder = root / f"{scene}-{'tracer' if tracer else 'blender'}-{resolution}px"
    if (folder / "poses.json").is_file():
        return folder
    if tracer:
        from dreamsculpt.shapes.library import write_shape_folder

        return write_shape_folder(scene, "red", folder, resolution, views=default_views())
    return write_blender_folder(scene, folder, resolution)


def empty_vertices(mesh: trimesh.Trimesh, scene: str) -> int:
    lo, hi = (np.asarray(b) for b in EMPTY[scene])
    return int(((mesh.vertices > lo) & (mesh.vertices < hi)).all(1).sum())


def run_one(scene: str, folder: Path, background: str, args: argparse.Namespace, out: Path) -> dict:
    request = TextTo3DRequest(kind="text_to_3d", prior="references", references=str(folder), preset=args.preset,
                              steps=args.steps, resolution=args.resolution, seed=args.seed, background=background,
                              mesh={"resolution": args.mesh_resolution})
    with OtherCpuUse() as cpu:
        result = text_to_3d.run(request, out, device="cpu")
    mesh = trimesh.load(out / "mesh.ply", process=False)
    return {"scene": scene, "background": background,
            "iou": voxel_iou(mesh, lambda p: scene_occupancy(scene, p)),
            "below": max(0.0, SCENES[scene]["bottom"] - float(mesh.vertices[:, 2].min())),
            "empty": empty_vertices(mesh, scene), "watertight": bool(mesh.is_watertight),
            "seconds": result.record.seconds, "ms_per_step": result.record.ms_per_step,
            "other_cores": cpu.cores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", nargs="+", default=sorted(SCENES), choices=sorted(SCENES))
    parser.add_argument("--preset", default="preview")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--resolution", type=int, default=32, help="render size in training")
    parser.add_argument("--mesh-resolution", type=int, default=96)
    parser.add_argument("--views-resolution", type=int, default=128, help="pixels of the reference renders")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tracer", action="store_true", help="render with our sphere tracer, not Blender")
    parser.add_argument("--out", type=Path, help="where folders and runs go (default: a kept temporary folder)")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = args.out or Path(tempfile.mkdtemp(prefix="bench-backgrounds-"))
    scenes = [s for s in args.scenes if not args.tracer or s == "torus"]
    rows = []
    for scene in scenes:
        tick = time.perf_counter()
        folder = reference_folder(scene, root, args.views_resolution, args.tracer)
        print(f"{scene}: {folder} ({time.perf_counter() - tick:.0f} s)", file=sys.stderr)
        for background in ("white", "random"):
            if args.wait_quiet:
                wait_until_quiet(args.wait_quiet)
            rows.append(run_one(scene, folder, background, args, root / f"{scene}-{background}-{args.resolution}px"))
            print(json.dumps(rows[-1]), file=sys.stderr)
    source = "our sphere tracer" if args.tracer else "Blender 5.0 (Cycles, 16 samples)"
    print(f"Posed reference sets, {len(default_views())} views at {args.views_resolution} px from {source}, "
          f"plain RGB on white; text_to_3d --prior references, preset {args.preset}, {args.steps} steps, "
          f"{args.resolution} px renders, mesh {args.mesh_resolution}^3, seed {args.seed}.\n")
    print(markdown_table(
        ["scene", "background", "IoU", "below the bottom", "vertices where empty", "watertight", "s", "other cores"],
        [[r["scene"], r["background"], f"{r['iou']:.3f}", f"{r['below']:.3f}", r["empty"], r["watertight"],
          f"{r['seconds']:.0f}", "?" if r["other_cores"] is None else f"{r['other_cores']:.2f}"] for r in rows]))
    print(f"\n{machine()}; {code_version()}; 1 torch thread.")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
