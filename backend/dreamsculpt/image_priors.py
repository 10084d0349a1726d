"""The priors of the image kinds: what an object looks like from cameras the picture was not
taken from. Each one serves both image kinds: as guidance for image → 3D (SDS on novel views)
and as a `ViewSampler` for novel views.

    zero123   Zero-1-to-3 conditioned on the picture (a model: hub id, folder or one file)
    builtin   the built-in shape that best explains the picture's silhouette, fitted in scale
              and offset and coloured like it: a closed-form, view-conditioned image set
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .cameras import Cameras
from .config import IMAGE_PRIORS, GuidanceConfig
from .errors import DreamsculptError
from .guidance.base import ViewSampler
from .models import ModelCache
from .optimize import TrainingViews
from .picture import PictureView
from .priors import Prior, posed_views

#: Default classifier-free guidance of Zero123's novel-view sampling.
ZERO123_SAMPLING_SCALE = 3.0


def around_picture(view: PictureView, default: TrainingViews) -> TrainingViews:
    """Novel-view cameras orbit at the picture's distance and field of view (Zero123 and the
    fitted set are relative to it), over elevations that include the picture's."""
    cam, el = default.camera, float(view.camera.elevation_deg[0])
    elevation = (max(-30.0, min(cam.elevation_deg[0], el - 20.0)), min(80.0, max(cam.elevation_deg[1], el + 20.0)))
    return replace(default, camera=replace(cam, distance=(float(view.camera.distance[0]),) * 2,
                                           fov_deg=(float(view.camera.fov_deg[0]),) * 2, elevation_deg=elevation))


class FittedShapes:
    """The built-in shapes fitted to the picture (offline; see shapes/fitting.py)."""

    model = None

    def __init__(self, g: GuidanceConfig, view: PictureView, models: ModelCache):
        from .shapes.fitting import best_fit

        self.g, self.view = g, view
        self.fit = best_fit(view)
        self.description = f"builtin: {self.fit.describe()}"

    def guidance(self, resolution: int, views: TrainingViews) -> Prior:
        from .guidance.closed_form import ClosedFormPrior
        from .shapes.fitting import conditioned_set

        images = conditioned_set(self.view, self.fit, resolution)
        prior = ClosedFormPrior(images, torch.ones(len(images), dtype=torch.bool), self.g)
        return Prior(prior, self.description, None, posed_views(images, views))

    def sampler(self, targets: Cameras, size: int, autoregressive: bool = False, neighbours: int = 2) -> ViewSampler:
        """A closed-form prior over the fitted shape rendered from exactly the targets (all
        views are consistent by construction: `autoregressive` changes nothing here)."""
        from .guidance.closed_form import ClosedFormPrior
        from .shapes.fitting import conditioned_set

        images = conditioned_set(self.view, self.fit, min(size, 128), targets)
        return ClosedFormPrior(images, torch.ones(len(images), dtype=torch.bool), self.g)


class Zero123Prior:
    """Zero-1-to-3 conditioned on the picture, seen from its camera."""

    def __init__(self, g: GuidanceConfig, view: PictureView, models: ModelCache):
        from .devices import resolve_device, resolve_dtype
        from .guidance.zero123_loading import load_zero123_components

        device = resolve_device(g.device)
        dtype = resolve_dtype(g.fp16, device)
        key = f"zero123 {g.zero123_model} {g.zero123_variant} {device} {str(dtype).replace('torch.', '')}"
        self.components = models.get(key, lambda: load_zero123_components(g.zero123_model, device, dtype,
                                                                           g.zero123_variant))
        self.g, self.view, self.model = g, view, g.zero123_model
        self.description = f"zero123: {g.zero123_model} ({self.components.variant})"
        self.picture = view.resized(self.components.native_size)[0]

    def guidance(self, resolution: int, views: TrainingViews) -> Prior:
        from .guidance.zero123 import Zero123Guidance

        guidance = Zero123Guidance(self.g, self.components, self.picture, self.view.camera)
        return Prior(guidance, self.description, self.model, views)

    def sampler(self, targets: Cameras, size: int, autoregressive: bool = False, neighbours: int = 2) -> ViewSampler:
        """Views of Zero123's native size (`size` is the closed-form sets' business)."""
        scale = ZERO123_SAMPLING_SCALE if self.g.guidance_scale is None else self.g.guidance_scale
        return _Zero123Sampler(self, scale, autoregressive, neighbours)


@dataclass
class _Zero123Sampler:
    """Zero123's novel-view sampling as a `ViewSampler` (batched, or GeNVS-style autoregressive
    when the run config asks for it)."""

    prior: Zero123Prior
    scale: float
    autoregressive: bool = False
    neighbours: int = 2

    def sample(self, targets, steps, generator, on_step=None, should_cancel=None) -> torch.Tensor:
        from .guidance.zero123 import sample_novel_views

        p = self.prior
        return sample_novel_views(p.components, p.picture, p.view.camera, targets, steps=steps,
                                  guidance_scale=self.scale, generator=generator,
                                  autoregressive=self.autoregressive, neighbours=self.neighbours,
                                  on_step=on_step, should_cancel=should_cancel)


#: prior name -> the class that builds it from the picture. One line per prior.
PICTURE_PRIORS = {"builtin": FittedShapes, "zero123": Zero123Prior}


def picture_prior(g: GuidanceConfig, view: PictureView, models: ModelCache | None = None) -> FittedShapes | Zero123Prior:
    """The image prior `g.prior` names, conditioned on the picture `view`."""
    build = PICTURE_PRIORS.get(g.prior)
    if build is None:
        raise DreamsculptError(f"Unknown prior {g.prior!r} for an image: choose one of {', '.join(IMAGE_PRIORS)}.")
    return build(g, view, models if models is not None else ModelCache())
