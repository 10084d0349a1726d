"""A walk's cameras: the path the artist animated (one Blender camera per frame) or a preset
move from one camera, as `Pinhole` cameras at the walk's frame size.

A CAMERA is a Blender camera as `--camera` takes it (requests.CameraSpec: matrix_world, lens,
sensor_width, sensor_height, sensor_fit, shift_x, shift_y); the frame size decides what the
sensor fit means, exactly as Blender's render resolution does.
"""

from __future__ import annotations

import math

import torch

from ..cameras import Pinhole
from ..config import MOTIONS
from ..errors import DreamsculptError
from ..picture import camera_from_spec

#: What one step of each move is when not given: metres for forward/backward, degrees otherwise.
DEFAULT_STEPS = {"forward": 0.1, "backward": 0.1, "orbit": 5.0, "pan": 5.0}
#: An orbit turns about the point this far (metres) ahead of the first camera.
ORBIT_RADIUS = 2.0


def frame_size(resolution: int, aspect: float) -> tuple[int, int]:
    """(width, height): the longer side `resolution` pixels, the other by `aspect` (width /
    height), both even."""
    if aspect >= 1.0:
        return resolution, max(2, 2 * round(resolution / aspect / 2))
    return max(2, 2 * round(resolution * aspect / 2)), resolution


def path_cameras(specs: list[dict], width: int, height: int) -> Pinhole:
    """The cameras of a path (CameraSpec dicts, the first one the start view) at width x height."""
    if len(specs) < 2:
        raise DreamsculptError(f"A scene walk needs a path of at least 2 cameras (got {len(specs)}). Animate the "
                               "camera over more frames, or use a preset move (--motion, --frames).")
    real = [camera_from_spec(spec, width, height) for spec in specs]
    return Pinhole(torch.stack([r.c2w for r in real]), torch.tensor([r.focal for r in real]),
                   torch.tensor([[r.cx, r.cy] for r in real]), width, height)


def preset_path(spec: dict, motion: str, frames: int, step: float | None, width: int, height: int) -> Pinhole:
    """`frames` cameras from `spec` moving by `step` per frame: forward or backward along the
    view (metres), pan (turning right about world Z, degrees) or orbit (around the point
    ORBIT_RADIUS ahead, to the right, degrees)."""
    if motion not in MOTIONS:
        raise DreamsculptError(f"Unknown motion {motion!r}; use one of {', '.join(MOTIONS)}.")
    if frames < 2:
        raise DreamsculptError(f"A scene walk needs at least 2 frames (got {frames}).")
    start = camera_from_spec(spec, width, height)
    step = DEFAULT_STEPS[motion] if step is None else step
    c2w = start.c2w
    forward = -c2w[:3, 2]
    matrices = []
    for k in range(frames):
        m = c2w.clone()
        if motion in ("forward", "backward"):
            m[:3, 3] = c2w[:3, 3] + (1 if motion == "forward" else -1) * k * step * forward
        else:
            turn = _turn_z(-math.radians(k * step))                  # negative about +Z: to the right
            m[:3, :3] = turn @ c2w[:3, :3]
            if motion == "orbit":
                pivot = c2w[:3, 3] + ORBIT_RADIUS * forward
                m[:3, 3] = pivot + turn @ (c2w[:3, 3] - pivot)
        matrices.append(m)
    return Pinhole(torch.stack(matrices), torch.full((frames,), start.focal),
                   torch.tensor([[start.cx, start.cy]] * frames), width, height)


def camera_specs(cameras: Pinhole, template: dict) -> list[dict]:
    """Each camera as a CAMERA (the template's lens and sensor, its own matrix_world): what
    cameras.json holds, so a frame can be matched to its camera in Blender."""
    base = {k: v for k, v in template.items() if k != "matrix_world"}
    return [{**base, "matrix_world": cameras.c2w[k].tolist()} for k in range(len(cameras))]


def _turn_z(angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
