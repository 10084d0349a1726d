"""Every built-in shape through the real text_to_3d task: time, IoU against the analytic solid, colour.

For each shape the config is built exactly as `dreamsculpt generate "a red <shape>" --prior
builtin --preset <preset>` builds it (the CLI's own parser and request_from_args), then
the text_to_3d task optimises, meshes and writes mesh.ply / mesh.glb / previews / run.json.
The written mesh.ply is scored by voxel IoU at 64^3 against `shape_occupancy`.

    .venv/bin/python bench/bench_shapes.py                          # standard preset, all shapes (~15 min)
    .venv/bin/python bench/bench_shapes.py --preset preview --steps 200 --shapes cube
    .venv/bin/python bench/bench_shapes.py --json shapes.json --out /tmp/shapes
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import trimesh
from dreamsculpt.cli import build_parser, request_from_args
from dreamsculpt.config import PRESETS
from dreamsculpt.errors import DreamsculptError
from dreamsculpt.metrics import voxel_iou
from dreamsculpt.optimize import Callbacks
from dreamsculpt.shapes.geometry import COLOURS, SHAPES, shape_occupancy
from dreamsculpt.tasks import task_of

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tables import (  # noqa: E402
    QUIET_CORES,
    OtherCpuUse,
    code_version,
    machine,
    markdown_table,
    wait_until_quiet,
)

TARGET_IOU, TARGET_SECONDS = 0.85, 180.0
TARGET = f"mean IoU ≥ {TARGET_IOU}; ≤ {TARGET_SECONDS / 60:.0f} minutes per shape on 2 cores"
COLOUR = "red"


def run_shape(shape: str, args: argparse.Namespace, out_root: Path) -> dict:
    """One CLI-equivalent run; returns the table row as a dict."""
    out_dir = out_root / shape
    argv = ["generate", f"a {COLOUR} {shape}", "--prior", "builtin", "--preset", args.preset,
            "--seed", str(args.seed), "--out", str(out_dir), "--quiet"]
    if args.steps is not None:
        argv += ["--steps", str(args.steps)]
    parser = build_parser()
    request = request_from_args(parser.parse_args(argv), parser)
    config = request.to_config()
    optimised_at = {}

    def on_progress(p):
        if p.stage == "meshing":
            optimised_at["s"] = p.elapsed_s
        elif p.step % max(p.total // 10, 1) == 0:
            print(f"  {shape}: step {p.step}/{p.total}, {p.elapsed_s:.0f} s", file=sys.stderr)

    started = time.perf_counter()
    try:
        with OtherCpuUse() as others:
            result = task_of(request).run(request, out_dir, Callbacks(on_progress=on_progress))
    except DreamsculptError as exc:  # a failed shape is a row of the table, not the end of the bench
        print(f"  {shape}: failed: {exc}", file=sys.stderr)
        return {"shape": shape, "steps": config.train.steps, "seconds": round(time.perf_counter() - started, 1),
                "iou": 0.0, "error": str(exc), "out_dir": str(out_dir)}
    mesh = trimesh.load(out_dir / "mesh.ply", process=False)
    run = json.loads((out_dir / "run.json").read_text())
    mesh.apply_translation(run["anchor"])      # from the asset's origin back to the field's frame
    iou = voxel_iou(mesh, lambda p: shape_occupancy(shape, p), resolution=64)
    colour = np.asarray(mesh.vertex_attributes["color"][:, :3], dtype=np.float64).mean(0) / 255.0
    steps = config.train.steps
    return {
        "shape": shape, "steps": steps, "render_px": config.render.resolution,
        "seconds": round(result.seconds, 1), "optimise_seconds": round(optimised_at.get("s", float("nan")), 1),
        "ms_per_step": round(1e3 * optimised_at.get("s", float("nan")) / steps, 1),
        "ms_per_step_phases": run["ms_per_step"], "iou": round(iou, 3), "faces": run["faces"],
        "vertices": run["vertices"], "threshold": run["threshold"],
        "mean_colour": [round(float(c), 3) for c in colour],
        "others_cores": None if others.cores is None else round(others.cores, 2), "out_dir": str(out_dir),
    }


def table_row(r: dict) -> list:
    if "error" in r:
        return [r["shape"], r["steps"], f"{r['seconds']:.1f}", "", "", "0 (failed)", "", r["error"][:60], ""]
    phases = r["ms_per_step_phases"]
    split = " / ".join(f"{phases[k]:.0f}" for k in ("render", "guidance", "backward"))
    colour = "(" + ", ".join(f"{c:.2f}" for c in r["mean_colour"]) + ")"
    others = "?" if r["others_cores"] is None else f"{r['others_cores']:.2f}"
    return [r["shape"], r["steps"], f"{r['seconds']:.1f}", f"{r['ms_per_step']:.0f}", split, f"{r['iou']:.3f}",
            r["faces"], colour, others]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="standard")
    parser.add_argument("--steps", type=int, help="optimisation steps (default: from the preset)")
    parser.add_argument("--shapes", nargs="+", choices=SHAPES, default=list(SHAPES), metavar="SHAPE",
                        help=f"subset of {' '.join(SHAPES)} (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="before each shape, wait up to this long for other processes to leave the CPU")
    parser.add_argument("--out", type=Path, help="output folder (default: a new temporary folder, kept)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    version = code_version()  # the working tree as imported, before anything runs
    out_root = args.out or Path(tempfile.mkdtemp(prefix="dreamsculpt-bench-shapes-"))

    rows = []
    for shape in args.shapes:
        print(f"{shape} ...", file=sys.stderr)
        if args.wait_quiet:
            wait_until_quiet(args.wait_quiet)
        rows.append(run_shape(shape, args, out_root))

    mean_iou = float(np.mean([r["iou"] for r in rows]))
    max_seconds = max(r["seconds"] for r in rows)
    steps = args.steps if args.steps is not None else PRESETS[args.preset]["steps"]
    print(f"\n### Built-in shapes in {COLOUR}, --preset {args.preset}, {steps} steps, seed {args.seed}\n")
    print(f"Machine: {machine()}; {version}. Target: {TARGET}. Outputs: {out_root}\n")
    print(markdown_table(["shape", "steps", "seconds to mesh", "ms/step", "render / guidance / backward ms",
                          "voxel IoU", "faces", "mean vertex colour", "cores used by others"],
                         [table_row(r) for r in rows]))
    iou_ok, time_ok = mean_iou >= TARGET_IOU, max_seconds <= TARGET_SECONDS
    print(f"\nmean IoU {mean_iou:.3f} (target ≥ {TARGET_IOU}: {'met' if iou_ok else 'NOT met'}); "
          f"max seconds {max_seconds:.1f} (target ≤ {TARGET_SECONDS:.0f}: {'met' if time_ok else 'NOT met'})")
    print("\n- seconds to mesh: the task's run from building the prior to run.json (optimise, mesh, "
          "export, preview, turntable); ms/step: optimisation wall time / steps, occupancy updates included.")
    print("- render / guidance / backward: Trainer.timings per step (run.json ms_per_step).")
    print(f"- voxel IoU: metrics.voxel_iou of mesh.ply vs shapes.shape_occupancy at 64³. Mean vertex colour "
          f"of mesh.ply; the library's {COLOUR} albedo is {COLOURS[COLOUR]}.")
    print(f"- cores used by others: average CPU load of other processes meanwhile (/proc/stat); above "
          f"{QUIET_CORES} the times are inflated.")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"preset": args.preset, "steps": steps, "seed": args.seed,
                                         "machine": machine(), "mean_iou": round(mean_iou, 3),
                                         "max_seconds": max_seconds, "code": version,
                                         "rows": rows}, indent=2))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
