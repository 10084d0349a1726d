"""The reference prior: the exact score of a finite image set, used as an SDS prior.

For images {x_i} (scaled to [-1, 1]) noised as x_t = sqrt(a) x_0 + sqrt(1 - a) eps with
a = alpha_bar(t), the optimal denoiser of the empirical distribution is closed-form
(Scarvelis, Saez de Ocariz Borde & Solomon, "Closed-Form Diffusion Models", TMLR 2025)::

    x0_hat(x_t) = sum_i w_i x_i,   w = softmax_i( -|x_t - sqrt(a) x_i|^2 / (2 (1 - a)) + log k_i )

where k_i is 1 without poses and, when the reference poses are known, a Gaussian kernel on
the angle between the render's camera and reference i, cut off beyond the nearest
reference's angle plus sigma (view conditioning; see `log_view_kernel`). At tiny noise
x0_hat is the nearest reference; at huge noise it is the (kernel-weighted) set mean.

Classifier-free guidance is emulated with the prompt's set as the condition and the union
of all sets as the unconditional model: x0 = x0_u + s (x0_c - x0_u).

When the set knows its masks m_i, each render's denoiser is that of the set composited over
the render's own solid background colour c: x_i(c) = x_i - (1 - m_i)(1 - c). Over white alone
near-white density is invisible, so SDS would never remove it (haze closing a ring's hole).
The composited set is never built: its distances and mixes are the white set's plus matrix
products with the flattened masks (`denoise_many`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..cameras import Cameras, angle_between_views
from ..config import GuidanceConfig
from ..errors import DreamsculptError
from ..image_sets import ImageSet
from .base import GuidanceOutput, make_schedule, scaled_linear_alphas_cumprod
from .scores import score_gradient, score_of

DEFAULT_SCALE = 1.5


class ClosedFormPrior:
    """SDS guidance from the closed-form denoiser of `library` restricted to `condition`.

    library: every image of every set (the "unconditional" union), [N, 3, S, S], with masks
    or without. condition: [N] bool, the images of the prompt's set.
    background: "random" when the set has masks (config.background "auto"), else "white".
    """

    #: The denoiser is a few matrix products over the set: cheap, and on the CPU.
    device = torch.device("cpu")

    def __init__(self, library: ImageSet, condition: torch.Tensor, config: GuidanceConfig):
        self.library = library
        self.flat = library.images.reshape(len(library), -1) * 2.0 - 1.0  # [N, D] in [-1, 1]
        self.sq_norms = self.flat.square().sum(-1)
        self.background = _background(config.background, library.has_masks)
        if library.has_masks:
            # Outside-the-mask u = 1 - m, [N, P] with P = S * S pixels, and the two per-image
            # sums the composited distances need: y_i . u_i per channel [N, 3] and |u_i|^2 [N].
            self.outside = 1.0 - library.masks.reshape(len(library), -1)
            self.flat_dot_outside = (self.flat.reshape(len(library), 3, -1) * self.outside[:, None]).sum(-1)
            self.outside_sq = self.outside.square().sum(-1)
        self.condition = condition
        self.scale = DEFAULT_SCALE if config.guidance_scale is None else config.guidance_scale
        self.view_sigma = math.radians(config.view_sigma_deg)
        self.alphas_cumprod = scaled_linear_alphas_cumprod()
        self.schedule = make_schedule(config, self.alphas_cumprod)
        self.score = score_of(config)

    @property
    def resolution(self) -> int:
        return self.library.resolution

    def log_view_kernel(self, cameras: Cameras) -> torch.Tensor:
        """[B, N] log of the camera-proximity kernel (zeros without poses).

        A Gaussian in the angle between views, cut off beyond (nearest angle + sigma): in
        thousands of pixel dimensions the image term of the logits outweighs any smooth
        kernel, so without the cut the "nearest" reference could come from the far side of
        the object whenever it happens to look more like the current render.
        """
        if not self.library.has_poses or self.view_sigma <= 0:
            return torch.zeros(len(cameras), len(self.library))
        angle = angle_between_views(cameras.azimuth_deg.cpu()[:, None], cameras.elevation_deg.cpu()[:, None],
                                    self.library.azimuth_deg[None], self.library.elevation_deg[None])
        log_k = -0.5 * (angle / self.view_sigma) ** 2
        near = angle <= angle.amin(-1, keepdim=True) + self.view_sigma
        return log_k.masked_fill(~near, float("-inf"))

    def denoise(self, x_t: torch.Tensor, alpha_bar: torch.Tensor, log_kernel: torch.Tensor,
                subset: torch.Tensor | None = None, backgrounds: torch.Tensor | None = None) -> torch.Tensor:
        """Optimal x0 estimate.

        x_t: [B, D] noisy images in [-1, 1] scale; alpha_bar: [B]; log_kernel: [B, N];
        subset: [N] bool restricting the set (None: all images); backgrounds: [B, 3] colour in
        [0, 1] each x_t's set is composited over (None: white). Returns [B, D].
        """
        return self.denoise_many(x_t, alpha_bar, log_kernel, [subset], backgrounds)[0]

    def denoise_many(self, x_t: torch.Tensor, alpha_bar: torch.Tensor, log_kernel: torch.Tensor,
                     subsets: list[torch.Tensor | None], backgrounds: torch.Tensor | None = None) -> torch.Tensor:
        """`denoise` for several subsets at the cost of one distance computation. Returns [S, B, D].

        Over colour c the set is y_i - b u_i (per channel, [-1, 1] scale) with b = 2 (1 - c)
        [B, 3] and u_i = 1 - m_i, so with s = sqrt(a) and x_t = (x^1, x^2, x^3) by channel:
            x_t . y_i(c) = x_t . y_i - (sum_k b_k x^k) . u_i
            |y_i(c)|^2   = |y_i|^2 - 2 b . (y_i . u_i) + |b|^2 |u_i|^2
        one more [B, P] x [P, N] product (a third of the first), and the mix is
        W y - b (W u): [B, N] x [N, P] for the used images only.
        """
        a = alpha_bar[:, None]
        b = self._shift(backgrounds, len(x_t))
        # |x_t - sqrt(a) x_i|^2 expanded, so the [B, N] distances come from one matmul.
        dots, sq_norms = x_t @ self.flat.t(), self.sq_norms[None]
        if b is not None:
            channels = x_t.reshape(len(x_t), 3, -1)
            dots = dots - torch.einsum("bk,bkp->bp", b, channels) @ self.outside.t()
            sq_norms = sq_norms - 2 * b @ self.flat_dot_outside.t() + b.square().sum(-1, keepdim=True) * self.outside_sq
        dist = x_t.square().sum(-1, keepdim=True) - 2 * a.sqrt() * dots + a * sq_norms
        logits = -dist / (2.0 * (1.0 - a)) + log_kernel
        weights = torch.stack([torch.softmax(logits if m is None else logits.masked_fill(~m[None], float("-inf")), -1)
                               for m in subsets]).reshape(-1, logits.shape[-1])   # [S * B, N]
        # In thousands of dimensions the softmax is sharply peaked: mixing only the images
        # that carry weight gives the same x0 at a fraction of the [N, D] product.
        used = (weights > 1e-8).any(0).nonzero()[:, 0]
        x0 = (weights[:, used] @ self.flat[used]).reshape(len(subsets), len(x_t), 3, -1)
        if b is not None:
            outside = (weights[:, used] @ self.outside[used]).reshape(len(subsets), len(x_t), 1, -1)
            x0 = x0 - b[None, :, :, None] * outside
        return x0.reshape(len(subsets), *x_t.shape)

    def _shift(self, backgrounds: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        """[B, 3] b = 2 (1 - c) in [-1, 1] scale, or None when every render is over white."""
        if backgrounds is None:
            return None
        b = 2.0 * (1.0 - backgrounds.detach().float().cpu().reshape(batch, 3))
        if not bool(b.any()):
            return None
        if not self.library.has_masks:
            raise ValueError("renders over a coloured background need an image set with masks")
        return b

    def grad(self, images: torch.Tensor, cameras: Cameras, progress: float,
             generator: torch.Generator, backgrounds: torch.Tensor | None = None) -> GuidanceOutput:
        """images: [B, 3, H, W] in [0, 1], each composited over the solid colour backgrounds[b]
        ([B, 3] in [0, 1]; None: white) -> the score's gradient (scores.py; SDS: w(t) (eps_hat -
        eps), w = 1 - alpha_bar) against the set composited over the same colours."""
        B, _, H, _ = images.shape
        x = images.detach().cpu()  # the image set stays in CPU memory
        if H != self.resolution:
            x = F.interpolate(x, size=(self.resolution,) * 2, mode="area" if H > self.resolution else "bilinear")
        x = x.reshape(B, -1) * 2.0 - 1.0
        t = self.schedule.sample(B, progress, generator)
        steps = (t * (len(self.alphas_cumprod) - 1)).round().long()
        log_k = self.log_view_kernel(cameras)

        def predict(x_t: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
            """eps_hat of the exact denoiser for [K*B, D] noised images (K draws, draw-major)."""
            k, a = x_t.shape[0] // B, self.alphas_cumprod[at]
            kernel = log_k.repeat(k, 1)
            colours = None if backgrounds is None else backgrounds.detach().cpu().reshape(B, 3).repeat(k, 1)
            if self.scale == 1.0 or bool(self.condition.all()):
                x0 = self.denoise(x_t, a, kernel, self.condition, colours)
            else:
                x0_c, x0_u = self.denoise_many(x_t, a, kernel, [self.condition, None], colours)
                x0 = x0_u + self.scale * (x0_c - x0_u)
            return (x_t - a.sqrt()[:, None] * x0) / (1 - a).sqrt()[:, None]

        g = score_gradient(self.score, x, steps, self.alphas_cumprod, predict, generator)
        g = g.reshape(B, 3, self.resolution, self.resolution)
        if H != self.resolution:
            g = F.interpolate(g, size=(H, H), mode="bilinear") * (self.resolution / H) ** 2
        # d(x)/d(image) = 2 for x = 2 image - 1.
        return GuidanceOutput(grad=(2.0 * g).to(images.device), loss=float(g.square().mean()), t=t)

    @torch.no_grad()
    def sample(self, targets: Cameras, steps: int, generator: torch.Generator,
               on_step=None, should_cancel=None) -> torch.Tensor:
        """Deterministic DDIM samples [K, 3, S, S] in [0, 1] of the conditional set at the
        targets' poses (a `ViewSampler`), with the exact denoiser at every step. All K views
        are denoised together; on_step(done, total) counts view-steps (total = K * steps);
        should_cancel() is asked before each step (raises CancelledError)."""
        from ..errors import CancelledError

        K, S = len(targets), self.resolution
        log_k = self.log_view_kernel(targets)
        timesteps = torch.linspace(len(self.alphas_cumprod) - 1, 0, steps).round().long()
        x = torch.randn((K, 3 * S * S), generator=generator)
        for i, step in enumerate(timesteps):
            if should_cancel and should_cancel():
                raise CancelledError(f"Cancelled after {i} of {steps} denoising steps.")
            a = self.alphas_cumprod[step].expand(K)
            x0 = self.denoise(x, a, log_k, self.condition)
            eps = (x - a.sqrt()[:, None] * x0) / (1 - a).sqrt()[:, None]
            a_prev = self.alphas_cumprod[timesteps[i + 1]] if i + 1 < steps else torch.tensor(1.0)
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
            if on_step:
                on_step((i + 1) * K, steps * K)
        return ((x.reshape(K, 3, S, S) + 1.0) / 2.0).clamp(0, 1)


def _background(asked: str, has_masks: bool) -> str:
    """The training background of a closed-form prior: random where its set knows the masks."""
    if asked == "auto":
        return "random" if has_masks else "white"
    if asked == "random" and not has_masks:
        raise DreamsculptError("--background random needs to know the object's outline in every reference "
                               "image: save them as PNG with transparency, or on a plain white background, "
                               "or use --background auto (white for this set).")
    return asked
