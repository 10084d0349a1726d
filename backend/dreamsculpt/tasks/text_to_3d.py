"""Text (or a folder of images) → a coloured mesh: Score Distillation Sampling on a NeRF.

    request → config → prior (and the training views it wants) → optimise → (refine) → mesh
    → run.json
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from ..callbacks import Callbacks
from ..config import RunConfig
from ..models import ModelCache
from ..records import PriorRecord, RunRecord, TaskResult
from ..requests import TextTo3DRequest
from . import stages


def total_steps(request: TextTo3DRequest) -> int:
    """Optimisation steps (the request's, else its preset's)."""
    return request.to_config().train.steps


def run(request: TextTo3DRequest, out_dir: Path, callbacks: Callbacks | None = None,
        models: ModelCache | None = None, *, device: str = "auto", resume: bool = False,
        image: Path | None = None, config: RunConfig | None = None) -> TaskResult:
    """Optimise a field for `request` and write mesh.ply, mesh.glb (mesh.obj), preview.png,
    turntable.gif and run.json into `out_dir`, keeping a checkpoint there for `resume`.
    `models` (the job server's) keeps loaded priors for the next run. `image` is unused."""
    # The engine (torch) is imported when a run starts: looking a task up stays light.
    from ..optimize import Trainer, TrainingViews
    from ..priors import text_prior

    started = time.perf_counter()
    callbacks = callbacks or Callbacks()
    config = config or request.to_config(device)
    checkpoint = stages.check_resume(out_dir, resume)

    prior = text_prior(config.guidance, config.render.resolution, TrainingViews.of(config), models)
    # The fine stage's prior: the same one, at its resolution and lower noise (Magic3D).
    fine = None
    if config.refine.steps:
        fine = text_prior(config.refine_guidance(), config.refine_prior_resolution, TrainingViews.of(config), models)
    out_dir = stages.make_folder(out_dir)
    trainer = Trainer(config, prior.guidance, callbacks, checkpoint, views=prior.views)
    outputs, _ = stages.optimise_and_mesh(trainer, out_dir, callbacks, resume, started,
                                          fine.guidance if fine else None)

    record = RunRecord(kind=request.kind, request=request.model_dump(mode="json"),
                       prior=PriorRecord(request.prior, prior.description, prior.model), seed=request.seed,
                       seconds=time.perf_counter() - started, device=str(prior.guidance.device),
                       outputs=outputs, config=config.to_dict(), training_views=asdict(prior.views),
                       ms_per_step=trainer.ms_per_step())
    record.write(out_dir)
    trainer.save_checkpoint()   # the final field, for re-meshing or a longer --resume
    return TaskResult(out_dir, record)
