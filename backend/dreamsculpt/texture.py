"""UV textures of a decimated surface: unwrap it, find the surface point behind every texel,
bake colours (or normals) there, and pad the seams.

Conventions: UVs have their origin at the image's bottom-left (OpenGL, OBJ and Blender; the
glTF writer flips v), so texel (row i, column j) of a T x T image has its centre at
u = (j + 0.5) / T, v = 1 - (i + 0.5) / T. Normal maps are tangent space with +Y along
increasing v (OpenGL, as glTF and Blender's Normal Map node expect).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import xatlas
from scipy import ndimage

from .mesh import Surface
from .raster import Fragments, cover

#: Texels kept empty around every chart when packing: with the seam padding below, bilinear
#: filtering and a few mip levels never mix a chart with its neighbour.
CHART_PADDING = 4

#: No chart larger than this share of the surface (1 / 50). Growing unbounded charts is what
#: makes xatlas slow on trained meshes: on the standard cube (50k faces, 1024²) it took 15.2 s
#: for 1143 charts (84% of the texture used); capped, 4.3 s for 630 charts (78%). Torus
#: 6.8 -> 4.2 s, sphere 7.5 -> 5.1 s at the same use (82-83%).
CHART_SHARE = 50

#: A function from surface points [P, 3] (the field's frame) to values [P, C].
PointFunction = Callable[[np.ndarray], np.ndarray]
#: A function from surface points [P, 3] and their unit outward normals [P, 3] to values [P, C].
SurfaceFunction = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class UVLayout:
    """A surface cut into charts packed into the unit square, for a `size` x `size` texture.

    vertex_of: [W] the surface vertex each UV vertex copies (seams duplicate vertices);
    faces: [F, 3] the surface's faces, in the same order, indexing the UV vertices;
    uvs: [W, 2] float32 in [0, 1], origin bottom-left.
    """

    vertex_of: np.ndarray
    faces: np.ndarray
    uvs: np.ndarray
    size: int


def unwrap(surface: Surface, size: int) -> UVLayout:
    """Cut `surface` into charts and pack them for a `size`-texel texture (xatlas)."""
    atlas = xatlas.Atlas()
    atlas.add_mesh(surface.vertices.astype(np.float32), surface.faces.astype(np.uint32))
    charts = xatlas.ChartOptions()
    charts.max_chart_area = float(surface.to_trimesh().area) / CHART_SHARE
    pack = xatlas.PackOptions()
    pack.resolution, pack.padding, pack.bilinear = size, CHART_PADDING, True
    atlas.generate(chart_options=charts, pack_options=pack)
    vertex_of, faces, uvs = atlas[0]
    layout = UVLayout(vertex_of.astype(np.int64), faces.astype(np.int64), uvs.astype(np.float32), size)
    if not np.array_equal(layout.vertex_of[layout.faces], surface.faces):
        raise AssertionError("xatlas reordered the faces")   # the bake relies on the same order
    return layout


@dataclass
class TexelSamples(Fragments):
    """The texels inside a chart: their row, column, face and barycentric coordinates."""

    @staticmethod
    def of(layout: UVLayout) -> "TexelSamples":
        """Every texel a chart's triangle touches (conservatively: a chart narrower than a
        texel still owns the texels under it, so seam padding never fills it from a neighbour)."""
        uv = layout.uvs[layout.faces].astype(np.float64)
        xy = np.stack([uv[..., 0] * layout.size, (1.0 - uv[..., 1]) * layout.size], -1)
        found = cover(xy, layout.size, conservative=True)
        return TexelSamples(found.rows, found.cols, found.face, found.bary)


def pad_seams(image: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """Every texel outside the charts takes the value of the nearest texel inside one, so no
    filtering or mip level ever reads an unbaked (black) texel."""
    if covered.all() or not covered.any():
        return image
    _, (rows, cols) = ndimage.distance_transform_edt(~covered, return_indices=True)
    return image[rows, cols]


def bake(layout: UVLayout, vertices: np.ndarray, normals: np.ndarray, function: SurfaceFunction,
         samples: TexelSamples | None = None) -> np.ndarray:
    """The [size, size, C] texture of `function` evaluated at the surface point behind each
    texel and its interpolated normal (vertices, normals: the surface's [V, 3]), seams padded."""
    samples = samples or TexelSamples.of(layout)
    corners = layout.vertex_of[layout.faces]
    points = samples.interpolate(vertices[corners]).astype(np.float32)
    values = np.asarray(function(points, _unit(samples.interpolate(normals[corners])).astype(np.float32)),
                        dtype=np.float32)
    image = np.zeros((layout.size, layout.size, values.shape[-1]), np.float32)
    image[samples.rows, samples.cols] = values
    covered = np.zeros((layout.size, layout.size), bool)
    covered[samples.rows, samples.cols] = True
    return pad_seams(image, covered)


def tangent_frames(layout: UVLayout, vertices: np.ndarray, normals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per UV vertex: the unit tangent [W, 3] along increasing u, orthogonal to the vertex
    normal, and the sign [W] making cross(normal, tangent) * sign point along increasing v."""
    p = vertices[layout.vertex_of][layout.faces]             # [F, 3, 3]
    uv = layout.uvs[layout.faces]                            # [F, 3, 2]
    e1, e2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
    d1, d2 = uv[:, 1] - uv[:, 0], uv[:, 2] - uv[:, 0]
    det = d1[:, 0] * d2[:, 1] - d2[:, 0] * d1[:, 1]
    det = np.where(np.abs(det) < 1e-20, 1e-20, det)[:, None]
    face_t = (e1 * d2[:, 1:2] - e2 * d1[:, 1:2]) / det
    face_b = (e2 * d1[:, 0:1] - e1 * d2[:, 0:1]) / det
    count = len(layout.uvs)
    tangent, bitangent = np.zeros((count, 3)), np.zeros((count, 3))
    for k in range(3):
        np.add.at(tangent, layout.faces[:, k], face_t)
        np.add.at(bitangent, layout.faces[:, k], face_b)
    n = normals[layout.vertex_of].astype(np.float64)
    tangent -= n * (n * tangent).sum(-1, keepdims=True)
    tangent /= np.maximum(np.linalg.norm(tangent, axis=-1, keepdims=True), 1e-12)
    sign = np.where((np.cross(n, tangent) * bitangent).sum(-1) < 0, -1.0, 1.0)
    return tangent.astype(np.float32), sign.astype(np.float32)


def bake_normal_map(layout: UVLayout, vertices: np.ndarray, normals: np.ndarray, detail: PointFunction,
                    samples: TexelSamples | None = None) -> np.ndarray:
    """[size, size, 3] tangent-space normal map in [0, 1]: at each texel, the `detail` normal
    (the dense surface's, [P, 3] unit vectors in the field's frame) in the frame of the
    interpolated vertex normal and tangent of `vertices` (the decimated surface)."""
    samples = samples or TexelSamples.of(layout)
    tangent, sign = tangent_frames(layout, vertices, normals)
    corners = layout.faces
    n = _unit(samples.interpolate(normals[layout.vertex_of][corners]))
    t = samples.interpolate(tangent[corners])
    t = _unit(t - n * (n * t).sum(-1, keepdims=True))
    b = np.cross(n, t) * sign[corners[samples.face, 0]][:, None]
    points = samples.interpolate(vertices[layout.vertex_of][corners])
    d = _unit(np.asarray(detail(points.astype(np.float32)), dtype=np.float32))
    local = np.stack([(d * t).sum(-1), (d * b).sum(-1), (d * n).sum(-1)], -1)
    image = np.zeros((layout.size, layout.size, 3), np.float32)
    image[:] = (0.5, 0.5, 1.0)                # flat: the normal of the decimated surface
    image[samples.rows, samples.cols] = local * 0.5 + 0.5
    covered = np.zeros((layout.size, layout.size), bool)
    covered[samples.rows, samples.cols] = True
    return pad_seams(image, covered)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def to_bytes(image: np.ndarray) -> np.ndarray:
    """[H, W, C] floats in [0, 1] -> uint8."""
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
