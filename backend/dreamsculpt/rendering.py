"""Volume rendering of the field: transmittance, opacity, depth, normals and shading.

`composite` is the plain numerical core (hand-checked in tests); `render` samples rays,
skips empty space with the occupancy grid and shades.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .cameras import Cameras, generate_rays, ray_box_intersect
from .fields import OccupancyGrid, TriplaneField

SHADING_MODES = ("albedo", "lambertian", "textureless")


@dataclass
class RenderOutput:
    """Images of a batch of B cameras at S x S pixels.

    rgb: [B, 3, S, S] in [0, 1] (background composited). opacity, depth: [B, 1, S, S].
    normal: [B, 3, S, S] world-space, opacity-weighted (zeros where not computed).
    orientation: scalar, the orientation penalty (0 when normals were not computed).
    samples: number of field evaluations this render made.
    background: [B, 3] the solid colour each image is composited over, in [0, 1]; None for a
    learned background (it varies over the image).
    """

    rgb: torch.Tensor
    opacity: torch.Tensor
    depth: torch.Tensor
    normal: torch.Tensor
    orientation: torch.Tensor
    samples: int
    background: torch.Tensor | None = None


def composite(density: torch.Tensor, deltas: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Emission-absorption compositing along rays.

    density: [R, N] per world unit; deltas: [R, N] sample spacing; values: [R, N, K].
    alpha_i = 1 - exp(-density_i * delta_i), T_i = prod_{j<i} (1 - alpha_j), w_i = alpha_i T_i.
    Returns (weights [R, N], composited values [R, K]).
    """
    alpha = 1.0 - torch.exp(-density * deltas)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha + 1e-10], -1), -1)[:, :-1]
    weights = alpha * trans
    return weights, (weights[..., None] * values).sum(1)


class Background(nn.Module):
    """What rays see when they leave the object.

    "white": fixed white (rendered reference sets have white backgrounds).
    "random": one random solid colour per image, so the object must be opaque to be seen.
    "learned": a tiny MLP on the ray direction with only low frequencies, too weak to paint
    the object into the backdrop.
    """

    def __init__(self, mode: str = "white"):
        super().__init__()
        if mode not in ("white", "random", "learned"):
            raise ValueError(f"unknown background {mode!r}")
        self.mode = mode
        if mode == "learned":
            self.mlp = nn.Sequential(nn.Linear(3 + 12, 16), nn.SiLU(), nn.Linear(16, 3))

    def solid(self, batch: int, generator: torch.Generator | None = None,
              device: torch.device | str = "cpu") -> torch.Tensor | None:
        """[batch, 3] one colour per image (random ones drawn from `generator`), or None when
        the background is learned (not one colour)."""
        if self.mode == "white":
            return torch.ones(batch, 3, device=device)
        if self.mode == "random":
            return torch.rand((batch, 3), generator=generator).to(device)
        return None

    def forward(self, directions: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """directions: [B, S, S, 3] -> colours [B, S, S, 3]."""
        colour = self.solid(directions.shape[0], generator, directions.device)
        if colour is not None:
            return colour[:, None, None].to(directions).expand_as(directions)
        enc = [directions] + [f(k * directions) for k in (1.0, 2.0) for f in (torch.sin, torch.cos)]
        return torch.sigmoid(self.mlp(torch.cat(enc, -1)))


def shade(albedo: torch.Tensor, normals: torch.Tensor | None, light_dir: torch.Tensor | None,
          mode: str, ambient: float) -> torch.Tensor:
    """albedo, normals: [P, 3]; light_dir: [3] unit vector towards the light -> colours [P, 3]."""
    if mode == "albedo":
        return albedo
    lambert = (normals * light_dir).sum(-1, keepdim=True).clamp_min(0.0)
    light = ambient + (1.0 - ambient) * lambert
    return light.expand_as(albedo) if mode == "textureless" else albedo * light


def render(field: TriplaneField, cameras: Cameras, size: int, samples_per_ray: int,
           occupancy: OccupancyGrid | None = None, background: Background | None = None,
           shading: str = "albedo", light_dir: torch.Tensor | None = None, ambient: float = 0.3,
           generator: torch.Generator | None = None, want_normals: bool = False) -> RenderOutput:
    """Render B images of `size` pixels. A generator turns on stratified jitter (training)."""
    rays = generate_rays(cameras, size, jitter=generator)
    origins, dirs = rays.origins.reshape(-1, 3), rays.directions.reshape(-1, 3)
    near, far = ray_box_intersect(rays, field.config.bound)
    near, far = near.reshape(-1, 1), far.reshape(-1, 1)
    hit = far > near
    far = torch.where(hit, far, near)
    steps = torch.arange(samples_per_ray, dtype=torch.float32, device=origins.device)
    offset = 0.5 if generator is None else torch.rand((origins.shape[0], samples_per_ray), generator=generator).to(origins.device)
    span = (far - near) / samples_per_ray
    t = near + (steps + offset) * span                        # [R, N]
    points = origins[:, None] + t[..., None] * dirs[:, None]  # [R, N, 3]
    keep = hit.expand_as(t)
    if occupancy is not None:
        keep = keep & occupancy.query(points)
    # Early ray termination in two passes: a gradient-free density pass finds the samples
    # that light still reaches (and those visible enough to need normals); only those are
    # evaluated again with gradients, so the backward pass follows the visible surface.
    with torch.no_grad():
        density_0 = torch.zeros_like(t).index_put((keep,), field.density(points[keep]))
        weights_0 = composite(density_0, span.expand_as(t), t[..., None])[0]
        reached = torch.cat([torch.ones_like(t[:, :1], dtype=torch.bool),
                             (weights_0.cumsum(-1) < 1.0 - 1e-4)[:, :-1]], -1)
    keep = keep & reached
    inner = points[keep]
    density_k, albedo_k = field(inner)
    density = torch.zeros_like(t).index_put((keep,), density_k)
    normals_k = None
    if (want_normals or shading != "albedo") and inner.shape[0]:
        # Normals need a double backward: take them only where a sample is visible.
        surface = (weights_0 > 1e-3)[keep]
        normals_k = torch.zeros_like(inner).index_put((surface,), field.normals(inner[surface]))
    colour_k = shade(albedo_k, normals_k, light_dir, shading, ambient)

    values = [colour_k] if normals_k is None else [colour_k, normals_k]
    values_dense = torch.zeros(*t.shape, sum(v.shape[-1] for v in values), device=t.device).index_put((keep,), torch.cat(values, -1))
    values_dense = torch.cat([values_dense, t[..., None]], -1)
    weights, out = composite(density, span.expand_as(t), values_dense)
    opacity = weights.sum(-1, keepdim=True)

    B = len(cameras)
    to_image = lambda x: x.reshape(B, size, size, -1).permute(0, 3, 1, 2)  # noqa: E731
    background = background or Background("white")
    solid = background.solid(len(cameras), generator, out.device)
    if solid is None:
        bg = background(rays.directions, generator).reshape(-1, 3)
    else:
        bg = solid[:, None].expand(-1, size * size, 3).reshape(-1, 3)
    rgb = out[:, :3] + (1.0 - opacity) * bg
    if normals_k is not None:
        normal = out[:, 3:6]
        # Orientation (Ref-NeRF / DreamFusion): penalise visible normals facing away from the eye.
        facing = (values_dense[..., 3:6] * dirs[:, None]).sum(-1).clamp_min(0.0)
        orientation = (weights.detach() * facing.square()).sum(-1).mean()
    else:
        normal = torch.zeros_like(out[:, :3])
        orientation = torch.zeros((), device=rgb.device)
    depth = out[:, -1:] + (1.0 - opacity) * far  # rays that see nothing report the far plane
    return RenderOutput(to_image(rgb), to_image(opacity), to_image(depth), to_image(normal),
                        orientation, int(inner.shape[0]), solid)
