"""Triangles to pixels on the CPU, in numpy (not differentiable): which pixels each triangle
covers, with barycentric coordinates. Two uses: texels of UV charts (conservative, for
baking) and views of a mesh (depth-tested, perspective-correct, for measuring a textured
asset against the field it came from).

Pixel (row i, column j) has its centre at (x, y) = (j + 0.5, i + 0.5); x grows right, y down
(cameras.project gives this frame).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Fragments:
    """Covered pixels: row, column, the face covering them and its barycentric coordinates."""

    rows: np.ndarray      # [P] int64
    cols: np.ndarray      # [P] int64
    face: np.ndarray      # [P] int64
    bary: np.ndarray      # [P, 3] float32, non-negative, summing to 1

    def interpolate(self, corner_values: np.ndarray) -> np.ndarray:
        """corner_values: [F, 3, C] per face corner -> [P, C] at the pixels."""
        return np.einsum("pk,pkc->pc", self.bary, corner_values[self.face])


def cover(xy: np.ndarray, size: int, *, conservative: bool = False, depth: np.ndarray | None = None,
          every: bool = False) -> Fragments:
    """The pixels of a size x size image covered by triangles xy [F, 3, 2] (pixel units).

    Default: pixels whose centre lies inside. `conservative`: every pixel a triangle touches
    at all; its sample point is its centre moved onto the triangle. Where triangles overlap, a
    pixel goes to the nearest one when `depth` [F, 3] (distance along the view axis, > 0) is
    given, and then its barycentrics are perspective-correct; otherwise to the triangle
    holding its centre (or nearest to it). `every`: all (pixel, triangle) pairs, overlaps kept.

    Triangles are grouped by the size of their pixel bounding box (powers of two), and each
    group is tested against all pixels of its boxes at once: tens of thousands of small
    triangles in a few array operations.
    """
    xy = xy.astype(np.float64)
    if conservative:
        lo, hi = np.floor(xy.min(1)), np.ceil(xy.max(1)) - 1
    else:
        lo, hi = np.ceil(xy.min(1) - 0.5), np.floor(xy.max(1) - 0.5)
    visible = (hi >= 0).all(1) & (lo <= size - 1).all(1)
    lo, hi = np.clip(lo, 0, size - 1).astype(np.int64), np.clip(hi, 0, size - 1).astype(np.int64)
    extent = np.maximum(hi - lo + 1, 1).max(1)
    a, b, c = xy[:, 0], xy[:, 1], xy[:, 2]
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    usable = visible & (np.abs(area) > 1e-12)
    if depth is not None:
        usable &= (depth > 1e-6).all(1)
    found: list[tuple[np.ndarray, ...]] = []
    largest, side = int(extent[usable].max(initial=1)), 1
    while True:   # boxes of 1, 2, 4 ... pixels, up to the largest
        group = np.nonzero(usable & (extent <= side) & (extent > side // 2))[0]
        if len(group):
            found.append(_pixels_in(group, xy[group], area[group], lo[group], side, size, conservative))
        if side >= largest:
            break
        side *= 2
    if not found:
        empty = np.zeros(0, np.int64)
        return Fragments(empty, empty, empty, np.zeros((0, 3), np.float32))
    rows, cols, face, bary = (np.concatenate(parts) for parts in zip(*found))
    if every:
        return Fragments(rows, cols, face, bary.astype(np.float32))
    if depth is not None:   # perspective-correct: 1 / depth is linear in screen space
        inverse = bary / depth[face]
        score = inverse.sum(-1)                       # 1 / depth at the pixel: nearest is largest
        bary = inverse / score[:, None]
    else:
        score = bary.min(-1)                          # most inside
    order = np.lexsort((-score, rows * size + cols))
    rows, cols, face, bary = rows[order], cols[order], face[order], bary[order]
    first = np.ones(len(rows), bool)
    first[1:] = (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1])
    kept = np.clip(bary[first], 0.0, None)
    kept /= kept.sum(-1, keepdims=True)
    return Fragments(rows[first], cols[first], face[first], kept.astype(np.float32))


def _pixels_in(faces: np.ndarray, xy: np.ndarray, area: np.ndarray, lo: np.ndarray, side: int,
               size: int, conservative: bool) -> tuple[np.ndarray, ...]:
    """The pixels of `side` x `side` boxes from `lo` that their triangle covers (or touches),
    with the barycentric coordinates of their centres (unclamped)."""
    steps = np.arange(side)
    cols = lo[:, 0, None, None] + steps[None, None, :]              # [n, 1, side]
    rows = lo[:, 1, None, None] + steps[None, :, None]              # [n, side, 1]
    px, py = cols + 0.5, rows + 0.5
    weights, inside = [], []
    for k in range(3):   # the barycentric weight of corner k: the sub-triangle opposite it
        (x1, y1), (x2, y2) = xy[:, (k + 1) % 3].T, xy[:, (k + 2) % 3].T
        dx, dy = (x2 - x1)[:, None, None], (y2 - y1)[:, None, None]
        weight = (dx * (py - y1[:, None, None]) - dy * (px - x1[:, None, None])) / area[:, None, None]
        # A pixel's square reaches half a pixel further along the edge's normal, in both axes.
        reach = 0.5 * (np.abs(dx) + np.abs(dy)) / np.abs(area)[:, None, None] if conservative else 0.0
        weights.append(weight)
        inside.append(weight >= -reach - 1e-9)
    bary = np.stack(np.broadcast_arrays(*weights), -1)              # [n, side, side, 3]
    covered = np.logical_and.reduce(np.broadcast_arrays(*inside)) & (cols < size) & (rows < size)
    n, r, c = np.nonzero(covered)
    return (rows[n, r, 0], cols[n, 0, c], faces[n], bary[n, r, c])


def sample_bilinear(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """image [T, T, C] at UVs [P, 2] (origin bottom-left), bilinear, edges clamped -> [P, C]."""
    size = image.shape[0]
    x = np.clip(uv[:, 0] * size - 0.5, 0, size - 1)
    y = np.clip((1.0 - uv[:, 1]) * size - 0.5, 0, size - 1)
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    x1, y1 = np.minimum(x0 + 1, size - 1), np.minimum(y0 + 1, size - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return top * (1 - fy) + bottom * fy
