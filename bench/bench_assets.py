"""From a trained field to an asset: seconds per step at each preset, and texture fidelity per shape.

1. Every built-in shape in red through the real text_to_3d task at --preset standard (as
   `dreamsculpt generate "a red <shape>" --prior builtin` runs it). Its checkpoint gives the
   field back; the asset is made again from it exactly as the task made it, and
   metrics.texture_fidelity renders both from 8 views: PSNR of the textured mesh against the
   field, over whole images and over the pixels both show as surface.
2. The cube's field made an asset at each preset's mesh resolution, face budget and texture
   size: seconds to mesh (marching cubes), decimate, unwrap, bake and export.

    .venv/bin/python bench/bench_assets.py                       # all shapes (~10 minutes on 2 cores)
    .venv/bin/python bench/bench_assets.py --shapes cube --steps 300
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from dreamsculpt.assets import make_asset
from dreamsculpt.config import PRESETS, RunConfig, apply_preset
from dreamsculpt.export import export_asset
from dreamsculpt.fields import TriplaneField
from dreamsculpt.mesh import extract_surface
from dreamsculpt.metrics import texture_fidelity, voxel_iou
from dreamsculpt.requests import TextTo3DRequest
from dreamsculpt.shapes.geometry import SHAPES, shape_occupancy
from dreamsculpt.tasks import task_of
from dreamsculpt.tasks.stages import CHECKPOINT, field_functions

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tables import OtherCpuUse, code_version, machine, markdown_table  # noqa: E402

TARGET_SECONDS, TARGET_PSNR = 15.0, 28.0
TARGET = (f"decimate + unwrap + bake + export ≤ {TARGET_SECONDS:.0f} s at standard on 2 cores; "
          f"texture PSNR ≥ {TARGET_PSNR:.0f} dB")


def trained_field(shape: str, steps: int | None, out: Path) -> tuple[TriplaneField, RunConfig, float]:
    """Run the task for "a red <shape>"; the field from its checkpoint, its config, seconds."""
    request = TextTo3DRequest(kind="text_to_3d", prompt=f"a red {shape}", prior="builtin", steps=steps)
    result = task_of(request).run(request, out)
    state = torch.load(out / CHECKPOINT, map_location="cpu", weights_only=False)
    config = RunConfig.from_dict(state["config"])
    field = TriplaneField(config.field)
    field.load_state_dict(state["field"])
    return field.eval(), config, result.seconds


def asset_seconds(field: TriplaneField, config: RunConfig, preset: str, out: Path, normal_map: bool) -> dict:
    """Make and export the field's asset with `preset`'s mesh settings; the seconds of each step."""
    mesh = replace(apply_preset(RunConfig(), preset).mesh, normal_map=normal_map)
    started = time.perf_counter()
    dense, _ = extract_surface(field, mesh)
    meshed = time.perf_counter() - started
    colour, normals = field_functions(field)
    asset = make_asset(dense, colour, mesh, normals)
    export_asset(asset, out)
    s = asset.seconds
    return {"preset": preset + (" + normal map" if normal_map else ""), "dense": len(dense.faces),
            "faces": len(asset.surface.faces), "texture": mesh.texture_size, "mesh": meshed, **s,
            "asset": s["decimate"] + s["unwrap"] + s["bake"] + s["export"],
            "watertight": asset.surface.is_watertight()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", choices=SHAPES, default=list(SHAPES), metavar="SHAPE")
    parser.add_argument("--steps", type=int, help="optimisation steps (default: the standard preset's)")
    parser.add_argument("--out", type=Path, help="output folder (default: a new temporary folder, kept)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    version = code_version()
    out_root = args.out or Path(tempfile.mkdtemp(prefix="dreamsculpt-bench-assets-"))

    fidelity, fields = [], {}
    with OtherCpuUse() as others:
        for shape in args.shapes:
            print(f"{shape} ...", file=sys.stderr)
            field, config, seconds = trained_field(shape, args.steps, out_root / shape)
            fields[shape] = (field, config)
            dense, _ = extract_surface(field, config.mesh)
            colour, normals = field_functions(field)
            asset = make_asset(dense, colour, config.mesh, normals)
            whole, surface = texture_fidelity(field, asset)
            iou = voxel_iou(asset.surface.to_trimesh().apply_translation(asset.transform.anchor),
                            lambda p: shape_occupancy(shape, p))
            fidelity.append([shape, f"{seconds:.0f}", len(asset.surface.faces), f"{whole:.1f}", f"{surface:.1f}",
                             f"{iou:.3f}", "yes" if asset.surface.is_watertight() else "NO"])
        field, config = fields["cube" if "cube" in fields else args.shapes[0]]
        timings = [asset_seconds(field, config, preset, out_root / f"asset-{preset}", False) for preset in PRESETS]
        timings.append(asset_seconds(field, config, "standard", out_root / "asset-normal", True))

    steps = args.steps or PRESETS["standard"]["steps"]
    print(f"\n### Assets from the built-in shapes (red, --preset standard, {steps} steps)\n")
    print(f"Machine: {machine()}; {version}; {others.note()}. Target: {TARGET}. Outputs: {out_root}\n")
    print(markdown_table(["shape", "task seconds", "faces", "texture PSNR, whole views (dB)",
                          "texture PSNR, surface pixels (dB)", "voxel IoU", "watertight"], fidelity))
    print("\n" + markdown_table(
        ["preset", "dense faces", "faces", "texture", "mesh s", "decimate s", "unwrap s", "bake s", "export s",
         "asset s (decimate to export)", "watertight"],
        [[t["preset"], t["dense"], t["faces"], f"{t['texture']}²", f"{t['mesh']:.2f}", f"{t['decimate']:.2f}",
          f"{t['unwrap']:.2f}", f"{t['bake']:.2f}", f"{t['export']:.2f}", f"{t['asset']:.2f}",
          "yes" if t["watertight"] else "NO"] for t in timings]))
    standard = next(t for t in timings if t["preset"] == "standard")
    mean_psnr = float(np.mean([float(row[3]) for row in fidelity]))
    print(f"\nstandard asset {standard['asset']:.1f} s (target ≤ {TARGET_SECONDS:.0f}: "
          f"{'met' if standard['asset'] <= TARGET_SECONDS else 'NOT met'}); mean whole-view PSNR {mean_psnr:.1f} dB "
          f"(target ≥ {TARGET_PSNR:.0f}: {'met' if mean_psnr >= TARGET_PSNR else 'NOT met'})")
    print("\n- texture PSNR: metrics.texture_fidelity, the asset's albedo renders vs the field's volume renders "
          "(192 samples per ray, over white), 8 views at 128², 4 above and 4 below; 'surface pixels' leaves out "
          "the silhouettes (field opacity ≤ 0.5 or no mesh).")
    print("- mesh s: marching cubes at the preset's resolution, solid cleaning; the asset steps follow "
          "(assets.make_asset, export.export_asset). The cube's field made at every preset.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
