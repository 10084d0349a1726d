"""From a dense surface to an asset an artist can use, in the order that keeps it fast:

    decimate to the face budget -> smooth normals -> unwrap (xatlas) -> bake the base colour
    (and, if asked, a normal map from the dense surface) -> real-world size and origin

Colours and normals come from functions of a surface point, so any stage that has a surface
and something to colour it (the NeRF's field today, a refined mesh's texture field later)
makes its asset here. `export.py` writes it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from .config import MeshConfig
from .errors import DreamsculptError
from .mesh import Surface, decimate
from .texture import (
    PointFunction,
    SurfaceFunction,
    TexelSamples,
    UVLayout,
    bake,
    bake_normal_map,
    unwrap,
)


@dataclass(frozen=True)
class AssetTransform:
    """The field's frame -> the asset's: p' = scale * (p - anchor). `anchor` becomes the origin."""

    scale: float
    anchor: tuple[float, float, float]

    def apply(self, points: np.ndarray) -> np.ndarray:
        return ((points - np.asarray(self.anchor, dtype=np.float32)) * self.scale).astype(np.float32)

    def matrix(self) -> np.ndarray:
        """4x4 (row-major) of `apply`."""
        m = np.eye(4) * self.scale
        m[:3, 3] = -self.scale * np.asarray(self.anchor)
        m[3, 3] = 1.0
        return m


def fit_transform(vertices: np.ndarray, size: float | None, origin: str) -> AssetTransform:
    """Scale so the longest side of the bounding box is `size` (None: unscaled), and anchor the
    box's centre ("center") or the centre of its bottom face ("bottom": it stands on z = 0)."""
    lo, hi = vertices.min(0).astype(np.float64), vertices.max(0).astype(np.float64)
    longest = float((hi - lo).max())
    if size is not None and longest <= 0:
        raise DreamsculptError("The mesh is flat in every direction; it cannot be given a --size.")
    centre = (lo + hi) / 2
    if origin == "bottom":
        centre[2] = lo[2]
    elif origin != "center":
        raise DreamsculptError(f"Unknown --origin {origin!r}: use center or bottom.")
    return AssetTransform(1.0 if size is None else size / longest, tuple(float(c) for c in centre))


@dataclass
class Asset:
    """A decimated, UV-textured surface in the asset's frame (Z up, metres when sized).

    normals, colours: [V, 3] per surface vertex (colours: the albedo, for vertex-colour use);
    texture, normal_map: [T, T, 3] floats in [0, 1] (normal_map None unless asked);
    seconds: the time each step took (decimate, unwrap, bake; export adds its own).
    """

    surface: Surface
    normals: np.ndarray
    colours: np.ndarray
    layout: UVLayout
    texture: np.ndarray
    normal_map: np.ndarray | None
    transform: AssetTransform
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def extent(self) -> list[float]:
        """The bounding box's size along x, y, z."""
        v = self.surface.vertices
        return [round(float(s), 6) for s in v.max(0) - v.min(0)]


def make_asset(dense: Surface, colour: SurfaceFunction, config: MeshConfig,
               detail_normals: PointFunction | None = None, on_stage: Callable[[str], None] | None = None) -> Asset:
    """`dense` (closed, in the field's frame) made an asset: see the module docstring.
    `colour` gives the albedo a viewer sees at surface points (with their normals);
    `detail_normals` gives the dense surface's normal at a
    point (needed for config.normal_map); `on_stage(name)` is told when each step starts."""
    seconds: dict[str, float] = {}
    with _step(seconds, "decimate", "decimating", on_stage):
        light = decimate(dense, config.max_faces)
        normals = light.vertex_normals()
    with _step(seconds, "unwrap", "unwrapping", on_stage):
        layout = unwrap(light, config.texture_size)
    with _step(seconds, "bake", "baking", on_stage):
        samples = TexelSamples.of(layout)
        texture = bake(layout, light.vertices, normals, colour, samples)
        colours = np.asarray(colour(light.vertices, normals), dtype=np.float32)
        normal_map = None
        if config.normal_map:
            if detail_normals is None:
                raise ValueError("config.normal_map needs detail_normals")
            normal_map = bake_normal_map(layout, light.vertices, normals, detail_normals, samples)
    transform = fit_transform(light.vertices, config.size, config.origin)
    placed = Surface(transform.apply(light.vertices), light.faces)
    return Asset(placed, normals, colours, layout, texture, normal_map, transform, seconds)


@contextmanager
def _step(seconds: dict[str, float], name: str, stage: str, on_stage: Callable[[str], None] | None):
    """Tell `on_stage` that `stage` starts, and time it into seconds[name]."""
    if on_stage:
        on_stage(stage)
    tick = time.perf_counter()
    yield
    seconds[name] = round(time.perf_counter() - tick, 3)
