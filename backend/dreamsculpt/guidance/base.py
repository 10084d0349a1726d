"""The one small interface every 2D prior answers, and the pieces they share.

The optimisation loop only ever calls::

    out = guidance.grad(images, cameras, progress, generator, backgrounds=colours)
    (images * out.grad).sum().backward()

so the reference prior, Stable Diffusion (and later DeepFloyd IF or Zero123) are
interchangeable. `grad` is d(loss)/d(images): the Score Distillation Sampling gradient
w(t) * (eps_hat - eps) carried back to image space. `backgrounds` [B, 3] is the solid colour
each render was composited over (None: white, or a learned background): a prior that knows
its images' masks composites them over the same colour; others ignore it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from ..cameras import Cameras
from ..config import GuidanceConfig


@dataclass
class GuidanceOutput:
    """grad: [B, 3, H, W], same shape as the rendered images; never requires grad.
    loss: a scalar for progress reports (the mean squared SDS residual).
    t: [B] the diffusion times used, in [0, 1]."""

    grad: torch.Tensor
    loss: float
    t: torch.Tensor


class Guidance(Protocol):
    #: Background the training renders get: "white" for priors that only know white
    #: backgrounds, "random" for image sets with masks, "learned" for natural-image models.
    background: str
    #: Where the prior runs; the field being optimised lives there too.
    device: torch.device

    def grad(self, images: torch.Tensor, cameras: Cameras, progress: float,
             generator: torch.Generator, backgrounds: torch.Tensor | None = None) -> GuidanceOutput:
        """images: [B, 3, H, W] renders in [0, 1]; progress: fraction of the run done;
        backgrounds: [B, 3] the solid colour each render is composited over (None: white)."""
        ...


class ViewSampler(Protocol):
    """A prior that draws images of one object from given cameras (novel views): the closed-form
    prior of a view-conditioned set, or Zero-1-to-3 conditioned on the picture."""

    def sample(self, targets: Cameras, steps: int, generator: torch.Generator,
               on_step: Callable[[int, int], None] | None = None,
               should_cancel: Callable[[], bool] | None = None) -> torch.Tensor:
        """[K, 3, S, S] images in [0, 1] over white, one per target camera, by `steps`
        denoising steps. on_step(done, total) after every step counts view-steps (total =
        K * steps); should_cancel() is asked before every step (CancelledError when true)."""
        ...


def scaled_linear_alphas_cumprod(steps: int = 1000, beta_start: float = 0.00085,
                                 beta_end: float = 0.012) -> torch.Tensor:
    """[steps] alpha-bar of Stable Diffusion's "scaled_linear" schedule (also used by the
    reference prior, so both see the same noise levels)."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, 0).float()


#: The anneal schedule's ceiling at the end of the run when none is given (threestudio's and
#: DreamFusion-follow-ups' common choice: the top of the range falls to the middle).
DEFAULT_ANNEAL_TO = 0.5
#: DreamTime's prior over diffusion times: a Gaussian around the middle of the schedule,
#: m = 500 and s = 125 of 1000 training steps (Huang et al. 2023, section 4).
DREAMTIME_CENTRE, DREAMTIME_WIDTH = 0.5, 0.125


@dataclass
class TimestepSchedule:
    """Uniform diffusion times in [t_min, t_max_now], where t_max_now moves linearly from
    t_max to `anneal_to` over the run when annealing is on (DreamFusion samples
    [0.02, 0.98]; annealing the top down sharpens detail late in the run)."""

    t_min: float = 0.02
    t_max: float = 0.98
    anneal_to: float | None = None

    def upper(self, progress: float) -> float:
        if self.anneal_to is None:
            return self.t_max
        return self.t_max + (self.anneal_to - self.t_max) * min(max(progress, 0.0), 1.0)

    def sample(self, batch: int, progress: float, generator: torch.Generator) -> torch.Tensor:
        """[batch] continuous times in [0, 1]."""
        hi = max(self.upper(progress), self.t_min)
        return self.t_min + (hi - self.t_min) * torch.rand(batch, generator=generator)


class DreamTimeSchedule:
    """DreamTime's time-prioritised schedule: one time per step, falling monotonically over the
    run, so that the coarse shape is made at high noise and the detail at low noise.

    Over the integer steps s of [t_min, t_max] (of T), the weight of a step is
    W(s) = sqrt((1 - abar_s) / abar_s) * exp(-(s - m)^2 / (2 w^2)), normalised to sum to 1
    (the SDS weight of that noise level times a Gaussian prior around the middle, m = 0.5 T,
    w = 0.125 T). At progress p the step is the one where the weight above it reaches p:
    the smallest s with sum_{s' > s} W(s') <= p, i.e. argmin_s |sum_{s' >= s} W(s') - p|
    taken from above. Every image of a step gets the same time; `generator` is not used."""

    def __init__(self, alphas_cumprod: torch.Tensor, t_min: float = 0.02, t_max: float = 0.98):
        alphas = alphas_cumprod.detach().double().cpu()
        count = alphas.shape[0]
        steps = torch.arange(count, dtype=torch.float64)
        lo, hi = round(t_min * (count - 1)), round(t_max * (count - 1))
        weight = ((1.0 - alphas) / alphas).sqrt()
        weight = weight * torch.exp(-(steps - DREAMTIME_CENTRE * count) ** 2
                                    / (2.0 * (DREAMTIME_WIDTH * count) ** 2))
        weight[:lo], weight[hi + 1:] = 0.0, 0.0
        weight = weight / weight.sum()
        #: above[s] = sum of the weights of the steps above s (0 at the top step).
        self.above = weight.flip(0).cumsum(0).flip(0) - weight
        self.lo, self.hi, self.count = lo, hi, count

    def step(self, progress: float) -> int:
        """The integer step at `progress` in [0, 1]: hi at the start, falling to lo."""
        p = min(max(progress, 0.0), 1.0)
        below = (self.above[self.lo:self.hi + 1] <= p + 1e-12).nonzero()
        return self.lo + int(below[0]) if len(below) else self.hi

    def sample(self, batch: int, progress: float, generator: torch.Generator) -> torch.Tensor:
        """[batch] continuous times in [0, 1], all the same."""
        return torch.full((batch,), self.step(progress) / (self.count - 1))


def make_schedule(config: GuidanceConfig,
                  alphas_cumprod: torch.Tensor | None = None) -> TimestepSchedule | DreamTimeSchedule:
    """The schedule `config.t_schedule` names over [t_min, t_max]. DreamTime weighs steps by
    the model's noise levels (`alphas_cumprod`, [T]; None: Stable Diffusion's)."""
    if config.t_schedule == "dreamtime":
        alphas = scaled_linear_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod
        return DreamTimeSchedule(alphas, config.t_min, config.t_max)
    if config.t_schedule == "anneal":
        end = DEFAULT_ANNEAL_TO if config.t_anneal_to is None else config.t_anneal_to
        return TimestepSchedule(config.t_min, config.t_max, end)
    return TimestepSchedule(config.t_min, config.t_max)


def chosen_background(asked: str, auto: str) -> str:
    """The training background: `asked` (GuidanceConfig.background), or the prior's own
    choice `auto` when asked "auto"."""
    return auto if asked == "auto" else asked


#: View suffixes appended to the prompt, in DreamFusion's manner.
VIEW_NAMES = ("front", "side", "back", "overhead")


def view_weights(azimuth_deg: torch.Tensor, elevation_deg: torch.Tensor,
                 overhead_deg: float = 60.0) -> torch.Tensor:
    """[B] camera angles -> [B, 4] blending weights over VIEW_NAMES, rows sum to 1.

    "Front" is Blender's Front view: the camera on -Y (azimuth -90 degrees) looking along +Y.
    Weights vary smoothly with azimuth (front -> side -> back), and cameras above
    `overhead_deg` elevation blend into "overhead" over a 15 degree band.
    """
    # Angle away from the front camera, in [0, 180] degrees.
    off = torch.remainder(azimuth_deg + 90.0 + 180.0, 360.0) - 180.0
    off = off.abs()
    front = (1.0 - off / 90.0).clamp(0, 1)
    back = (off / 90.0 - 1.0).clamp(0, 1)
    side = 1.0 - front - back
    over = ((elevation_deg - (overhead_deg - 15.0)) / 15.0).clamp(0, 1)
    ring = torch.stack([front, side, back], -1) * (1.0 - over)[:, None]
    return torch.cat([ring, over[:, None]], -1)


class CombinedGuidance:
    """A weighted sum of priors on the same renders (Magic123: Zero123 for the geometry, text
    SDS for the detail). The background is the first prior's."""

    def __init__(self, parts: list[tuple[Guidance, float]]):
        self.parts = parts
        self.background = parts[0][0].background
        self.device = parts[0][0].device

    def grad(self, images: torch.Tensor, cameras: Cameras, progress: float,
             generator: torch.Generator, backgrounds: torch.Tensor | None = None) -> GuidanceOutput:
        outs = [(g.grad(images, cameras, progress, generator, backgrounds=backgrounds), w) for g, w in self.parts]
        grad = sum(w * o.grad.to(images.device) for o, w in outs)
        return GuidanceOutput(grad=grad, loss=sum(w * o.loss for o, w in outs), t=outs[0][0].t)
