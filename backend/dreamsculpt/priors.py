"""The priors of text → 3D, built from what was asked. Building one never changes the run's
config: it returns the guidance together with the training views it wants (a posed image set
wants cameras where its images were taken, and albedo-only renders).

    sd          Stable Diffusion (a model: hub id, folder or one file)
    mvdream     MVDream: four views at once, each knowing its camera (guidance/mvdream.py)
    if          DeepFloyd IF stage I: pixel-space guidance at 64 px (guidance/deepfloyd.py)
    builtin     the built-in shapes the prompt names (closed-form prior, offline)
    references  a folder of the user's images, posed or not (closed-form prior)

The image kinds' priors (Zero123, the shapes fitted to a picture) are in `image_priors.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from .config import PRIORS, GuidanceConfig
from .errors import DreamsculptError
from .guidance.base import Guidance
from .image_sets import ImageSet
from .models import ModelCache
from .optimize import TrainingViews


@dataclass
class Prior:
    guidance: Guidance
    description: str            # one line for run.json ("builtin: red cube")
    model: str | None           # the model it loaded; None for the closed-form image sets
    views: TrainingViews        # where the training cameras go, and the shading


def posed_views(images: ImageSet, default: TrainingViews) -> TrainingViews:
    """Training views for a closed-form prior over `images`. Cameras sit where the images were
    taken (same elevations, distances and FOVs, anchored at their viewpoints): space no image
    sees would otherwise be filled in. Shading is albedo only: the images carry their lighting
    baked in (a light fixed in the world), so random lights would contradict them."""
    camera = default.camera
    if images.has_poses:
        anchors = sorted({(round(float(a), 3), round(float(e), 3))
                          for a, e in zip(images.azimuth_deg, images.elevation_deg)})
        camera = replace(camera,
                         elevation_deg=(float(images.elevation_deg.min()), float(images.elevation_deg.max())),
                         distance=(float(images.distance.min()), float(images.distance.max())),
                         fov_deg=(float(images.fov_deg.min()), float(images.fov_deg.max())),
                         anchors=tuple(anchors))
    shading = replace(default.shading, p_albedo=1.0, p_lambertian=0.0, p_textureless=0.0)
    return TrainingViews(camera, shading)


def text_prior(g: GuidanceConfig, resolution: int, views: TrainingViews,
               models: ModelCache | None = None) -> Prior:
    """The prior `g.prior` names for renders of `resolution` px. With a `models` cache, heavy
    parts (the shape library, SD's networks) are loaded once and reused."""
    build = TEXT_PRIORS.get(g.prior)
    if build is None:
        raise DreamsculptError(f"Unknown prior {g.prior!r}: choose one of {', '.join(PRIORS)}.")
    if not g.prompt.strip() and g.prior != "references":
        raise DreamsculptError('The prompt is empty: say what to make, e.g. dreamsculpt generate "a red cube" '
                               "--prior builtin.")
    return build(g, resolution, views, models if models is not None else ModelCache())


def _builtin_shapes(g: GuidanceConfig, resolution: int, views: TrainingViews, models: ModelCache) -> Prior:
    from .guidance.closed_form import ClosedFormPrior
    from .shapes.geometry import COLOURS, SHAPES
    from .shapes.library import builtin_library
    from .shapes.prompts import match_prompt

    # Match first: a prompt naming no shape fails before any rendering.
    labels = set(match_prompt(g.prompt, [f"{c} {s}" for s in SHAPES for c in COLOURS]))
    library = models.get(f"builtin shapes {resolution} px", lambda: builtin_library(resolution))
    condition = torch.tensor([label in labels for label in library.labels])
    return Prior(ClosedFormPrior(library, condition, g), f"builtin: {', '.join(sorted(labels))}", None,
                 posed_views(library, views))


def _image_folder(g: GuidanceConfig, resolution: int, views: TrainingViews, models: ModelCache) -> Prior:
    from .guidance.closed_form import ClosedFormPrior
    from .image_folders import load_image_folder

    if not g.references:
        raise DreamsculptError("--prior references needs --references DIR: a folder of square PNG/JPG images.")
    images = load_image_folder(g.references, resolution)
    posed = "with poses" if images.has_poses else "without poses"
    masked = "with masks" if images.has_masks else "without masks"
    return Prior(ClosedFormPrior(images, torch.ones(len(images), dtype=torch.bool), g),
                 f"references: {len(images)} images {posed}, {masked} from {g.references}", None,
                 posed_views(images, views))


def _loaded(g: GuidanceConfig, models: ModelCache, load: Callable) -> tuple[torch.device, object]:
    """(device, components) of the model prior `g.prior`: `load(model, device, dtype)` once per
    model, device and dtype in the cache (its key is what GET /health lists)."""
    from .devices import resolve_device, resolve_dtype

    device = resolve_device(g.device)
    dtype = resolve_dtype(g.fp16, device)
    key = f"{g.prior} {g.model} {device} {str(dtype).replace('torch.', '')}"
    return device, models.get(key, lambda: load(g.model, device, dtype))


def _stable_diffusion(g: GuidanceConfig, resolution: int, views: TrainingViews, models: ModelCache) -> Prior:
    from .guidance.stable_diffusion import StableDiffusionGuidance, load_sd_components

    device, components = _loaded(g, models, load_sd_components)
    return Prior(StableDiffusionGuidance(g, device, components), f"sd: {g.model}", g.model, views)


def _mvdream(g: GuidanceConfig, resolution: int, views: TrainingViews, models: ModelCache) -> Prior:
    from .guidance.mvdream import MVDreamGuidance, load_mvdream_components
    from .guidance.mvdream_unet import MVDREAM_VIEWS

    device, components = _loaded(g, models, load_mvdream_components)
    # Its views come in rings of four, 90 degrees apart, as it was trained.
    ring = TrainingViews(replace(views.camera, ring=MVDREAM_VIEWS), views.shading)
    return Prior(MVDreamGuidance(g, device, components), f"mvdream: {g.model}", g.model, ring)


def _deepfloyd(g: GuidanceConfig, resolution: int, views: TrainingViews, models: ModelCache) -> Prior:
    from .guidance.deepfloyd import DeepFloydGuidance, load_if_components

    device, components = _loaded(g, models, load_if_components)
    return Prior(DeepFloydGuidance(g, device, components), f"if: {g.model}", g.model, views)


#: prior name -> builder (the request's `prior`). One line per prior.
TEXT_PRIORS: dict[str, Callable[[GuidanceConfig, int, TrainingViews, ModelCache], Prior]] = {
    "sd": _stable_diffusion,
    "mvdream": _mvdream,
    "if": _deepfloyd,
    "builtin": _builtin_shapes,
    "references": _image_folder,
}
