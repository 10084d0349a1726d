"""A walk through a scene made as it goes (SceneScape / Text2Room), along a camera path.

    request -> frame size and cameras -> inpainter and depth model (or a posed RGB-D set's
    closed-form pair) -> start frame (the start image and its depth, or made from the prompt)
    -> per camera: render the scene, inpaint its holes, align the predicted depth, fuse the new
    pixels (scenes/walk.py), write the frame, checkpoint -> scene.ply / scene.glb, the walk's
    video, cameras.json -> run.json

The world frame is the cameras' own (Blender world, metres): the scene lands where they are.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..callbacks import Callbacks, Progress
from ..config import LIMITS
from ..errors import CancelledError, DreamsculptError
from ..models import ModelCache
from ..records import PriorRecord, RunRecord, TaskResult, WalkOutputs, write_json
from ..requests import SceneWalkRequest
from . import stages

#: The walk's checkpoint in its output folder (the scene mesh and how many frames are done),
#: named as every kind's is, so the job server's resume finds it.
CHECKPOINT = stages.CHECKPOINT
DEFAULT_RESOLUTION = {"sd": 512, "builtin": 256, "references": 256}


def total_steps(request: SceneWalkRequest) -> int:
    """One step per frame."""
    return request.frame_count()


def run(request: SceneWalkRequest, out_dir: Path, callbacks: Callbacks | None = None,
        models: ModelCache | None = None, *, device: str = "auto", resume: bool = False,
        image: Path | None = None, depth_image: Path | None = None, config=None) -> TaskResult:
    """Walk the path; every frame is on disk (frames/, depth/) and in the checkpoint as soon as
    it is made, so a cancelled or killed walk resumes from its last finished frame."""
    import torch

    from ..devices import resolve_device
    from ..scenes.frames import read_depth, read_rgb, save_depth, save_rgb
    from ..scenes.outputs import write_scene, write_video
    from ..scenes.walk import WalkSettings, WalkState, next_frame, start_frame

    started = time.perf_counter()
    callbacks = callbacks or Callbacks()
    device = str(resolve_device(device))
    start_rgb = read_rgb(image) if image is not None and Path(image).is_file() else None
    start_depth = None
    if depth_image is not None:
        if start_rgb is None:
            raise DreamsculptError("A start depth needs its start image: pass --start-image with --start-depth.")
        start_depth = read_depth(Path(depth_image), (start_rgb.shape[-1], start_rgb.shape[-2]))
    width, height = _frame_size(request, start_rgb)
    cameras, specs = _cameras(request, width, height)
    start_rgb, start_depth = _resized(start_rgb, start_depth, width, height)

    checkpoint = stages.check_resume(out_dir, resume)
    state = WalkState.load(checkpoint) if resume else WalkState()
    if not state.frames_done:
        _report(callbacks, "loading", 0, len(cameras), started)
    inpainter, depth_model, prior = _models(request, cameras, models, device)
    out_dir = stages.make_folder(out_dir)
    (out_dir / "frames").mkdir(exist_ok=True)
    (out_dir / "depth").mkdir(exist_ok=True)
    settings = WalkSettings(request.prompt, max_faces=request.max_faces)

    for k in range(state.frames_done, len(cameras)):
        if callbacks.should_cancel and callbacks.should_cancel():
            raise CancelledError(f"stopped after frame {k} of {len(cameras)}; resume continues from there")
        camera = cameras[k]
        generator = torch.Generator().manual_seed(request.seed * 100_003 + k)   # per frame: resume-proof
        # Reported as frame k + 1 of the total while it is made ("inpainting 4/20").
        stage = lambda name, k=k: _report(callbacks, name, k + 1, len(cameras), started)  # noqa: E731
        if k == 0:
            made = start_frame(state, camera, start_rgb, start_depth, inpainter, depth_model, settings, generator)
        else:
            made = next_frame(state, camera, inpainter, depth_model, settings, generator, stage)
        save_rgb(made.rgb, out_dir / "frames" / f"{k:04d}.png")
        save_depth(made.depth, out_dir / "depth" / f"{k:04d}.png")
        state.records.append(_frame_record(k, made))
        state.save(checkpoint)
        if callbacks.on_preview:
            callbacks.on_preview(k + 1, made.rgb)
        _report(callbacks, "fusing", k + 1, len(cameras), started)

    _report(callbacks, "saving", len(cameras), len(cameras), started)
    files = write_scene(state.scene, out_dir)
    video = write_video(sorted((out_dir / "frames").glob("*.png"))[:len(cameras)], out_dir)
    write_json(out_dir / "cameras.json", specs)
    seconds = time.perf_counter() - started
    outputs = WalkOutputs(frames=len(cameras), width=width, height=height, vertices=files.vertices,
                          faces=files.faces, video=video.name, per_frame=state.records)
    record = RunRecord(kind=request.kind, request=request.model_dump(mode="json"),
                       prior=PriorRecord(request.prior, prior, getattr(inpainter, "model", None)),
                       seed=request.seed, seconds=seconds, device=device, outputs=outputs, config={})
    record.write(out_dir)
    return TaskResult(out_dir, record)


# --- The run's parts ---------------------------------------------------------------------------

def _frame_size(request: SceneWalkRequest, start_rgb) -> tuple[int, int]:
    """(width, height): the longer side the resolution asked for (or the prior's default), the
    aspect the start image's, or the one asked for (the two must agree), else square."""
    from ..scenes.paths import frame_size

    resolution = request.resolution or DEFAULT_RESOLUTION[request.prior]
    if start_rgb is not None and request.resolution is None:        # the start image's own size
        resolution = min(max(start_rgb.shape[-2:]), LIMITS["walk_resolution"][1])
    aspect = request.aspect
    if start_rgb is not None:
        h, w = start_rgb.shape[-2:]
        if aspect is not None and abs(w / h - aspect) > 0.01 * aspect:
            raise DreamsculptError(f"The start image is {w}x{h} (aspect {w / h:.3f}) but the frames were asked "
                                   f"at aspect {aspect:g}: render the start image at the camera's aspect, or "
                                   "leave the aspect out.")
        aspect = w / h
    return frame_size(resolution, aspect or 1.0)


def _cameras(request: SceneWalkRequest, width: int, height: int):
    """(the cameras as a Pinhole batch, each as a CAMERA for cameras.json)."""
    from ..scenes.paths import camera_specs, path_cameras, preset_path

    if request.cameras is not None:
        specs = [c.model_dump() for c in request.cameras]
        return path_cameras(specs, width, height), specs
    spec = request.camera.model_dump()
    cameras = preset_path(spec, request.motion, request.frames, request.step, width, height)
    return cameras, camera_specs(cameras, spec)


def _resized(rgb, depth, width: int, height: int):
    """The start image (area filtered) and its depth (nearest: no depth between two surfaces)
    at the frame size; None stays None."""
    import torch.nn.functional as F

    if rgb is None or tuple(rgb.shape[-2:]) == (height, width):
        return rgb, depth
    rgb = F.interpolate(rgb[None], size=(height, width), mode="area" if rgb.shape[-1] > width else "bilinear")[0]
    if depth is not None:
        depth = F.interpolate(depth[None, None], size=(height, width), mode="nearest-exact")[0, 0]
    return rgb, depth


def _models(request: SceneWalkRequest, cameras, models: ModelCache | None, device: str):
    """(inpainter, depth model, one line saying what they are)."""
    from ..devices import resolve_dtype

    if request.prior == "sd":
        from ..scenes.depth_models import load_depth_model
        from ..scenes.inpainting import load_inpainter

        dtype = resolve_dtype(request.fp16, device)
        cache = models or ModelCache()
        inpainter = cache.get(f"inpaint:{request.model}:{device}:{dtype}",
                              lambda: load_inpainter(request.model, device, dtype))
        inpainter.steps = request.steps or 30
        inpainter.candidates = request.candidates
        inpainter.guidance_scale = request.guidance_scale or 7.5
        depth = cache.get(f"depth:{request.depth_model}:{device}", lambda: load_depth_model(request.depth_model, device))
        return inpainter, depth, f"{inpainter.description}; {depth.description}"
    from ..scenes.room_prior import RoomSet, SetPrior

    if request.prior == "builtin":
        from ..scenes.rooms import room_for_prompt

        room = room_for_prompt(request.prompt)
        frames = RoomSet(room, cameras.width, cameras.height, float(cameras.focal[0]))
        what = f"built-in {room.name} ({len(frames)} RGB-D views)"
    else:
        from ..scenes.frames import ReferenceFrames

        frames = ReferenceFrames(request.references)
        what = f"references {request.references} ({len(frames)} RGB-D frames)"
    prior = SetPrior(frames, what, seed=request.seed)
    return prior, prior, f"closed-form inpainting and depth of the {what}"


def _report(callbacks: Callbacks, stage: str, done: int, total: int, started: float) -> None:
    if callbacks.on_progress:
        elapsed = time.perf_counter() - started
        eta = elapsed / done * (total - done) if done else 0.0
        callbacks.on_progress(Progress(done, total, 0.0, elapsed, eta, stage))


def _frame_record(index: int, made) -> dict:
    """What run.json says of one frame."""
    record = {"frame": index, "new_pixels": made.new_pixels, "new_faces": made.new_faces}
    if made.alignment is not None:
        a = made.alignment
        record.update(depth_scale=round(a.scale, 6), depth_shift=round(a.shift, 6), aligned_pixels=a.pixels,
                      depth_residual=round(a.residual, 6), fallback=a.fallback)
    return record
