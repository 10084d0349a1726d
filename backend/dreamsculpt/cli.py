"""`dreamsculpt generate PROMPT`: text to a coloured mesh; `image-to-3d IMAGE`, `novel-views
IMAGE`: one image to a mesh or to views around it; `scene-walk PROMPT`: a scene made along a
camera path; `dreamsculpt serve`: the job server; `dreamsculpt models`: the diffusion models in the
Hugging Face cache (list, download, remove).

User errors print one line (`error: ...`) and exit 1; Ctrl-C stops after the current step,
keeps a checkpoint and exits 130 (continue with --resume).
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
from pathlib import Path

from . import __version__
from .cli_batch import add_batch, run_batch
from .cli_models import add_models, run_models
from .cli_walk import add_scene_walk, path_problem, read_path
from .config import (
    BACKGROUNDS,
    DEFAULT_MODELS,
    DEFAULT_SD_MODEL,
    DEFAULT_ZERO123_MODEL,
    IMAGE_PRIORS,
    ORIGINS,
    PRESETS,
    PRIORS,
    SCORES,
    T_SCHEDULES,
    ZERO123_VARIANTS,
)
from .errors import CancelledError, DreamsculptError
from .server.settings import (
    DEFAULT_HOST,
    DEFAULT_IDLE_RELEASE_S,
    DEFAULT_PORT,
    EXECUTORS,
    ServerSettings,
    load_or_create_token,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dreamsculpt", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"dreamsculpt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    # Each command runs one kind of task (tasks.TASKS); its options are the request's fields.
    gen = sub.add_parser("generate", help="text (or a reference set) to a coloured mesh")
    gen.set_defaults(kind="text_to_3d")
    gen.add_argument("prompt", help='what to make, e.g. "a red cube"')
    gen.add_argument("--prior", choices=PRIORS, default="sd",
                     help="sd: Stable Diffusion; mvdream: MVDream, four views at once (no faces on every side); "
                          "if: DeepFloyd IF stage I; these need their model (dreamsculpt models list). "
                          "builtin: offline analytic shapes; references: your own images (--references DIR)")
    gen.add_argument("--model", help="the prior's model: hub id, diffusers folder or weights file (default: "
                                     + ", ".join(f"{k} {v}" for k, v in DEFAULT_MODELS.items()) + ")")
    gen.add_argument("--references", metavar="DIR", help="folder of square images (+ optional poses.json)")
    gen.add_argument("--negative", default="", help="negative prompt (sd, mvdream, if)")
    gen.add_argument("--score", choices=SCORES, help="sds: Score Distillation Sampling (default); sjc: Score "
                                                     "Jacobian Chaining's perturb-and-average scoring")
    gen.add_argument("--t-schedule", choices=T_SCHEDULES,
                     help="diffusion times: random (default), anneal (the top falls to 0.5), dreamtime (one "
                          "time a step, falling: DreamTime)")
    gen.add_argument("--perp-neg", action="store_true",
                     help="Perp-Neg: the other views' prompts as negatives (sd and if priors)")
    _add_mesh_options(gen)
    _add_background_option(gen)
    _add_run_options(gen, "out/<prompt>", "classifier-free guidance (default: the prior's, 100 for sd)")

    img = sub.add_parser("image-to-3d", help="one image (and its camera) to a coloured mesh")
    img.set_defaults(kind="image_to_3d")
    _add_image_options(img)
    img.add_argument("--prompt", default="", help="what the image shows, for text guidance as well (Magic123)")
    img.add_argument("--text-weight", type=float, default=0.0, help="weight of the text guidance (needs --prompt)")
    img.add_argument("--text-model", default=DEFAULT_SD_MODEL, help="Stable Diffusion model of the text guidance")
    _add_mesh_options(img)
    _add_background_option(img)
    _add_run_options(img, "out/<image name>", "classifier-free guidance (default: the prior's)")

    views = sub.add_parser("novel-views", help="one image (and its camera) to views of the object around it")
    views.set_defaults(kind="novel_views")
    _add_image_options(views)
    views.add_argument("--count", type=int,
                       help="a ring of this many views, the reference (view_00) included (default 8)")
    views.add_argument("--views", metavar='"DAZ,DEL ..."',
                       help='views relative to the reference instead of a ring, e.g. "30,0 60,10 -30,20" '
                            "(degrees of azimuth,elevation)")
    views.add_argument("--autoregressive", action="store_true",
                       help="condition each view on the nearest views made so far (more consistent, slower)")
    views.add_argument("--neighbours", type=int, help="how many made views condition the next (default 2)")
    views.add_argument("--steps", type=int, help="denoising (DDIM) steps per view (default 50)")
    _add_run_options(views, "out/<image name>", "classifier-free guidance (default 3 for zero123)")

    srv = sub.add_parser("serve", help="run the local job server the Blender add-on talks to")
    srv.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST}, this machine only)")
    srv.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 picks a free one)")
    srv.add_argument("--data-dir", type=Path, help="where jobs and the log are kept (default: the platform's data folder)")
    srv.add_argument("--allow-remote", action="store_true", help="allow a --host other machines can reach (token still required)")
    srv.add_argument("--device", default="auto", help="where jobs run: auto, cpu, cuda, cuda:N or mps")
    srv.add_argument("--devices", metavar="LIST",
                     help="one worker per device, jobs on whichever is free: e.g. cuda:0,cuda:1 or cpu,cpu")
    srv.add_argument("--executor", choices=EXECUTORS, default="local",
                     help="local: worker processes on this machine; ray: tasks on a Ray cluster")
    srv.add_argument("--ray-address", metavar="ADDRESS",
                     help="the Ray cluster (e.g. 10.0.0.5:6379; default: RAY_ADDRESS, else start Ray here)")
    srv.add_argument("--ray-resource", default="GPU", metavar="NAME",
                     help="what one job takes on the cluster, one unit of it (default GPU)")
    srv.add_argument("--ray-jobs", type=int, metavar="N",
                     help="jobs in flight on Ray at once (default: the cluster's amount of --ray-resource)")
    srv.add_argument("--tls-cert", type=Path, metavar="PEM", help="serve https with this certificate (chain)")
    srv.add_argument("--tls-key", type=Path, metavar="PEM", help="the certificate's private key")
    srv.add_argument("--idle-release", type=float, default=DEFAULT_IDLE_RELEASE_S, metavar="SECONDS",
                     help="free loaded models after this long without a job (0: never)")
    sub.add_parser("token", help="print the job server's access token (created if there is none)")
    add_scene_walk(sub, _add_run_options)
    add_batch(sub)
    add_models(sub)
    return parser


def _add_mesh_options(p: argparse.ArgumentParser) -> None:
    """Options of the commands that optimise a field and mesh it."""
    p.add_argument("--preset", choices=sorted(PRESETS), default="standard")
    p.add_argument("--steps", type=int, help="optimisation steps (default: from the preset)")
    p.add_argument("--refine", type=int, metavar="STEPS",
                   help="mesh refinement steps after the field (0: off; default: from the preset, "
                        "on for --preset high)")
    p.add_argument("--resolution", type=int, help="render size during optimisation (default: from the preset)")
    p.add_argument("--mesh-resolution", type=int, help="marching-cubes grid size (default: from the preset)")
    p.add_argument("--threshold", type=float, help="density level of the surface (default: automatic)")
    p.add_argument("--max-faces", type=int,
                   help="face budget, applied before unwrapping (default: from the preset, 10k / 50k / 100k)")
    p.add_argument("--texture-size", type=int,
                   help="base-colour texture, texels per side (default: from the preset, 512 / 1024 / 2048)")
    p.add_argument("--normal-map", action="store_true", help="also bake a normal map from the dense surface")
    p.add_argument("--size", type=float, metavar="METRES", help="real-world size: the longest side, in metres")
    p.add_argument("--origin", choices=ORIGINS, default="center",
                   help="the object's origin: its bounding box's centre, or its bottom (it stands on the floor)")
    p.add_argument("--obj", action="store_true", help="also write mesh.obj, mesh.mtl and texture.png")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")


def _add_background_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--background", choices=BACKGROUNDS, default="auto",
                   help="what renders are composited over in training: auto (random colours where the prior "
                        "knows the objects' outlines: reference sets, builtin; learned for sd; else white)")


def _add_run_options(p: argparse.ArgumentParser, out: str, guidance: str) -> None:
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance-scale", type=float, help=guidance)
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cuda, cuda:1, mps or cpu")
    p.add_argument("--fp16", action="store_true", help="half precision for the diffusion model (CUDA only)")
    p.add_argument("--out", type=Path, help=f"output folder (default: {out})")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_image_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", type=Path, help="PNG, JPEG or WebP; its alpha (or a plain background) marks the object")
    p.add_argument("--camera", type=Path, metavar="FILE.json",
                   help="the camera that took the image: a JSON object with matrix_world (4x4, row-major), lens, "
                        "sensor_width, sensor_height, sensor_fit, shift_x, shift_y (Blender's), and optionally "
                        "depth (camera to object centre, world units)")
    p.add_argument("--elevation", type=float, help="without --camera: the view's elevation, degrees (default 0)")
    p.add_argument("--azimuth", type=float, help="without --camera: the view's azimuth, degrees (default -90, the front)")
    p.add_argument("--fov", type=float, help="without --camera: the field of view of the longer side (default 40)")
    p.add_argument("--prior", choices=IMAGE_PRIORS, default="zero123",
                   help="zero123: Zero-1-to-3 (needs the model); builtin: offline shapes fitted to the image")
    p.add_argument("--model", default=DEFAULT_ZERO123_MODEL, help="Zero123 model: hub id, diffusers folder or one file")
    p.add_argument("--variant", choices=ZERO123_VARIANTS, default="auto",
                   help="the model's camera embedding (auto: from its name)")


#: Options whose request field has another name (dest -> field path); the rest are the same.
FIELDS: dict[str, tuple[str, ...]] = {
    "mesh_resolution": ("mesh", "resolution"), "threshold": ("mesh", "threshold"),
    "max_faces": ("mesh", "max_faces"), "obj": ("mesh", "obj"), "texture_size": ("mesh", "texture_size"),
    "normal_map": ("mesh", "normal_map"), "size": ("mesh", "size"), "origin": ("mesh", "origin"),
    "elevation": ("elevation_deg",), "azimuth": ("azimuth_deg",), "fov": ("fov_deg",),
    "walk_max_faces": ("max_faces",),
}
#: Options of the run, not of the request (where and how it runs, and what the CLI shows).
RUN_OPTIONS = {"command", "kind", "out", "quiet", "device", "resume", "image", "camera", "views", "path",
               "start_depth"}


def request_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser):
    """The command's request, validated by the same pydantic model the job server uses, so both
    accept the same values; a refused value is a DreamsculptError naming the option. Nothing
    heavy is imported: a mistake is reported at once."""
    from pydantic import ValidationError

    from .tasks import TASKS

    model = TASKS[args.kind].request
    fields: dict = {"kind": args.kind}
    for dest, value in vars(args).items():
        if dest in RUN_OPTIONS or value is None:
            continue
        *parents, name = FIELDS.get(dest, (dest,))
        target = fields
        for part in parents:
            target = target.setdefault(part, {})
        target[name] = value
    if getattr(args, "image", None) is not None:
        fields["image"] = _read_image(args.image).sha256
    if getattr(args, "camera", None) is not None:
        given = [f"--{dest}" for dest in ("elevation", "azimuth", "fov") if getattr(args, dest, None) is not None]
        if given:
            raise DreamsculptError(f"--camera already gives the view: leave out {', '.join(given)} (for images "
                                   "without a camera).")
        fields["camera"], depth = read_camera(args.camera)
        if "depth" in model.model_fields:
            fields["depth"] = depth
    if getattr(args, "path", None) is not None:
        fields["cameras"] = read_path(args.path)
    if getattr(args, "start_depth", None) is not None and args.start_depth.suffix.lower() == ".png":
        fields["depth_image"] = _read_depth_png(args.start_depth).sha256
    if getattr(args, "views", None) is not None:
        fields["views"] = parse_views(args.views)
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise DreamsculptError(_option_problem(exc, args, model, parser)) from None


def _read_image(path: Path):
    """The image as the server's upload check sees it; a DreamsculptError if it is unusable."""
    from .server.uploads import decode_image

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DreamsculptError(f"The image {path} does not exist. Pass a PNG, JPEG or WebP file.") from None
    except OSError as exc:
        raise DreamsculptError(f"Cannot read the image {path}: {exc.strerror}.") from None
    return decode_image(data, f"The image {path}")


def _read_depth_png(path: Path):
    """The start depth as the server's depth upload sees it; a DreamsculptError if unusable."""
    from .server.uploads import decode_depth

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DreamsculptError(f"Cannot read the depth image {path}: {exc.strerror}.") from None
    return decode_depth(data, f"The depth image {path}")


def read_camera(path: Path) -> tuple[dict, float | None]:
    """--camera FILE: (the camera object, its optional top-level "depth")."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DreamsculptError(f"--camera {path} does not exist. Pass a JSON file with matrix_world, lens, "
                               "sensor_width and sensor_height (Blender's camera).") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DreamsculptError(f"Cannot read --camera {path}: {getattr(exc, 'strerror', None) or exc}.") from None
    except json.JSONDecodeError as exc:
        raise DreamsculptError(f"--camera {path} is not valid JSON ({exc.msg} at line {exc.lineno}, "
                               f"column {exc.colno}).") from None
    if not isinstance(data, dict):
        raise DreamsculptError(f"--camera {path} must hold a JSON object with matrix_world, lens, sensor_width "
                               "and sensor_height.")
    depth = data.pop("depth", None)
    return data, depth


def parse_views(text: str | None) -> list[dict] | None:
    """--views "30,0 60,10": (d_azimuth, d_elevation) pairs relative to the reference."""
    if text is None:
        return None
    views = []
    for pair in text.replace(";", " ").split():
        try:
            azimuth, elevation = (float(v) for v in pair.split(","))
        except ValueError:
            raise DreamsculptError(f'--views wants d_azimuth,d_elevation pairs of degrees separated by spaces, '
                                   f'e.g. "30,0 60,10" (got {pair!r}).') from None
        views.append({"azimuth_deg": azimuth, "elevation_deg": elevation})
    if not views:
        raise DreamsculptError('--views is empty: give d_azimuth,d_elevation pairs, e.g. "30,0 60,10".')
    return views


def _option_name(loc: tuple, parser: argparse.ArgumentParser, command: str) -> str:
    """The option (or argument) that sets the request field at `loc`."""
    fields = {path: dest for dest, path in FIELDS.items()}
    dest = fields.get(tuple(loc[:2]) if loc[0] == "mesh" else (loc[0],), loc[0])
    sub = next(a for a in parser._subparsers._group_actions if a.dest == "command").choices[command]
    for action in sub._actions:
        if action.dest == dest:
            return action.option_strings[0] if action.option_strings else (action.metavar or dest).upper()
    return "--" + str(dest).replace("_", "-")


def _option_problem(exc, args: argparse.Namespace, model, parser: argparse.ArgumentParser) -> str:
    """The first problem pydantic found, as one line naming the option (and its range)."""
    from .requests import ViewOffset, allowed_range

    error = exc.errors()[0]
    loc = tuple(error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    value = error.get("input")
    shown = isinstance(value, (int, float, str)) and not isinstance(value, bool)
    bounded = error["type"] in ("greater_than", "greater_than_equal", "less_than", "less_than_equal")
    if not loc:                                  # the request as a whole (e.g. neither --path nor --camera)
        return message[0].upper() + message[1:] + "."
    walk = path_problem(loc, message, args)
    if walk:
        return walk
    if loc[0] in ("camera", "depth"):
        where = ".".join(map(str, loc[1:])) if loc[0] == "camera" else "depth"
        got = f" (got {value})" if shown and error["type"] != "value_error" else ""
        return f"--camera {args.camera}: {where or 'the camera'}: {message}{got}"
    if loc[0] == "views" and len(loc) > 2:
        limits = allowed_range(ViewOffset, loc[2:])
        what = f"must be {limits} (got {value})" if bounded and limits else message
        return f"--views pair {int(loc[1]) + 1}: {str(loc[2]).removesuffix('_deg')}: {what}"
    option = _option_name(loc, parser, args.command)
    limits = allowed_range(model, loc) if bounded else None
    if limits:
        return f"{option} must be {limits} (got {value})."
    return f"{option}: {message}" + (f" (got {value})" if shown and error["type"] != "value_error" else "")


def run_task(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Every kind's command: the request, then its task, with a progress bar; prints the one
    line the task's result gives."""
    request = request_from_args(args, parser)   # before torch is imported
    from .tasks import task_of

    default = args.image.stem if getattr(args, "image", None) is not None else getattr(args, "prompt", "")
    out_dir = args.out or default_out_dir(default)
    task = task_of(request)
    inputs = {"depth_image": args.start_depth} if getattr(args, "start_depth", None) is not None else {}
    result = run_with_progress(args, lambda callbacks: task.run(
        request, out_dir, callbacks, device=args.device, resume=getattr(args, "resume", False),
        image=getattr(args, "image", None), **inputs))
    print(result.summary())
    return 0


def default_out_dir(prompt: str) -> Path:
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:60] or "run"
    return Path("out") / slug


def run_with_progress(args: argparse.Namespace, run):
    """`run(callbacks)` with a progress bar and a clean stop on the first Ctrl-C."""
    from tqdm import tqdm

    from .optimize import Callbacks

    stop = {"requested": False}

    def on_sigint(signum, frame):  # first Ctrl-C: stop cleanly; second: the default
        stop["requested"] = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous_handler = signal.signal(signal.SIGINT, on_sigint)
    bar = None  # opened once past loading, so a user error is the only line on stderr
    bar_counts_bytes = False   # a disabled (--quiet) tqdm keeps no `unit` to ask

    def on_progress(p):
        nonlocal bar, bar_counts_bytes
        downloading = p.stage == "downloading"   # a model the cache lacks: step and total are bytes
        if bar is not None and bar_counts_bytes != downloading:   # bytes, then steps: a bar each
            bar.close()
            bar = None
        if bar is None and p.step == 0 and p.stage == "loading":
            return
        if bar is None:
            bar = tqdm(total=p.total, initial=p.step, unit="B" if downloading else "step", unit_scale=downloading,
                       disable=args.quiet, dynamic_ncols=True)
            bar_counts_bytes = downloading
        bar.total, bar.n = p.total, p.step
        optimising = p.stage in ("optimising", "refining")
        bar.set_postfix_str(f"{p.stage} loss {p.loss:.4f}" if optimising else p.stage, refresh=False)
        bar.refresh()

    try:
        return run(Callbacks(on_progress, None, lambda: stop["requested"]))
    finally:
        if bar is not None:
            bar.close()
        signal.signal(signal.SIGINT, previous_handler)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "kind", None) is not None:
            return run_task(args, parser)
        if args.command == "serve":
            from .server.serve import serve

            return serve(ServerSettings(
                host=args.host, port=args.port, data_dir=args.data_dir, allow_remote=args.allow_remote,
                device=args.device, idle_release_s=args.idle_release, devices=args.devices or (),
                executor=args.executor, ray_address=args.ray_address, ray_resource=args.ray_resource,
                ray_jobs=args.ray_jobs, tls_cert=args.tls_cert, tls_key=args.tls_key))
        if args.command == "batch":
            return run_batch(args)
        if args.command == "models":
            return run_models(args)
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
