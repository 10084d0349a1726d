"""Text conditions of a text-to-image prior: view-dependent prompts, classifier-free guidance,
and Perp-Neg.

View prompts (DreamFusion) append "front view", "side view", "back view" or "overhead view"
to the prompt, blended by the camera's angle. They are not enough against the Janus problem
(a face on every side): a text model still pulls the back of a head towards a face. Perp-Neg
(Armandpour et al. 2023) adds the *other* views' prompts as negatives, but only their
components perpendicular to the positive prompt's, so what the views share (the object
itself) is not pushed away. Per image, with e_u the unconditional prediction, e_p the
positive one and e_i the negatives':

    d_p = e_p - e_u,   d_i = e_i - e_u
    perp(d_i) = d_i - (<d_i, d_p> / <d_p, d_p>) d_p          (dot products over the image)
    eps_hat = e_u + s * (d_p - sum_i w_i perp(d_i))

The negatives are the three ring views (front, side, back), each weighted by how far the
camera is from it: w_i = PERP_NEG_WEIGHT * (1 - ring weight of view i), so a view's own
prompt is never its negative, and a camera between front and side keeps half of each.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..cameras import Cameras
from ..errors import DreamsculptError
from .base import VIEW_NAMES, view_weights

#: Scale of the negatives' weights (the paper's w; it used 1 to 3 for 3D).
PERP_NEG_WEIGHT = 1.0
#: The views that serve as negatives (their rows in VIEW_NAMES); overhead is never one.
RING = (0, 1, 2)


def perpendicular(d: torch.Tensor, onto: torch.Tensor) -> torch.Tensor:
    """d minus its projection on `onto`, per image: [B, ...] each. Where `onto` is zero
    (no text effect at all) d is returned whole."""
    flat_d, flat_o = d.flatten(1), onto.flatten(1)
    dot = (flat_d * flat_o).sum(1)
    norm = flat_o.square().sum(1)
    coef = torch.where(norm > 0, dot / norm.clamp_min(1e-30), torch.zeros_like(dot))
    return d - coef.view(-1, *(1,) * (d.dim() - 1)) * onto


def perp_neg_guidance(e_u: torch.Tensor, e_p: torch.Tensor, negatives: torch.Tensor,
                      weights: torch.Tensor, scale: float) -> torch.Tensor:
    """eps_hat = e_u + scale (d_p - sum_i w_i perp(d_i)). e_u, e_p: [B, ...];
    negatives: [N, B, ...] the negative prompts' predictions; weights: [B, N]."""
    d_p = e_p - e_u
    push = torch.zeros_like(d_p)
    for i in range(negatives.shape[0]):
        w = weights[:, i].to(d_p).view(-1, *(1,) * (d_p.dim() - 1))
        push = push + w * perpendicular(negatives[i] - e_u, d_p)
    return e_u + scale * (d_p - push)


class ViewPrompts:
    """The text conditions of one prompt: `count` embeddings per image, stacked
    condition-major ([unconditional B][positive B][negatives B each]), and how the model's
    predictions for them combine into one guided prediction.

    encode(texts) -> [N, L, D] embeddings (CLIP for Stable Diffusion, T5 for IF)."""

    def __init__(self, encode: Callable[[list[str]], torch.Tensor], prompt: str, negative: str = "",
                 view_dependent: bool = True, perp_neg: bool = False):
        if perp_neg and not view_dependent:
            raise DreamsculptError("Perp-Neg needs view-dependent prompts: its negatives are the other views' "
                                   "prompts. Turn view prompts on, or leave Perp-Neg off.")
        self.view_dependent, self.perp_neg = view_dependent, perp_neg
        texts = [f"{prompt}, {view} view" for view in VIEW_NAMES] if view_dependent else [prompt]
        self.views = encode(texts)               # [V, L, D], V = 4 or 1
        self.uncond = encode([negative])          # [1, L, D]
        self.count = 2 + (len(RING) if perp_neg else 0)

    def _weights(self, cameras: Cameras) -> torch.Tensor:
        """[B, 4] blending weights over VIEW_NAMES."""
        return view_weights(cameras.azimuth_deg, cameras.elevation_deg).to(self.views.device)

    def positive(self, cameras: Cameras) -> torch.Tensor:
        """[B, L, D]: the prompt, blended over the view prompts by each camera's angle."""
        if not self.view_dependent:
            return self.views.expand(len(cameras), -1, -1)
        return torch.einsum("bv,vld->bld", self._weights(cameras).to(self.views.dtype), self.views)

    def negative_weights(self, cameras: Cameras) -> torch.Tensor:
        """[B, 3] Perp-Neg weights of the front, side and back prompts (module docstring)."""
        ring = self._weights(cameras)[:, list(RING)]
        ring = ring / ring.sum(1, keepdim=True).clamp_min(1e-8)   # overhead cameras: their ring share
        return PERP_NEG_WEIGHT * (1.0 - ring)

    def embeddings(self, cameras: Cameras) -> torch.Tensor:
        """[count * B, L, D] conditions for a batch of B images seen by `cameras`."""
        batch = len(cameras)
        parts = [self.uncond.expand(batch, -1, -1), self.positive(cameras)]
        if self.perp_neg:
            parts += [self.views[v:v + 1].expand(batch, -1, -1) for v in RING]
        return torch.cat(parts)

    def guide(self, eps: torch.Tensor, cameras: Cameras, scale: float) -> torch.Tensor:
        """The model's predictions for `embeddings(cameras)`, [count * B, ...] -> the guided
        prediction [B, ...] (float32): classifier-free guidance, or Perp-Neg."""
        chunks = eps.float().chunk(self.count)
        e_u, e_p = chunks[0], chunks[1]
        if not self.perp_neg:
            return e_u + scale * (e_p - e_u)
        return perp_neg_guidance(e_u, e_p, torch.stack(chunks[2:]), self.negative_weights(cameras), scale)
