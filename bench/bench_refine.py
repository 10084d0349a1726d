"""The fine stage: the rasterizer's speed, and coarse vs refined surfaces of the built-in shapes.

Part 1 (about a minute): rasterize + interpolate + antialias + backward of a sphere decimated
to 10k / 50k / 200k faces at 128² / 256² / 512², one camera, mean of 3 after a warm-up.
Part 2 (--shapes; minutes per shape): each shape's field trained at --preset, then for the
same field the coarse surface (marching cubes at the preset's resolution) and the refined one
(DMTet after --refine steps), scored against the analytic solid: voxel IoU at 64³, Chamfer
distance and normal consistency against 50k true surface samples, and the share of the area
within 5° of an axis (the cube's flat faces).

    .venv/bin/python bench/bench_refine.py                               # part 1
    .venv/bin/python bench/bench_refine.py --shapes cube --refine 800    # + part 2 for the cube
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import fast_simplification
import numpy as np
import torch
import trimesh
from dreamsculpt.cameras import Cameras
from dreamsculpt.mesh import extract_surface
from dreamsculpt.metrics import (
    axis_aligned_share,
    chamfer_and_normals,
    true_surface,
    voxel_iou,
)
from dreamsculpt.optimize import Trainer, TrainingViews
from dreamsculpt.priors import text_prior
from dreamsculpt.rasterizer import Topology, antialias, rasterize, to_screen
from dreamsculpt.refine import Refiner
from dreamsculpt.requests import TextTo3DRequest
from dreamsculpt.shapes.geometry import SHAPES, shape_occupancy, shape_sdf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tables import OtherCpuUse, code_version, machine, markdown_table  # noqa: E402

FACES, SIZES = (10_000, 50_000, 200_000), (128, 256, 512)


def sphere(faces: int) -> tuple[torch.Tensor, torch.Tensor]:
    dense = trimesh.creation.icosphere(subdivisions=7, radius=0.8)
    v, f = fast_simplification.simplify(dense.vertices.astype(np.float32), dense.faces.astype(np.int32),
                                        target_count=faces)
    return torch.tensor(v, dtype=torch.float32), torch.tensor(f, dtype=torch.long)


def rasterizer_ms(faces: int, size: int, repeats: int = 3) -> float:
    vertices, triangles = sphere(faces)
    vertices.requires_grad_(True)
    topology = Topology.of(triangles, len(vertices))
    camera = Cameras.from_orbit(30.0, 20.0, 3.0, 40.0)
    times = []
    for _ in range(repeats + 1):
        tick = time.perf_counter()
        screen = to_screen(vertices, camera, size)
        raster = rasterize(screen, triangles)
        image = antialias(raster.image(raster.interpolate(vertices), 1.0), raster, screen, topology)
        image.sum().backward()
        times.append(time.perf_counter() - tick)
    return 1e3 * float(np.mean(times[1:]))


def score(shape: str, vertices: np.ndarray, faces: np.ndarray, truth) -> dict:
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    chamfer, consistency = chamfer_and_normals(vertices, faces, truth)
    return {"iou": voxel_iou(mesh, lambda p: shape_occupancy(shape, p)), "chamfer": chamfer,
            "nc": consistency, "axis5": axis_aligned_share(vertices, faces), "faces": len(faces)}


def refine_shape(shape: str, preset: str, steps: int) -> list[list]:
    request = TextTo3DRequest(kind="text_to_3d", prompt=f"a red {shape}", prior="builtin", preset=preset,
                              refine=steps)
    config = request.to_config()
    prior = text_prior(config.guidance, config.render.resolution, TrainingViews.of(config))
    fine = text_prior(config.refine_guidance(), config.refine_prior_resolution, TrainingViews.of(config))
    trainer = Trainer(config, prior.guidance, views=prior.views)
    tick = time.perf_counter()
    trainer.run()
    coarse_seconds = time.perf_counter() - tick
    truth = true_surface(lambda p: shape_sdf(shape, p), 50_000)
    tick = time.perf_counter()
    dense, _ = extract_surface(trainer.field, config.mesh, trainer.occupancy)
    mesh_seconds = time.perf_counter() - tick
    coarse = score(shape, dense.vertices, dense.faces, truth)
    tick = time.perf_counter()
    refiner = Refiner(trainer, fine.guidance)
    refined_surface = refiner.run()
    refine_seconds = time.perf_counter() - tick
    refined = score(shape, refined_surface.vertices, refined_surface.faces, truth)
    phases = refiner.ms_per_step()
    split = " / ".join(f"{phases[k]:.0f}" for k in ("extract", "render", "guidance", "backward"))
    row = lambda name, s, seconds, per_step: [shape, name, f"{s['iou']:.4f}", f"{s['chamfer']:.4f}",  # noqa: E731
                                              f"{s['nc']:.3f}", f"{s['axis5']:.3f}", s["faces"], f"{seconds:.0f}",
                                              per_step]
    return [row("coarse", coarse, coarse_seconds + mesh_seconds, "-"),
            row(f"refined ({steps} steps)", refined, refine_seconds, split)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="*", choices=SHAPES, default=[], metavar="SHAPE")
    parser.add_argument("--preset", default="standard")
    parser.add_argument("--refine", type=int, default=800, metavar="STEPS")
    args = parser.parse_args(argv)
    version = code_version()
    with OtherCpuUse() as others:
        rows = [[f"{f // 1000}k"] + [f"{rasterizer_ms(f, s):.0f}" for s in SIZES] for f in FACES]
    print(f"\n### Rasterizer: forward + backward, ms (one camera)\n\nMachine: {machine()}; {version}; "
          f"cores used by others: {others.cores if others.cores is None else round(others.cores, 2)}\n")
    print(markdown_table(["faces"] + [f"{s}²" for s in SIZES], rows))
    if not args.shapes:
        return 0
    table = []
    with OtherCpuUse() as others:
        for shape in args.shapes:
            print(f"{shape} ...", file=sys.stderr)
            table += refine_shape(shape, args.preset, args.refine)
    print(f"\n### Coarse vs refined, --preset {args.preset}\n\ncores used by others: "
          f"{others.cores if others.cores is None else round(others.cores, 2)}\n")
    print(markdown_table(["shape", "surface", "voxel IoU", "Chamfer", "normal consistency", "area within 5° of an axis",
                          "faces", "seconds", "extract / render / guidance / backward ms per step"], table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
