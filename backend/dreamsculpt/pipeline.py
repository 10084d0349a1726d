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
from .cameras import Cameras
from .config import IMAGE_PRIORS, KINDS, PRIORS, REFERENCE_WEIGHTS, RunConfig
from .errors import DreamsculptError
from .guidance.base import CombinedGuidance, Guidance
from .image_sets import ImageSet
from .mesh import export_mesh, extract_mesh
from .models import ModelCache
from .optimize import Callbacks, PictureTarget, Progress, Trainer
from .picture import (
    PictureView,
    alpha_over_white,
    picture_view,
    save_rgba,
    straight_rgba,
)
from .preview import save_contact_sheet, save_preview, save_turntable

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
        from .guidance.closed_form import ClosedFormPrior
        from .shapes.geometry import COLOURS, SHAPES
        from .shapes.library import builtin_library
        from .shapes.prompts import match_prompt
        # Match first: a prompt naming no shape fails before any rendering.
        labels = set(match_prompt(g.prompt, [f"{c} {s}" for s in SHAPES for c in COLOURS]))
        res = config.render.resolution
        library = models.get(f"builtin shapes {res} px", lambda: builtin_library(res))
        condition = torch.tensor([label in labels for label in library.labels])
        fit_cameras(config, library)
        albedo_only(config)
        return ClosedFormPrior(library, condition, g), f"builtin: {', '.join(sorted(labels))}"
    if g.prior == "references":
        from .guidance.closed_form import ClosedFormPrior
        from .image_folders import load_image_folder
        if not g.references:
            raise DreamsculptError("--prior references needs --references DIR: a folder of square PNG/JPG images.")
        images = load_image_folder(g.references, config.render.resolution)
        fit_cameras(config, images)
        albedo_only(config)
        posed = "with poses" if images.has_poses else "without poses"
        return (ClosedFormPrior(images, torch.ones(len(images), dtype=torch.bool), g),
                f"references: {len(images)} images {posed} from {g.references}")
    if g.prior == "sd":
        from .devices import resolve_device, resolve_dtype
        from .guidance.stable_diffusion import (
            StableDiffusionGuidance,
            load_sd_components,
        )
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
    _checkpoint(out_dir, resume)
    guidance, description = build_guidance(config, models)
    return _optimise(config, Path(out_dir), guidance, description, callbacks, resume, started)


def _checkpoint(out_dir: Path, resume: bool) -> Path:
    checkpoint = Path(out_dir) / CHECKPOINT
    if resume and not checkpoint.exists():
        raise DreamsculptError(f"Nothing to resume: {checkpoint} does not exist. Run without --resume.")
    return checkpoint


def _make_out_dir(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DreamsculptError(f"Cannot create the output folder {out_dir}: {exc.strerror}. Pick another --out.") from exc


def _optimise(config: RunConfig, out_dir: Path, guidance: Guidance, description: str,
              callbacks: Callbacks | None, resume: bool, started: float,
              reference: PictureTarget | None = None, extra: dict | None = None) -> RunResult:
    """The shared tail of the mesh kinds: optimise, mesh, write the files."""
    _make_out_dir(out_dir)
    checkpoint = out_dir / CHECKPOINT
    trainer = Trainer(config, guidance, callbacks, checkpoint, reference)
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
    _write_run_json(out_dir, config, description, guidance, trainer, mesh, threshold, seconds, extra)
    trainer.save_checkpoint()  # the final field, for re-meshing or a longer --resume
    return RunResult(out_dir, len(mesh.vertices), len(mesh.faces), seconds, threshold)


# --- Image kinds ---------------------------------------------------------------------------------

def fit_image_cameras(config: RunConfig, view: PictureView) -> None:
    """Novel-view cameras orbit at the reference's distance and field of view (Zero123 and the
    conditioned set are relative to it), over elevations that include the reference's."""
    cam = config.camera
    el = float(view.camera.elevation_deg[0])
    cam.distance = (float(view.camera.distance[0]),) * 2
    cam.fov_deg = (float(view.camera.fov_deg[0]),) * 2
    cam.elevation_deg = (max(-30.0, min(cam.elevation_deg[0], el - 20.0)), min(80.0, max(cam.elevation_deg[1], el + 20.0)))


def build_image_guidance(config: RunConfig, view: PictureView,
                         models: ModelCache | None = None) -> tuple[Guidance, str]:
    """The novel-view prior of an image kind: Zero123 (a model) or the built-in shapes fitted to
    the reference; plus text SDS (Magic123) when image.text_weight > 0."""
    g = config.guidance
    models = models if models is not None else ModelCache()
    if g.prior == "builtin":
        from .guidance.closed_form import ClosedFormPrior
        from .shapes.fitting import best_fit, conditioned_set

        fit = best_fit(view)
        images = conditioned_set(view, fit, config.render.resolution)
        fit_cameras(config, images)
        albedo_only(config)
        guidance: Guidance = ClosedFormPrior(images, torch.ones(len(images), dtype=torch.bool), g)
        description = f"builtin: {fit.describe()}"
    elif g.prior == "zero123":
        from .guidance.zero123 import Zero123Guidance

        components = _zero123(config, models)
        guidance = Zero123Guidance(g, components, view.resized(components.native_size)[0], view.camera)
        description = f"zero123: {g.zero123_model} ({components.variant})"
    else:
        raise DreamsculptError(f"Unknown prior {g.prior!r} for an image: choose one of {', '.join(IMAGE_PRIORS)}.")
    if config.image.text_weight > 0:
        if not g.prompt.strip():
            raise DreamsculptError("text_weight > 0 needs a prompt describing the object (Magic123-style text guidance).")
        text_config = RunConfig.from_dict(config.to_dict())
        text_config.guidance.prior = "sd"
        text_config.guidance.guidance_scale = None
        text, text_description = build_guidance(text_config, models)
        guidance = CombinedGuidance([(guidance, 1.0), (text, config.image.text_weight)])
        description += f" + {text_description} x {config.image.text_weight:g}"
    return guidance, description


def _zero123(config: RunConfig, models: ModelCache):
    from .devices import resolve_device, resolve_dtype
    from .guidance.zero123_loading import load_zero123_components

    g = config.guidance
    device = resolve_device(g.device)
    dtype = resolve_dtype(g.fp16, device)
    key = f"zero123 {g.zero123_model} {g.zero123_variant} {device} {str(dtype).replace('torch.', '')}"
    return models.get(key, lambda: load_zero123_components(g.zero123_model, device, dtype, g.zero123_variant))


def _placement_record(view: PictureView) -> dict:
    cam = view.camera
    return {"placement": view.placement.tolist(),
            "reference": {"file": "reference.png", "source": Path(view.source).name,
                          "azimuth_deg": float(cam.azimuth_deg[0]), "elevation_deg": float(cam.elevation_deg[0]),
                          "distance": float(cam.distance[0]), "fov_deg": float(cam.fov_deg[0]),
                          "c2w": cam.c2w[0].tolist(), "matrix_world": view.world_c2w.tolist()}}


def image_to_3d(config: RunConfig, out_dir: Path, callbacks: Callbacks | None = None,
                resume: bool = False, models: ModelCache | None = None) -> RunResult:
    """One image (and its camera) to a coloured mesh: reference-view losses on colour and mask
    plus a novel-view prior, then the mesh as in `generate`. The mesh is in the canonical frame;
    run.json's "placement" maps it onto what the camera saw."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    _checkpoint(out_dir, resume)
    report = (callbacks or Callbacks()).on_progress
    if report:
        report(Progress(0, config.train.steps, 0.0, 0.0, 0.0, "loading"))
    view = picture_view(config.image)
    fit_image_cameras(config, view)
    guidance, description = build_image_guidance(config, view, models)
    rgb, mask = view.resized(config.render.resolution)
    default_rgb, default_mask = REFERENCE_WEIGHTS.get(config.guidance.prior, (1.0, 1.0))
    i = config.image
    reference = PictureTarget(view.camera, rgb[None], mask[None],
                                default_rgb if i.lambda_rgb is None else i.lambda_rgb,
                                default_mask if i.lambda_mask is None else i.lambda_mask)
    _make_out_dir(out_dir)
    save_rgba(view.rgba, out_dir / "reference.png")
    return _optimise(config, out_dir, guidance, description, callbacks, resume, started, reference,
                     {**_placement_record(view), "reference_weights": [reference.lambda_rgb, reference.lambda_mask]})


@dataclass
class ViewsResult:
    out_dir: Path
    count: int
    seconds: float


def view_offsets(config: RunConfig) -> list[tuple[float, float]]:
    """(d_azimuth, d_elevation) of every view, the reference (0, 0) first."""
    i = config.image
    if i.views:
        return [(0.0, 0.0)] + [(float(a), float(e)) for a, e in i.views]
    return [(360.0 * k / i.view_count, 0.0) for k in range(i.view_count)]


def novel_views(config: RunConfig, out_dir: Path, callbacks: Callbacks | None = None,
                models: ModelCache | None = None) -> ViewsResult:
    """Views of the object in the reference image from around it: view_00.png is the reference
    (resampled), view_01.png... are sampled by the prior. views.json gives every view's camera in
    the canonical frame and in the world (a Blender camera matrix)."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    callbacks = callbacks or Callbacks()
    view = picture_view(config.image)
    ref = view.camera
    offsets = view_offsets(config)
    az = torch.tensor([float(ref.azimuth_deg[0]) + a for a, _ in offsets])
    el = torch.tensor([float(ref.elevation_deg[0]) + e for _, e in offsets]).clamp(-89.0, 89.0)
    targets = Cameras.from_orbit(az, el, ref.distance, ref.fov_deg)
    steps = config.image.sample_steps
    total = (len(offsets) - 1) * steps
    generator = torch.Generator().manual_seed(config.train.seed)

    def on_step(done: int, _total: int) -> None:
        if callbacks.on_progress:
            elapsed = time.perf_counter() - started
            callbacks.on_progress(Progress(done, total, 0.0, elapsed, elapsed / max(done, 1) * (total - done), "sampling"))

    g = config.guidance
    if g.prior == "builtin":
        from .guidance.closed_form import ClosedFormPrior
        from .shapes.fitting import best_fit, conditioned_set

        fit = best_fit(view)
        size = min(config.image.size, 128)
        prior = ClosedFormPrior(conditioned_set(view, fit, size, targets[1:]),
                               torch.ones(len(offsets), dtype=torch.bool), g)
        images = prior.sample(targets[1:], steps, generator, lambda d, _t: on_step(d * (len(offsets) - 1), total),
                              callbacks.should_cancel)
        description = f"builtin: {fit.describe()}"
    elif g.prior == "zero123":
        from .guidance.zero123 import sample_novel_views

        components = _zero123(config, models if models is not None else ModelCache())
        size = components.native_size
        scale = 3.0 if g.guidance_scale is None else g.guidance_scale
        images = sample_novel_views(components, view.resized(size)[0], ref, targets[1:], steps=steps,
                                    guidance_scale=scale, generator=generator,
                                    autoregressive=config.image.autoregressive, neighbours=config.image.neighbours,
                                    on_step=on_step, should_cancel=callbacks.should_cancel)
        description = f"zero123: {g.zero123_model} ({components.variant})"
    else:
        raise DreamsculptError(f"Unknown prior {g.prior!r} for an image: choose one of {', '.join(IMAGE_PRIORS)}.")
    _make_out_dir(out_dir)
    size = images.shape[-1]
    rgb, mask = view.resized(size)
    images = torch.stack([straight_rgba(rgb, mask)] + [alpha_over_white(image) for image in images.cpu().float()])
    save_rgba(view.rgba, out_dir / "reference.png")
    record = _placement_record(view)
    world = view.to_world(targets.c2w)
    record["views"] = []
    for k, ((d_az, d_el), image) in enumerate(zip(offsets, images)):
        name = f"view_{k:02d}.png"
        save_rgba(image, out_dir / name)
        record["views"].append({"file": name, "d_azimuth_deg": d_az, "d_elevation_deg": d_el,
                                "azimuth_deg": float(targets.azimuth_deg[k]), "elevation_deg": float(targets.elevation_deg[k]),
                                "distance": float(targets.distance[k]), "fov_deg": float(targets.fov_deg[k]),
                                "c2w": targets.c2w[k].tolist(), "matrix_world": world[k].tolist()})
    save_contact_sheet(images, out_dir / "novel_views.png")
    _write_json(out_dir / "views.json", record)
    seconds = time.perf_counter() - started
    _write_json(out_dir / "run.json", {
        "dreamsculpt_version": __version__, "kind": config.kind, "prior": g.prior, "prior_detail": description,
        "model": g.zero123_model if g.prior == "zero123" else None, "seed": config.train.seed,
        "views": len(offsets), "sample_steps": steps, "seconds": round(seconds, 2),
        "seconds_per_view": round(seconds / max(len(offsets) - 1, 1), 3), **record, "config": config.to_dict()})
    return ViewsResult(out_dir, len(offsets), seconds)


def run(config: RunConfig, out_dir: Path, callbacks: Callbacks | None = None, resume: bool = False,
        models: ModelCache | None = None) -> RunResult | ViewsResult:
    """The run `config.kind` names (the job server's one entry point)."""
    if config.kind == "text_to_3d":
        return generate(config, out_dir, callbacks, resume, models)
    if config.kind == "image_to_3d":
        return image_to_3d(config, out_dir, callbacks, resume, models)
    if config.kind == "novel_views":
        return novel_views(config, out_dir, callbacks, models)
    raise DreamsculptError(f"Unknown kind {config.kind!r}: choose one of {', '.join(KINDS)}.")


def _write_json(path: Path, record: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(path)


def _write_run_json(out_dir, config, description, guidance, trainer, mesh, threshold, seconds, extra=None) -> None:
    timings = trainer.timings
    steps = max(timings["steps"], 1)
    g = config.guidance
    record = {
        "dreamsculpt_version": __version__, "kind": config.kind,
        "prompt": g.prompt, "negative": g.negative,
        "prior": g.prior, "prior_detail": description,
        "model": {"sd": g.model, "zero123": g.zero123_model}.get(g.prior),
        "seed": config.train.seed, "steps": config.train.steps,
        "seconds": round(seconds, 2), "device": str(getattr(guidance, "device", "cpu")),
        "vertices": len(mesh.vertices), "faces": len(mesh.faces), "threshold": threshold,
        "ms_per_step": {k: round(1e3 * timings[k] / steps, 2) for k in ("occupancy", "render", "guidance", "backward")},
        **(extra or {}),
        "config": config.to_dict(),
    }
    _write_json(out_dir / "run.json", record)
