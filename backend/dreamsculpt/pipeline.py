"""A whole run: build the prior, optimise, mesh, and write the results into a folder.

Used by the CLI today and by the job server next; it never prints, it reports through
callbacks, and every user mistake is a `DreamsculptError`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import __version__
from .config import PRIORS, RunConfig
from .errors import DreamsculptError
from .guidance.base import Guidance
from .guidance.image_sets import ImageSet
from .mesh import export_mesh, extract_mesh
from .models import ModelCache
from .optimize import Callbacks, Progress, Trainer
from .preview import save_preview, save_turntable

CHECKPOINT = "checkpoint.pt"


@dataclass
class RunResult:
    out_dir: Path
    vertices: int
    faces: int
    seconds: float
    threshold: float


def fit_cameras(config: RunConfig, images: ImageSet) -> None:
    """Sample training cameras where the references were taken from (same elevations,
    distances and FOVs): space no reference sees would otherwise be filled in."""
    if not images.has_poses:
        return
    cam = config.camera
    cam.elevation_deg = (float(images.elevation_deg.min()), float(images.elevation_deg.max()))
    cam.distance = (float(images.distance.min()), float(images.distance.max()))
    cam.fov_deg = (float(images.fov_deg.min()), float(images.fov_deg.max()))
    views = sorted({(round(float(a), 3), round(float(e), 3)) for a, e in zip(images.azimuth_deg, images.elevation_deg)})
    cam.anchors = tuple(views)


def albedo_only(config: RunConfig) -> None:
    """Reference images carry their lighting baked in (the built-in library: a light fixed in
    the world), so random-light shading would contradict them: render albedo only."""
    config.shading.p_albedo, config.shading.p_lambertian, config.shading.p_textureless = 1.0, 0.0, 0.0
    config.train.lambda_orient = 0.0


def build_guidance(config: RunConfig, models: ModelCache | None = None) -> tuple[Guidance, str]:
    """The prior the config names, and a one-line description of it for run.json. With a
    `models` cache, heavy parts (the shape library, SD's networks) are loaded once and reused."""
    g = config.guidance
    models = models if models is not None else ModelCache()
    if not g.prompt.strip() and g.prior != "references":
        raise DreamsculptError('The prompt is empty: say what to make, e.g. dreamsculpt generate "a red cube" --prior builtin.')
    if g.prior == "builtin":
        from .guidance.reference import ReferencePrior
        from .guidance.shapes import COLOURS, SHAPES, builtin_library, match_prompt
        # Match first: a prompt naming no shape fails before any rendering.
        labels = set(match_prompt(g.prompt, [f"{c} {s}" for s in SHAPES for c in COLOURS]))
        res = config.render.resolution
        library = models.get(f"builtin shapes {res} px", lambda: builtin_library(res))
        condition = torch.tensor([label in labels for label in library.labels])
        fit_cameras(config, library)
        albedo_only(config)
        return ReferencePrior(library, condition, g), f"builtin: {', '.join(sorted(labels))}"
    if g.prior == "references":
        from .guidance.reference import ReferencePrior
        from .guidance.references import load_reference_folder
        if not g.references:
            raise DreamsculptError("--prior references needs --references DIR: a folder of square PNG/JPG images.")
        images = load_reference_folder(g.references, config.render.resolution)
        fit_cameras(config, images)
        albedo_only(config)
        posed = "with poses" if images.has_poses else "without poses"
        return (ReferencePrior(images, torch.ones(len(images), dtype=torch.bool), g),
                f"references: {len(images)} images {posed} from {g.references}")
    if g.prior == "sd":
        from .devices import resolve_device, resolve_dtype
        from .guidance.stable_diffusion import StableDiffusionGuidance, load_sd_components
        device = resolve_device(g.device)
        dtype = resolve_dtype(g.fp16, device)
        key = f"sd {g.model} {device} {str(dtype).replace('torch.', '')}"
        components = models.get(key, lambda: load_sd_components(g.model, device, dtype))
        guidance = StableDiffusionGuidance(g, device, components)
        return guidance, f"sd: {g.model}"
    raise DreamsculptError(f"Unknown prior {g.prior!r}: choose one of {', '.join(PRIORS)}.")


def generate(config: RunConfig, out_dir: Path, callbacks: Callbacks | None = None,
             resume: bool = False, models: ModelCache | None = None) -> RunResult:
    """Optimise a field for `config` and write mesh.ply, mesh.glb (mesh.obj), preview.png,
    turntable.gif and run.json into `out_dir`. A checkpoint is kept there for --resume.
    `models` (the job server's) keeps loaded priors for the next run."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    checkpoint = out_dir / CHECKPOINT
    if resume and not checkpoint.exists():
        raise DreamsculptError(f"Nothing to resume: {checkpoint} does not exist. Run without --resume.")
    guidance, description = build_guidance(config, models)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DreamsculptError(f"Cannot create the output folder {out_dir}: {exc.strerror}. Pick another --out.") from exc
    trainer = Trainer(config, guidance, callbacks, checkpoint)
    if resume:
        trainer.load_checkpoint(checkpoint)
    field = trainer.run()
    report = (callbacks or Callbacks()).on_progress
    if report:
        report(Progress(trainer.step_index, config.train.steps, trainer.loss_ema, time.perf_counter() - started, 0.0, "meshing"))
    mesh, threshold = extract_mesh(field, config.mesh, trainer.occupancy)
    if report:
        report(Progress(trainer.step_index, config.train.steps, trainer.loss_ema, time.perf_counter() - started, 0.0, "saving"))
    export_mesh(mesh, out_dir, obj=config.mesh.export_obj)
    save_preview(trainer, out_dir / "preview.png")
    save_turntable(trainer, out_dir / "turntable.gif")
    seconds = time.perf_counter() - started
    _write_run_json(out_dir, config, description, guidance, trainer, mesh, threshold, seconds)
    trainer.save_checkpoint()  # the final field, for re-meshing or a longer --resume
    return RunResult(out_dir, len(mesh.vertices), len(mesh.faces), seconds, threshold)


def _write_run_json(out_dir, config, description, guidance, trainer, mesh, threshold, seconds) -> None:
    timings = trainer.timings
    steps = max(timings["steps"], 1)
    record = {
        "dreamsculpt_version": __version__,
        "prompt": config.guidance.prompt, "negative": config.guidance.negative,
        "prior": config.guidance.prior, "prior_detail": description,
        "model": config.guidance.model if config.guidance.prior == "sd" else None,
        "seed": config.train.seed, "steps": config.train.steps,
        "seconds": round(seconds, 2), "device": str(getattr(guidance, "device", "cpu")),
        "vertices": len(mesh.vertices), "faces": len(mesh.faces), "threshold": threshold,
        "ms_per_step": {k: round(1e3 * timings[k] / steps, 2) for k in ("occupancy", "render", "guidance", "backward")},
        "config": config.to_dict(),
    }
    tmp = out_dir / "run.json.tmp"
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(out_dir / "run.json")
