"""`dreamsculpt generate PROMPT`: text to a coloured mesh from the command line.

User errors print one line (`error: ...`) and exit 1; Ctrl-C stops after the current step,
keeps a checkpoint and exits 130 (continue with --resume).
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
from pathlib import Path

from . import __version__
from .config import DEFAULT_SD_MODEL, PRESETS, PRIORS, RunConfig, apply_preset
from .errors import CancelledError, DreamsculptError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dreamsculpt", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"dreamsculpt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="text (or a reference set) to a coloured mesh")
    gen.add_argument("prompt", help='what to make, e.g. "a red cube"')
    gen.add_argument("--prior", choices=PRIORS, default="sd",
                     help="sd: Stable Diffusion (needs the model); builtin: offline analytic shapes; "
                          "references: your own images (--references DIR)")
    gen.add_argument("--model", default=DEFAULT_SD_MODEL, help="hub id, diffusers folder or .safetensors/.ckpt file")
    gen.add_argument("--references", metavar="DIR", help="folder of square images (+ optional poses.json)")
    gen.add_argument("--negative", default="", help="negative prompt (sd prior)")
    gen.add_argument("--preset", choices=sorted(PRESETS), default="standard")
    gen.add_argument("--steps", type=int, help="optimisation steps (default: from the preset)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--guidance-scale", type=float, help="classifier-free guidance (default: 100 for sd)")
    gen.add_argument("--resolution", type=int, help="render size during optimisation (default: from the preset)")
    gen.add_argument("--mesh-resolution", type=int, help="marching-cubes grid size (default: from the preset)")
    gen.add_argument("--threshold", type=float, help="density level of the surface (default: automatic)")
    gen.add_argument("--max-faces", type=int, help="decimate the mesh to this many faces")
    gen.add_argument("--obj", action="store_true", help="also write mesh.obj")
    gen.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cuda, cuda:1, mps or cpu")
    gen.add_argument("--fp16", action="store_true", help="half precision for the diffusion model (CUDA only)")
    gen.add_argument("--out", type=Path, help="output folder (default: out/<prompt>)")
    gen.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def config_from_args(args: argparse.Namespace) -> RunConfig:
    config = apply_preset(RunConfig(), args.preset)
    g = config.guidance
    g.prior, g.prompt, g.negative, g.model = args.prior, args.prompt, args.negative, args.model
    g.references, g.guidance_scale, g.device, g.fp16 = args.references, args.guidance_scale, args.device, args.fp16
    config.train.seed = args.seed
    for name, value, low in (("steps", args.steps, 1), ("resolution", args.resolution, 16),
                             ("mesh-resolution", args.mesh_resolution, 32), ("max-faces", args.max_faces, 4)):
        if value is not None and value < low:
            raise DreamsculptError(f"--{name} must be at least {low} (got {value}).")
    if args.steps is not None:
        config.train.steps = args.steps
    if args.resolution is not None:
        config.render.resolution = args.resolution
    if args.mesh_resolution is not None:
        config.mesh.resolution = args.mesh_resolution
    config.mesh.threshold, config.mesh.export_obj = args.threshold, args.obj
    if args.max_faces is not None:
        config.mesh.max_faces = args.max_faces
    return config


def default_out_dir(prompt: str) -> Path:
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:60] or "run"
    return Path("out") / slug


def run_generate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .optimize import Callbacks
    from .pipeline import generate

    config = config_from_args(args)
    out_dir = args.out or default_out_dir(args.prompt)
    stop = {"requested": False}

    def on_sigint(signum, frame):  # first Ctrl-C: stop cleanly; second: the default
        stop["requested"] = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous_handler = signal.signal(signal.SIGINT, on_sigint)
    bar = None  # opened at the first report, so a user error is the only line on stderr

    def on_progress(p):
        nonlocal bar
        if bar is None:
            bar = tqdm(total=p.total, initial=p.step, unit="step", disable=args.quiet, dynamic_ncols=True)
        bar.n = p.step
        bar.set_postfix_str(f"{p.stage} loss {p.loss:.4f}", refresh=False)
        bar.refresh()

    try:
        result = generate(config, out_dir, Callbacks(on_progress, None, lambda: stop["requested"]), args.resume)
    finally:
        if bar is not None:
            bar.close()
        signal.signal(signal.SIGINT, previous_handler)
    print(f"wrote {result.out_dir}/mesh.ply ({result.vertices} vertices, {result.faces} faces) "
          f"in {result.seconds:.0f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "generate":
            return run_generate(args)
    except CancelledError as exc:
        print(f"cancelled: {exc}", file=sys.stderr)
        return 130
    except DreamsculptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
