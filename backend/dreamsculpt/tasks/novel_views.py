"""One picture (and the camera that took it) → images of the object from around it (GeNVS-
style novel views), each with its camera in the world.

    request → config → the picture in the canonical frame → target cameras → image prior's
    sampler → RGBA views, contact sheet, views.json → run.json
"""

from __future__ import annotations

import time
from pathlib import Path

from ..callbacks import Callbacks, Progress
from ..config import RunConfig
from ..models import ModelCache
from ..records import PriorRecord, RunRecord, TaskResult, ViewsOutputs, write_json
from ..requests import NovelViewsRequest
from . import stages


def view_offsets(request: NovelViewsRequest) -> list[tuple[float, float]]:
    """(d_azimuth, d_elevation) of every view in degrees, the reference (0, 0) first: the views
    asked for, else a ring of `count`."""
    if request.views:
        return [(0.0, 0.0)] + [(v.azimuth_deg, v.elevation_deg) for v in request.views]
    return [(360.0 * k / request.count, 0.0) for k in range(request.count)]


def total_steps(request: NovelViewsRequest) -> int:
    """Denoising steps over every made view (the reference is not made)."""
    return (len(view_offsets(request)) - 1) * request.to_config().image.sample_steps


def run(request: NovelViewsRequest, out_dir: Path, callbacks: Callbacks | None = None,
        models: ModelCache | None = None, *, device: str = "auto", resume: bool = False,
        image: Path | None = None, config: RunConfig | None = None) -> TaskResult:
    """view_00.png is the picture at `image` (resampled), view_01.png... are sampled by the
    prior; views.json gives every view's camera in the canonical frame and in the world (a
    Blender camera matrix). Sampling is short and keeps no checkpoint: `resume` is unused."""
    # The engine (torch) is imported when a run starts: looking a task up stays light.
    import torch

    from ..cameras import Cameras
    from ..image_priors import picture_prior
    from ..picture import alpha_over_white, picture_view, save_rgba, straight_rgba
    from ..preview import save_contact_sheet

    started = time.perf_counter()
    callbacks = callbacks or Callbacks()
    config = config or request.to_config(device, image or "")
    view = picture_view(config.image)
    ref = view.camera
    offsets = view_offsets(request)
    az = torch.tensor([float(ref.azimuth_deg[0]) + a for a, _ in offsets])
    el = torch.tensor([float(ref.elevation_deg[0]) + e for _, e in offsets]).clamp(-89.0, 89.0)
    targets = Cameras.from_orbit(az, el, ref.distance, ref.fov_deg)
    steps = config.image.sample_steps

    def on_step(done: int, total: int) -> None:
        if callbacks.on_progress:
            elapsed = time.perf_counter() - started
            callbacks.on_progress(Progress(done, total, 0.0, elapsed, elapsed / max(done, 1) * (total - done),
                                           "sampling"))

    prior = picture_prior(config.guidance, view, models)
    sampler = prior.sampler(targets[1:], config.image.size, request.autoregressive, request.neighbours)
    made = sampler.sample(targets[1:], steps, torch.Generator().manual_seed(request.seed), on_step,
                          callbacks.should_cancel)

    out_dir = stages.make_folder(out_dir)
    rgb, mask = view.resized(made.shape[-1])
    images = torch.stack([straight_rgba(rgb, mask)] + [alpha_over_white(i) for i in made.cpu().float()])
    save_rgba(view.rgba, out_dir / "reference.png")
    placement = stages.placement(view)
    world = view.to_world(targets.c2w)
    entries = []
    for k, ((d_az, d_el), picture) in enumerate(zip(offsets, images)):
        save_rgba(picture, out_dir / f"view_{k:02d}.png")
        entries.append({"file": f"view_{k:02d}.png", "d_azimuth_deg": d_az, "d_elevation_deg": d_el,
                        "azimuth_deg": float(targets.azimuth_deg[k]), "elevation_deg": float(targets.elevation_deg[k]),
                        "distance": float(targets.distance[k]), "fov_deg": float(targets.fov_deg[k]),
                        "c2w": targets.c2w[k].tolist(), "matrix_world": world[k].tolist()})
    save_contact_sheet(images, out_dir / "novel_views.png")
    write_json(out_dir / "views.json", {"placement": placement.matrix, "reference": placement.reference,
                                        "views": entries})

    seconds = time.perf_counter() - started
    outputs = ViewsOutputs(views=len(offsets), sample_steps=steps,
                           seconds_per_view=round(seconds / max(len(offsets) - 1, 1), 3))
    record = RunRecord(kind=request.kind, request=request.model_dump(mode="json"),
                       prior=PriorRecord(request.prior, prior.description, prior.model), seed=request.seed,
                       seconds=seconds, device=str(made.device), outputs=outputs, config=config.to_dict(),
                       placement=placement)
    record.write(out_dir)
    return TaskResult(out_dir, record)
