"""How a diffusion model's noise prediction becomes a gradient on the renders.

Every model prior (Stable Diffusion, MVDream, DeepFloyd IF, and the closed-form priors)
does the same thing with a different network: noise its clean input x (latents or pixels) to
x_t = sqrt(abar) x + sqrt(1 - abar) eps at a time t, predict eps_hat(x_t, t) with
classifier-free guidance, and take

    g = w(t) * mean over the noise draws of (eps_hat - eps)

as d(loss)/dx. The two rules differ in the weight and the number of draws:

    sds  Score Distillation Sampling (DreamFusion): w = 1 - abar, one draw per step.
    sjc  Score Jacobian Chaining's perturb-and-average scoring (Wang et al. 2023): the score
         of the noised distribution at x is E_n[(D(x + sigma n) - x) / sigma^2] in the
         variance-exploding view (D the denoiser, sigma^2 = (1 - abar) / abar), which is
         E_n[(n - eps_hat)] / sigma. Like SJC's own code it is taken times sigma (w = 1), so
         low-noise steps do not blow up, and the expectation is estimated with several
         draws at the same time, which lowers the estimate's variance at the cost of one
         network pass per draw.

Here g is returned; the prior pulls it back to the renders (through the VAE, the resize).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..config import SCORES, GuidanceConfig
from ..errors import DreamsculptError

#: SJC's noise draws averaged per step: two halves the variance of one draw for twice the
#: network passes (batched, so on a GPU well under twice the time).
SJC_SAMPLES = 2


@dataclass(frozen=True)
class Score:
    """A rule turning noise predictions into a gradient. samples: noise draws averaged per
    step (the network sees samples x the batch)."""

    name: str
    samples: int = 1

    def weight(self, alpha_bar: torch.Tensor) -> torch.Tensor:
        """w(t) for the noise levels `alpha_bar` (any shape, broadcast by the caller)."""
        return 1.0 - alpha_bar if self.name == "sds" else torch.ones_like(alpha_bar)


def score_of(config: GuidanceConfig) -> Score:
    """The rule `config.score` names."""
    if config.score == "sds":
        return Score("sds", 1)
    if config.score == "sjc":
        return Score("sjc", SJC_SAMPLES)
    raise DreamsculptError(f"Unknown score {config.score!r}: choose one of {', '.join(SCORES)}.")


def score_gradient(score: Score, latents: torch.Tensor, steps: torch.Tensor, alphas_cumprod: torch.Tensor,
                   predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                   generator: torch.Generator) -> torch.Tensor:
    """d(loss)/d(latents), [B, ...] float32, for clean `latents` [B, ...] (detached) at the
    integer `steps` [B] of `alphas_cumprod` [T].

    predict(noisy [K*B, ...], steps [K*B]) -> eps_hat [K*B, ...] must return the guided noise
    estimate. The K = score.samples draws are stacked draw-major ([draw 0: all B][draw 1: all
    B]...), so any grouping of consecutive images (MVDream's 4 views) is kept. The noise is
    drawn from `generator` on its own device, in that order, and moved to the latents'."""
    k, batch = score.samples, latents.shape[0]
    shape = (batch,) + (1,) * (latents.dim() - 1)
    clean = latents.detach().float()
    noise = torch.randn((k * batch, *clean.shape[1:]), generator=generator, device=generator.device)
    noise = noise.to(clean.device)
    ab = alphas_cumprod[steps].to(clean.device).view(shape).repeat(k, *shape[1:])
    noisy = ab.sqrt() * clean.repeat(k, *(1,) * (clean.dim() - 1)) + (1.0 - ab).sqrt() * noise
    eps_hat = predict(noisy, steps.repeat(k)).float()
    residual = (eps_hat - noise).reshape(k, batch, *clean.shape[1:]).mean(0)
    return score.weight(ab[:batch]) * residual
