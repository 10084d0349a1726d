"""Sphere tracing of the built-in shapes: the renders their library and the tests are made of.

Images are sphere-traced in pure torch with 2x2 supersampling over white. Shading uses a
light fixed in the world, so a view-independent albedo field can reproduce it::

    colour = albedo * (AMBIENT + DIFFUSE * max(0, n . LIGHT_DIR))

Geometry (pixel coverage and coverage-weighted shading) is rendered once per shape and view
(`render_shape`); every colour is then one multiply-add (`ShapeRender.colourise`).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..cameras import Cameras, generate_rays
from .geometry import BOUNDING_RADIUS, COLOURS, _check_shape, shape_sdf

LIGHT_DIR = F.normalize(torch.tensor([0.4, -0.6, 0.7]), dim=0)   # front-right-above
AMBIENT, DIFFUSE = 0.55, 0.45


@dataclass
class ShapeRender:
    """Colour-independent renders of one shape from B views.

    coverage: [B, H, W] fraction of each pixel's subsamples that hit the shape, in [0, 1].
    shaded: [B, H, W] mean over the subsamples of hit * (AMBIENT + DIFFUSE * max(0, n . l)).
    """

    coverage: torch.Tensor
    shaded: torch.Tensor

    def colourise(self, albedo) -> torch.Tensor:
        """Albedo [3] (or a COLOURS name) -> images [B, 3, H, W] over a white background.

        Per subsample the pixel is albedo * shading where hit and 1 where not, so the
        pixel mean is albedo * shaded + (1 - coverage)."""
        albedo = COLOURS[albedo] if isinstance(albedo, str) else albedo
        albedo = torch.as_tensor(albedo, dtype=torch.float32).reshape(1, 3, 1, 1)
        return (albedo * self.shaded[:, None] + (1.0 - self.coverage[:, None])).clamp(0, 1)

    def rgba(self, albedo) -> torch.Tensor:
        """[B, 4, H, W]: straight (not premultiplied) colour with the coverage as alpha."""
        alpha = self.coverage[:, None]
        premultiplied = self.colourise(albedo) - (1.0 - alpha)
        rgb = torch.where(alpha > 0, premultiplied / alpha.clamp_min(1e-6), torch.ones_like(premultiplied))
        return torch.cat([rgb.clamp(0, 1), alpha], 1)


def sphere_trace(sdf, origins: torch.Tensor, directions: torch.Tensor, near: torch.Tensor,
                 far: torch.Tensor, max_steps: int = 256, eps: float = 5e-4,
                 min_step: float = 2e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """March rays [R, 3] from `near` to `far` ([R]) by the signed distance.

    Returns (hit bool [R], t [R] the distance along each ray to the surface where hit).
    Steps are at least `min_step` (world units): rays grazing a surface would otherwise crawl
    along it and run out of steps before reaching what lies behind. An overshoot lands inside
    (negative distance) and counts as a hit at most min_step deep. Rays still marching after
    `max_steps` count as misses.
    """
    hit = torch.zeros_like(near, dtype=torch.bool)
    t_hit = near.clone()
    # Only unfinished rays are marched: their origin, direction, t and far packed in one
    # [R', 8] tensor so dropping finished ones is a single gather; `index` maps them back.
    index = torch.nonzero(near < far).squeeze(-1)
    state = torch.cat([origins, directions, near[:, None], far[:, None]], 1).index_select(0, index)
    for _ in range(max_steps):
        if index.numel() == 0:
            break
        t = state[:, 6]
        dist = sdf(torch.addcmul(state[:, :3], t[:, None], state[:, 3:6]))
        done = dist < eps
        finished = torch.nonzero(done).squeeze(-1)
        hit[index[finished]] = True
        t_hit[index[finished]] = t[finished]
        t += dist.clamp_min(min_step)
        keep = torch.nonzero(~done & (t < state[:, 7])).squeeze(-1)
        if keep.numel() < index.numel():
            index, state = index[keep], state.index_select(0, keep)
    return hit, t_hit


def ray_sphere_intersect(origins: torch.Tensor, directions: torch.Tensor,
                         radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Entry and exit distances [R] of unit rays [R, 3] through the sphere of `radius` at
    the origin; far < near where a ray misses."""
    b = (origins * directions).sum(-1)
    c = origins.square().sum(-1) - radius ** 2
    half = (b * b - c).clamp_min(0).sqrt()
    miss = b * b < c
    return (-b - half).clamp_min(0), torch.where(miss, torch.full_like(b, -1.0), -b + half)


def sdf_normals(sdf, points: torch.Tensor, h: float = 1e-3) -> torch.Tensor:
    """Unit normals [N, 3] from the SDF gradient (tetrahedral central differences)."""
    k = points.new_tensor([[1, -1, -1], [-1, -1, 1], [-1, 1, -1], [1, 1, 1]])
    grad = sum(sdf(points + h * k[i])[:, None] * k[i] for i in range(4))
    return F.normalize(grad, dim=-1)


def render_shape(name: str, cameras: Cameras, resolution: int, supersample: int = 2,
                 max_rays: int = 2 ** 21, scale: float = 1.0,
                 offset: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> ShapeRender:
    """Sphere-trace shape `name` from B cameras at resolution^2 pixels, supersample^2 rays each.
    The shape can be scaled (about its centre) and moved: it is then scale * shape + offset.

    Runs on one intra-op thread (see `one_thread`).
    """
    _check_shape(name)
    size = resolution * supersample
    views_per_chunk = max(1, max_rays // size ** 2)
    with one_thread():
        chunks = [_render_chunk(name, cameras[start:start + views_per_chunk], size, scale, offset)
                  for start in range(0, len(cameras), views_per_chunk)]
    hit, shade = (torch.cat(parts) for parts in zip(*chunks))   # [B, 1, size, size] each
    return ShapeRender(F.avg_pool2d(hit, supersample)[:, 0], F.avg_pool2d(hit * shade, supersample)[:, 0])


@contextmanager
def one_thread():
    """Run torch on one intra-op thread, then restore the process-wide setting.

    The marching loop is hundreds of small ops: on a 2-core machine busy with other
    processes, two torch threads made the library build 10-20x slower (every op waits for a
    descheduled thread), and the loop is too fine-grained for a second thread to gain much
    on an idle one. Note the setting is process-wide while it lasts."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _render_chunk(name: str, cameras: Cameras, size: int, scale: float = 1.0,
                  offset: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (hit, shading factor), each [B, 1, size, size] float; shading is 0 where missed."""
    shift = torch.tensor(offset, dtype=torch.float32)
    sdf = lambda p: shape_sdf(name, (p - shift) / scale) * scale  # noqa: E731
    rays = generate_rays(cameras, size)
    origins, dirs = rays.origins.reshape(-1, 3), rays.directions.reshape(-1, 3)
    # The bounding sphere, in the shape's own frame (rays are moved there; directions keep).
    hit, t = sphere_trace(sdf, origins, dirs,
                          *ray_sphere_intersect(origins - shift, dirs, BOUNDING_RADIUS * scale))
    shade = torch.zeros_like(t)
    normals = sdf_normals(sdf, origins[hit] + t[hit, None] * dirs[hit])
    shade[hit] = AMBIENT + DIFFUSE * (normals @ LIGHT_DIR).clamp_min(0)
    return hit.float().reshape(-1, 1, size, size), shade.reshape(-1, 1, size, size)
