"""What a scene walk takes from the scene, on the main thread: the camera path (the active
camera's animation every k-th frame of the frame range, or a preset move from the camera as
it is) and the start frame (the camera's render of the scene and its depth, at the path's first
frame). The current frame is put back afterwards, as every render setting is (capture.py).
"""

from __future__ import annotations

import time

import bpy

from . import capture
from .client import BackendError
from .job_requests import JobImage, WalkPath
from .preferences import user_folder
from .walks import depth_path

#: The longest path the backend takes (LIMITS["walk_frames"]).
MAX_PATH_FRAMES = 1000
#: The frames' aspect (width / height) the backend takes.
ASPECT_RANGE = (0.25, 4.0)


def scene_aspect(scene) -> float:
    """Width / height of the scene's render (pixel aspect included), as the camera frames it."""
    r = scene.render
    aspect = r.resolution_x * r.pixel_aspect_x / (r.resolution_y * r.pixel_aspect_y)
    low, high = ASPECT_RANGE
    if not low <= aspect <= high:
        raise BackendError(f"The render is {r.resolution_x}x{r.resolution_y} (aspect {aspect:.2f}); a scene walk "
                           f"takes aspects from {low} to {high}. Change Output > Resolution.")
    return aspect


def path_frames(scene, every: int) -> list[int]:
    """The timeline frames of the path: every `every`-th frame from the scene's start to its end."""
    frames = list(range(scene.frame_start, scene.frame_end + 1, every))
    if len(frames) < 2:
        raise BackendError(f"Frames {scene.frame_start}-{scene.frame_end} every {every} give a path of "
                           f"{len(frames)} camera: a walk needs at least 2. Widen the frame range, lower Every k "
                           "Frames, or use a Preset Move.")
    if len(frames) > MAX_PATH_FRAMES:
        raise BackendError(f"Frames {scene.frame_start}-{scene.frame_end} every {every} give {len(frames)} cameras; "
                           f"a walk takes at most {MAX_PATH_FRAMES}. Raise Every k Frames.")
    return frames


def _spec(camera, depsgraph) -> dict:
    """The camera as evaluated now (animation, constraints and parents applied)."""
    return capture.camera_spec(camera.evaluated_get(depsgraph)).to_json()


def camera_path(context, s) -> WalkPath:
    """The walk's cameras from the settings `s`: the active camera at each path frame (the
    current frame is put back), or the camera as it is now for a preset move."""
    scene = context.scene
    camera = capture.active_camera(scene)
    aspect = scene_aspect(scene)
    if s.walk_path == "PRESET":
        return WalkPath(camera=_spec(camera, context.evaluated_depsgraph_get()), aspect=aspect, source=camera.name,
                        frame_start=scene.frame_start, frame_step=1)
    frames = path_frames(scene, s.walk_every)
    current, subframe = scene.frame_current, scene.frame_subframe
    specs = []
    try:
        for frame in frames:
            scene.frame_set(frame)
            specs.append(_spec(camera, context.evaluated_depsgraph_get()))
    finally:
        scene.frame_set(current, subframe=subframe)
    return WalkPath(cameras=specs, aspect=aspect, source=camera.name, frame_start=frames[0], frame_step=s.walk_every)


def start_render(context, s, walk: WalkPath) -> JobImage:
    """The start frame: the active camera's render at the path's first frame (a preset move:
    the current frame), opaque, with its view depth beside it; kept in the add-on's captures
    folder for Run Again. The frames' aspect becomes the render's own (the backend checks that
    they agree; rounding to whole pixels moves it a little)."""
    scene = context.scene
    camera = capture.active_camera(scene)
    name = bpy.path.clean_name(camera.name)
    path = user_folder("captures") / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}-walk.png"
    current, subframe = scene.frame_current, scene.frame_subframe
    try:
        if walk.cameras is not None:
            scene.frame_set(walk.frame_start)
        width, height = capture.render_with_depth(scene, path, s.walk_resolution, s.capture_samples)
    finally:
        scene.frame_set(current, subframe=subframe)
    walk.aspect = width / height
    return JobImage(str(path), camera.name, depth_path=str(depth_path(path)))


def walk_job(context, s) -> tuple[WalkPath, JobImage | None]:
    """The path, and the start render when the walk starts from the scene (None: the prompt)."""
    walk = camera_path(context, s)
    image = start_render(context, s, walk) if s.walk_start == "RENDER" else None
    return walk, image
