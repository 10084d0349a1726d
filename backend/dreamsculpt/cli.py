"""`dreamsculpt generate PROMPT`: text to a coloured mesh; `dreamsculpt serve`: the job server.

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
from .config import DEFAULT_SD_MODEL, LIMITS, PRESETS, PRIORS, RunConfig, build_config
from .errors import CancelledError, DreamsculptError
from .server.settings import DEFAULT_HOST, DEFAULT_IDLE_RELEASE_S, DEFAULT_PORT, ServerSettings, load_or_create_token


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

    srv = sub.add_parser("serve", help="run the local job server the Blender add-on talks to")
    srv.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST}, this machine only)")
    srv.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 picks a free one)")
    srv.add_argument("--data-dir", type=Path, help="where jobs and the log are kept (default: the platform's data folder)")
    srv.add_argument("--allow-remote", action="store_true", help="allow a --host other machines can reach (token still required)")
    srv.add_argument("--device", default="auto", help="where jobs run: auto, cpu, cuda, cuda:N or mps")
    srv.add_argument("--idle-release", type=float, default=DEFAULT_IDLE_RELEASE_S, metavar="SECONDS",
                     help="free loaded models after this long without a job (0: never)")
    sub.add_parser("token", help="print the job server's access token (created if there is none)")
    return parser


def config_from_args(args: argparse.Namespace) -> RunConfig:
    for name in ("steps", "resolution", "mesh_resolution", "max_faces"):
        value, low = getattr(args, name), LIMITS[name][0]
        if value is not None and value < low:
            raise DreamsculptError(f"--{name.replace('_', '-')} must be at least {low} (got {value}).")
    optional = {"max_faces": args.max_faces} if args.max_faces is not None else {}
    return build_config(args.prompt, prior=args.prior, negative=args.negative, model=args.model,
                        references=args.references, preset=args.preset, seed=args.seed, steps=args.steps,
                        guidance_scale=args.guidance_scale, resolution=args.resolution,
                        mesh_resolution=args.mesh_resolution, threshold=args.threshold, obj=args.obj,
                        device=args.device, fp16=args.fp16, **optional)


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
        if args.command == "serve":
            from .server.serve import serve

            return serve(ServerSettings(args.host, args.port, args.data_dir, args.allow_remote, args.device,
                                        args.idle_release))
        if args.command == "token":
            print(load_or_create_token())
            return 0
    except CancelledError as exc:
        print(f"cancelled: {exc}", file=sys.stderr)
        return 130
    except DreamsculptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
