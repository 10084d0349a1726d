"""One picture (and the camera that took it) → a coloured mesh placed where the camera saw it.

    request → config → the picture in the canonical frame → image prior (+ text SDS, Magic123)
    → optimise with reference-view losses → (refine) → mesh → run.json with the placement
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path

from ..callbacks import Callbacks
from ..config import REFERENCE_WEIGHTS, RunConfig
from ..models import ModelCache
from ..records import PriorRecord, RunRecord, TaskResult
from ..requests import ImageTo3DRequest
from . import stages


def total_steps(request: ImageTo3DRequest) -> int:
    """Optimisation steps (the request's, else its preset's)."""
    return request.to_config().train.steps


def run(request: ImageTo3DRequest, out_dir: Path, callbacks: Callbacks | None = None,
        models: ModelCache | None = None, *, device: str = "auto", resume: bool = False,
        image: Path | None = None, config: RunConfig | None = None) -> TaskResult:
    """Reference-view losses on colour and mask from the picture at `image`, plus a novel-view
    prior, then the mesh as text → 3D writes it, and reference.png. The mesh is in the canonical
    frame; run.json's "placement" maps it onto what the camera saw."""
    # The engine (torch) is imported when a run starts: looking a task up stays light.
    from ..guidance.base import CombinedGuidance
    from ..image_priors import around_picture, picture_prior
    from ..optimize import PictureTarget, Trainer, TrainingViews
    from ..picture import picture_view, save_rgba
    from ..priors import text_prior

    started = time.perf_counter()
    callbacks = callbacks or Callbacks()
    config = config or request.to_config(device, image or "")
    checkpoint = stages.check_resume(out_dir, resume)
    stages.report(callbacks, "loading", 0, config.train.steps, 0.0, started)

    view = picture_view(config.image)
    resolution = config.render.resolution

    def guidance_at(g, size: int):
        """The image prior for renders of `size` px (+ text SDS for detail, Magic123)."""
        prior = picture_prior(g, view, models).guidance(size, around_picture(view, TrainingViews.of(config)))
        guidance, description = prior.guidance, prior.description
        if request.text_weight > 0:
            text = text_prior(replace(g, prior="sd", guidance_scale=None), size, prior.views, models)
            guidance = CombinedGuidance([(guidance, 1.0), (text.guidance, request.text_weight)])
            description += f" + {text.description} x {request.text_weight:g}"
        return prior, guidance, description

    prior, guidance, description = guidance_at(config.guidance, resolution)
    fine = guidance_at(config.refine_guidance(), config.refine_prior_resolution)[1] if config.refine.steps else None

    rgb, mask = view.resized(resolution)
    default_rgb, default_mask = REFERENCE_WEIGHTS.get(request.prior, (1.0, 1.0))
    i = config.image
    target = PictureTarget(view.camera, rgb[None], mask[None],
                           default_rgb if i.lambda_rgb is None else i.lambda_rgb,
                           default_mask if i.lambda_mask is None else i.lambda_mask)
    out_dir = stages.make_folder(out_dir)
    save_rgba(view.rgba, out_dir / "reference.png")
    trainer = Trainer(config, guidance, callbacks, checkpoint, target, prior.views)
    outputs, transform = stages.optimise_and_mesh(trainer, out_dir, callbacks, resume, started, fine)

    record = RunRecord(kind=request.kind, request=request.model_dump(mode="json"),
                       prior=PriorRecord(request.prior, description, prior.model), seed=request.seed,
                       seconds=time.perf_counter() - started, device=str(guidance.device), outputs=outputs,
                       config=config.to_dict(), placement=stages.placement(view, transform),
                       reference_weights=(target.lambda_rgb, target.lambda_mask),
                       training_views=asdict(prior.views), ms_per_step=trainer.ms_per_step())
    record.write(out_dir)
    trainer.save_checkpoint()   # the final field, for re-meshing or a longer --resume
    return TaskResult(out_dir, record)
