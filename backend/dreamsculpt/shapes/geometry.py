"""The built-in shapes: exact signed distance functions and the colours they come in.

Every shape is an exact signed distance function (negative inside) in Blender's world frame
(Z up), centred on the origin (the cone's bounding box is centred, not its centroid) and well
inside [-1, 1]^3: the farthest surface point is 0.87 from the origin (the cube's corners).
"""

from __future__ import annotations

import torch

from ..errors import DreamsculptError

#: World units. Bump library.LIBRARY_VERSION whenever shapes, shading, views or the renderer change.
SHAPE_DIMENSIONS: dict[str, dict[str, float]] = {
    "cube": {"half_size": 0.5},
    "sphere": {"radius": 0.6},
    "torus": {"major_radius": 0.5, "minor_radius": 0.2},     # lying in the XY plane
    "cone": {"base_radius": 0.55, "height": 1.1},            # axis Z, apex up at z = +0.55
    "cylinder": {"radius": 0.45, "height": 1.1},             # axis Z
}
SHAPES: tuple[str, ...] = tuple(SHAPE_DIMENSIONS)
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.1, 0.1),
    "green": (0.15, 0.65, 0.2),
    "blue": (0.15, 0.3, 0.85),
    "yellow": (0.9, 0.8, 0.1),
    "orange": (0.95, 0.5, 0.1),
    "purple": (0.55, 0.2, 0.75),
    "white": (0.9, 0.9, 0.9),   # not 1.0, so a white object stays visible over white
    "grey": (0.5, 0.5, 0.5),
}
#: Every shape lies inside this sphere (the cube's corners are at 0.866); rays start on it.
BOUNDING_RADIUS = 0.9


# --- Signed distances ([N, 3] -> [N], exact) -------------------------------------------------

def _box(p: torch.Tensor, half_size: float) -> torch.Tensor:
    q = p.abs() - half_size
    return q.clamp_min(0).norm(dim=-1) + q.amax(-1).clamp_max(0)


def _sphere(p: torch.Tensor, radius: float) -> torch.Tensor:
    return p.norm(dim=-1) - radius


def _torus(p: torch.Tensor, major_radius: float, minor_radius: float) -> torch.Tensor:
    q = torch.stack([p[:, :2].norm(dim=-1) - major_radius, p[:, 2]], -1)
    return q.norm(dim=-1) - minor_radius


def _cylinder(p: torch.Tensor, radius: float, height: float) -> torch.Tensor:
    d = torch.stack([p[:, :2].norm(dim=-1) - radius, p[:, 2].abs() - 0.5 * height], -1)
    return d.amax(-1).clamp_max(0) + d.clamp_min(0).norm(dim=-1)


def _segment_distance(q: torch.Tensor, a: tuple[float, float], b: tuple[float, float]) -> torch.Tensor:
    """Distance from 2D points q [N, 2] to the segment a-b."""
    a_, ba = q.new_tensor(a), q.new_tensor(b) - q.new_tensor(a)
    pa = q - a_
    h = ((pa @ ba) / (ba @ ba)).clamp(0, 1)
    return (pa - h[:, None] * ba).norm(dim=-1)


def _cone(p: torch.Tensor, base_radius: float, height: float) -> torch.Tensor:
    # A solid of revolution: the distance to its profile triangle (0,-h/2), (R,-h/2), (0,h/2)
    # in the (radius, z) half-plane; the axis edge is not surface, so only base and slant count.
    half = 0.5 * height
    q = torch.stack([p[:, :2].norm(dim=-1), p[:, 2]], -1)
    dist = torch.minimum(_segment_distance(q, (0.0, -half), (base_radius, -half)),
                         _segment_distance(q, (base_radius, -half), (0.0, half)))
    inside = (q[:, 1] >= -half) & (q[:, 0] * height <= base_radius * (half - q[:, 1]))
    return torch.where(inside, -dist, dist)


_SDF = {"cube": _box, "sphere": _sphere, "torus": _torus, "cone": _cone, "cylinder": _cylinder}


def _check_shape(name: str) -> None:
    if name not in SHAPE_DIMENSIONS:
        raise DreamsculptError(f"Unknown built-in shape {name!r}. Available shapes: {', '.join(SHAPES)}.")


def shape_sdf(name: str, points: torch.Tensor) -> torch.Tensor:
    """Signed distance (world units, negative inside) of shape `name` at points [N, 3] -> [N]."""
    _check_shape(name)
    return _SDF[name](points.float(), **SHAPE_DIMENSIONS[name])


def shape_occupancy(name: str, points: torch.Tensor) -> torch.Tensor:
    """Ground truth for IoU tests: bool [N], true inside (or on) shape `name`."""
    return shape_sdf(name, points) <= 0
