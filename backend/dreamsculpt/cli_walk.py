"""`dreamsculpt scene-walk PROMPT`: the scene walk's command line (its options are the fields of
requests.SceneWalkRequest, as every command's are; cli.py builds and runs the request)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .config import DEFAULT_DEPTH_MODEL, DEFAULT_INPAINT_MODEL, MOTIONS, WALK_PRIORS
from .errors import DreamsculptError


def add_scene_walk(sub, add_run_options) -> None:
    walk = sub.add_parser("scene-walk", help="a walk through a scene made as it goes (SceneScape), along a "
                                             "camera path")
    walk.set_defaults(kind="scene_walk")
    walk.add_argument("prompt", help='what the scene is, e.g. "a room with a red table"')
    walk.add_argument("--path", type=Path, metavar="PATH.json",
                      help="the cameras, one per frame (a JSON list of Blender cameras as --camera takes them); "
                           "the first is the start view")
    walk.add_argument("--camera", type=Path, metavar="CAM.json", help="or a preset move from this camera (with --motion)")
    walk.add_argument("--motion", choices=MOTIONS, help="forward/backward (metres a frame), pan/orbit (degrees a "
                                                        "frame, to the right)")
    walk.add_argument("--frames", type=int, help="frames of a preset move, the start included (default 20)")
    walk.add_argument("--step", type=float, help="a preset move's step per frame (default 0.1 m or 5 degrees)")
    walk.add_argument("--start-image", dest="image", type=Path, metavar="IMAGE",
                      help="the first frame (e.g. a render of your scene from the first camera); default: made "
                           "from the prompt")
    walk.add_argument("--start-depth", type=Path, metavar="DEPTH",
                      help="the start image's depth: a 16-bit PNG in millimetres or a float32 .npy in metres, "
                           "view depth (it fixes the scene's scale)")
    walk.add_argument("--prior", choices=WALK_PRIORS, default="sd",
                      help="sd: Stable Diffusion inpainting and a depth model; builtin: offline rooms; references: "
                           "your posed RGB-D frames (--references DIR)")
    walk.add_argument("--references", metavar="DIR", help="folder with frames.json: RGB-D frames and their cameras")
    walk.add_argument("--model", default=DEFAULT_INPAINT_MODEL,
                      help="inpainting model: hub id, diffusers folder or .safetensors/.ckpt file")
    walk.add_argument("--depth-model", default=DEFAULT_DEPTH_MODEL, help="depth model: hub id or transformers folder")
    walk.add_argument("--resolution", type=int, help="frames' longer side in pixels (default 512 for sd, else 256)")
    walk.add_argument("--aspect", type=float, help="frames' width / height (default: the start image's, else 1)")
    walk.add_argument("--steps", type=int, help="inpainting denoising steps per frame (default 30)")
    walk.add_argument("--candidates", type=int, help="inpaint this many a frame, keep the best seam (default 1)")
    walk.add_argument("--max-faces", dest="walk_max_faces", type=int,
                      help="decimate the scene mesh to half of this when it grows past it (default 2000000)")
    walk.add_argument("--resume", action="store_true", help="continue from the last finished frame in --out")
    add_run_options(walk, "out/<prompt>", "classifier-free guidance of the inpainting (default 7.5)")


def read_path(path: Path) -> list:
    """--path FILE: the list of cameras."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DreamsculptError(f"--path {path} does not exist. Pass a JSON list of Blender cameras (matrix_world, "
                               "lens, sensor_width, sensor_height...), one per frame.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DreamsculptError(f"Cannot read --path {path}: {getattr(exc, 'strerror', None) or exc}.") from None
    except json.JSONDecodeError as exc:
        raise DreamsculptError(f"--path {path} is not valid JSON ({exc.msg} at line {exc.lineno}, column "
                               f"{exc.colno}).") from None
    if not isinstance(data, list):
        raise DreamsculptError(f"--path {path} must hold a JSON list of cameras, one per frame.")
    return data


def path_problem(loc: tuple, message: str, args: argparse.Namespace) -> str | None:
    """A refused camera of --path, named by its frame."""
    if loc[0] == "cameras" and len(loc) > 1 and isinstance(loc[1], int):
        where = ".".join(map(str, loc[2:])) or "the camera"
        return f"--path {args.path}: camera {loc[1] + 1}: {where}: {message}"
    if loc[0] == "cameras":
        return f"--path {args.path}: {message}"
    return None
