"""From the optimised field to a coloured triangle mesh, and its export.

Threshold rule (automatic unless given): the density level whose silhouettes best match
the field's own renders. From 8 cameras around the object (above, level and below) we
render opacity, and for every ray the largest density met along it; a level L puts a pixel
inside the mesh's silhouette iff that maximum exceeds L. We pick the L maximising the mean
IoU between those silhouettes and the pixels the field renders at least half opaque. This
follows what the renders show, whatever the density scale the optimisation settled on.
"""

from __future__ import annotations

from dataclasses import dataclass

import fast_simplification
import mcubes
import numpy as np
import torch
import trimesh
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .cameras import Cameras, generate_rays, ray_box_intersect
from .config import MeshConfig
from .errors import DreamsculptError
from .fields import OccupancyGrid, TriplaneField
from .rendering import render


@dataclass
class Surface:
    """A closed triangle surface. vertices: [V, 3] float32 world (Z up, inside [-1, 1]^3);
    faces: [F, 3] int64, counter-clockwise seen from outside."""

    vertices: np.ndarray
    faces: np.ndarray

    def to_trimesh(self) -> trimesh.Trimesh:
        return trimesh.Trimesh(self.vertices, self.faces, process=False)

    def is_watertight(self) -> bool:
        """Every edge shared by exactly two faces, wound consistently."""
        mesh = self.to_trimesh()
        return bool(mesh.is_watertight and mesh.is_winding_consistent)

    def cleaned(self) -> "Surface":
        """Without zero-area faces, fins and unused vertices, coincident vertices merged.

        A fin is a pair of faces on the same three vertices (a sheet of no volume, which
        quadric decimation leaves where it collapses a thin part): both go, so the edges
        around it are shared by two faces again. Of an odd number of copies one stays."""
        mesh = self.to_trimesh()
        mesh.merge_vertices()
        mesh.update_faces(mesh.nondegenerate_faces(height=1e-9))
        _, first, group, count = np.unique(np.sort(mesh.faces, 1), axis=0, return_index=True,
                                           return_inverse=True, return_counts=True)
        group = group.ravel()
        mesh.update_faces((count[group] % 2 == 1) & (first[group] == np.arange(len(mesh.faces))))
        mesh.remove_unreferenced_vertices()
        return Surface(np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces, np.int64))

    def without_small_parts(self, min_fraction: float) -> "Surface":
        """Only the connected pieces with at least `min_fraction` of the largest one's faces."""
        edges = np.concatenate([self.faces[:, [0, 1]], self.faces[:, [1, 2]]])
        graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(len(self.vertices),) * 2)
        _, label = connected_components(graph, directed=False)
        part = label[self.faces[:, 0]]
        sizes = np.bincount(part)
        keep = sizes[part] >= min_fraction * sizes.max()
        mesh = trimesh.Trimesh(self.vertices, self.faces[keep], process=False)
        mesh.remove_unreferenced_vertices()
        return Surface(np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces, np.int64))

    def vertex_normals(self) -> np.ndarray:
        """[V, 3] unit normals, the area-weighted mean of the faces around each vertex."""
        return np.asarray(self.to_trimesh().vertex_normals, dtype=np.float32)


def _silhouette_views() -> Cameras:
    az = torch.tensor([0.0, 90.0, 180.0, 270.0, 45.0, 225.0, 135.0, 315.0])
    el = torch.tensor([15.0, 15.0, 15.0, 15.0, 60.0, 60.0, -35.0, -35.0])
    return Cameras.from_orbit(az, el, 3.0, 40.0)


@torch.no_grad()
def auto_threshold(field: TriplaneField, occupancy: OccupancyGrid | None = None, size: int = 64,
                   samples: int = 192) -> float:
    """The density level whose silhouettes best match the rendered opacity (module docstring)."""
    device = field.planes.device
    cams = _silhouette_views().to(device)
    opaque = render(field, cams, size, 128, occupancy).opacity.reshape(-1) > 0.5
    rays = generate_rays(cams, size)
    near, far = ray_box_intersect(rays, field.config.bound)
    far = torch.maximum(far, near)
    steps = (torch.arange(samples, device=device) + 0.5) / samples
    t = near[..., None] + (far - near)[..., None] * steps
    points = rays.origins[..., None, :] + t[..., None] * rays.directions[..., None, :]
    density = torch.cat([field.density(p) for p in points.reshape(-1, 3).split(1 << 18)])
    ray_max = density.reshape(-1, samples).amax(-1)
    if not opaque.any():
        raise DreamsculptError("The optimised field is empty: nothing renders opaque. Try more --steps, "
                               "another --seed, or check that the prompt matches the prior.")
    candidates = torch.quantile(ray_max[opaque], torch.linspace(0.0, 0.98, 50, device=device))
    inside = ray_max[None] > candidates[:, None]                       # [L, pixels]
    inter = (inside & opaque[None]).reshape(len(candidates), len(cams), -1).sum(-1).float()
    union = (inside | opaque[None]).reshape(len(candidates), len(cams), -1).sum(-1).float()
    iou = (inter / union.clamp_min(1)).mean(-1)
    # Levels up to the densest shell all cast the same silhouettes; of the near-ties take the
    # lowest, which keeps the interior (never seen, often less dense) inside the solid.
    best = int(torch.nonzero(iou >= iou.max() - 0.005)[0])
    return float(candidates[best])


@torch.no_grad()
def extract_surface(field: TriplaneField, config: MeshConfig,
                    occupancy: OccupancyGrid | None = None) -> tuple[Surface, float]:
    """The dense surface: marching cubes of the density at `config.resolution`^3, cleaned to
    one closed solid (watertight). Returns (surface, threshold used)."""
    threshold = config.threshold if config.threshold is not None else auto_threshold(field, occupancy)
    surface, _ = surface_at(field, config.resolution, threshold, config.min_component_fraction)
    return surface, threshold


@torch.no_grad()
def surface_at(field: TriplaneField, resolution: int, threshold: float,
               min_fraction: float) -> tuple[Surface, np.ndarray]:
    """(marching cubes of the density at level `threshold` on a resolution^3 lattice over the
    field's box, that lattice's density made one clean solid by `clean_solid`)."""
    bound = field.config.bound
    grid = clean_solid(field.density_grid(resolution).cpu().numpy(), threshold, min_fraction)
    # A zero border closes surfaces that touch the box, so the mesh is watertight.
    verts, faces = mcubes.marching_cubes(np.pad(grid, 1, constant_values=0.0), threshold)
    if len(faces) == 0:
        raise DreamsculptError(f"No surface at density threshold {threshold:.3g} (densest point {grid.max():.3g}). "
                               "Try a lower --threshold, more --steps or another --seed.")
    verts = (verts - 1.0) / (resolution - 1) * 2.0 * bound - bound
    surface = Surface(verts.astype(np.float32), faces.astype(np.int64)).cleaned()
    if len(surface.faces) < 4:
        raise DreamsculptError("The extracted mesh is degenerate (fewer than 4 faces). "
                               "Try a lower --threshold, more --steps or another --seed.")
    return surface, grid


def decimate(surface: Surface, max_faces: int) -> Surface:
    """`surface` with at most `max_faces` faces (quadric edge collapse), without degenerate
    faces; a watertight input stays watertight.

    fast-simplification does not check that a collapse keeps the surface manifold: it can
    pinch thin parts into fins (two faces on the same three vertices, which `Surface.cleaned`
    removes) or press two sheets together along an edge (which `unpinch` separates again).
    Should a closed input still come out open, the collapse is redone less aggressively
    (its `agg`: smaller, more careful rounds)."""
    if len(surface.faces) <= max_faces:
        return surface.cleaned()
    closed = surface.is_watertight()
    for aggressiveness in (7, 4, 2):
        vertices, faces = fast_simplification.simplify(surface.vertices, surface.faces.astype(np.int32),
                                                       target_count=max_faces, agg=aggressiveness)
        light = Surface(np.asarray(vertices, np.float32), np.asarray(faces, np.int64)).cleaned()
        if not closed or light.is_watertight():
            return light
        light = unpinch(light)
        if light.is_watertight():
            return light
    raise DreamsculptError(f"Decimating the mesh to {max_faces} faces opened holes in it. "
                           "Try a larger --max-faces.")


def unpinch(surface: Surface) -> Surface:
    """`surface` with every edge shared by two faces, where decimation pinched two sheets
    together along an edge (four faces on it): each sheet gets its own copies of the pinched
    vertices, in the same place. Faces keep their order; positions do not change.

    Around a pinched edge the faces are paired in angular order, one facing each way, and
    each vertex is split into as many copies as it has fans of faces joined across paired
    edges. Of the two ways to pair four faces, the first is tried; an edge still shared by
    four faces afterwards (the sheets were also joined elsewhere) is paired the other way."""
    shifted: set[int] = set()
    for _ in range(3):
        vertices, faces = _split_fans(surface.vertices, surface.faces, shifted)
        still = _edge_count_per_half_edge(faces) != 2
        if not still.any():
            break
        shifted |= set(_half_edges(surface.faces)[2][still].tolist())
    return Surface(vertices, faces)


def _half_edges(faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(from, to, undirected edge key) of the 3F half-edges; half-edge 3f + k runs from
    corner k of face f to corner k + 1."""
    start, end = faces.reshape(-1), faces[:, [1, 2, 0]].reshape(-1)
    n = int(faces.max(initial=0)) + 1
    return start, end, np.minimum(start, end) * n + np.maximum(start, end)


def _edge_count_per_half_edge(faces: np.ndarray) -> np.ndarray:
    _, inverse, count = np.unique(_half_edges(faces)[2], return_inverse=True, return_counts=True)
    return count[inverse.ravel()]


def _split_fans(vertices: np.ndarray, faces: np.ndarray, shifted: set[int]) -> tuple[np.ndarray, np.ndarray]:
    start, end, key = _half_edges(faces)
    order = np.argsort(key, kind="stable")
    first = np.r_[0, np.nonzero(np.diff(key[order]))[0] + 1]
    count = np.diff(np.r_[first, len(order)])
    pairs = [np.stack([order[first[count == 2]], order[first[count == 2] + 1]], 1)]
    for f, c in zip(first[count >= 4], count[count >= 4]):
        around = order[f:f + c]
        p, q = vertices[start[around[0]]], vertices[end[around[0]]]
        axis = (q - p) / max(float(np.linalg.norm(q - p)), 1e-12)
        third = vertices[faces.reshape(-1)[(around // 3) * 3 + (around % 3 + 2) % 3]] - p
        third = third - np.outer(third @ axis, axis)
        x = third[0] / max(float(np.linalg.norm(third[0])), 1e-12)
        around = around[np.argsort(np.arctan2(third @ np.cross(axis, x), third @ x))]
        if int(key[around[0]]) in shifted:
            around = np.roll(around, 1)
        pairs.append(np.stack([around[0::2], around[1::2]], 1))
    pairs = np.concatenate(pairs)
    pairs = pairs[start[pairs[:, 0]] == end[pairs[:, 1]]]       # one facing each way
    # Half-edge h starts at corner h and ends at corner 3 (h // 3) + (h % 3 + 1) % 3.
    ends = lambda h: (h // 3) * 3 + (h % 3 + 1) % 3  # noqa: E731
    a, b = pairs[:, 0], pairs[:, 1]
    joined = coo_matrix((np.ones(2 * len(a)), (np.r_[a, ends(a)], np.r_[ends(b), b])), shape=(len(start),) * 2)
    copies, label = connected_components(joined, directed=False)
    new_vertices = np.zeros((copies, 3), vertices.dtype)
    new_vertices[label] = vertices[start]
    return new_vertices, label.reshape(-1, 3).astype(np.int64)


def clean_solid(grid: np.ndarray, threshold: float, min_fraction: float) -> np.ndarray:
    """The density grid with the solid it encloses made whole.

    Cavities no camera can see (density dips inside the object) are filled, and pieces
    holding less than `min_fraction` of the largest piece's volume (floaters) are removed,
    so marching cubes returns one clean outer surface.
    """
    solid = grid > threshold
    # A closing by two voxels seals pinholes through the shell before the cavities are
    # filled (a triplane's axis-aligned streaks can open thin tunnels to the inside).
    solid = ndimage.binary_fill_holes(solid | ndimage.binary_closing(solid, iterations=2))
    labels, count = ndimage.label(solid)
    if count == 0:
        return grid
    sizes = ndimage.sum_labels(solid, labels, index=np.arange(1, count + 1))
    keep = np.zeros(count + 1, dtype=bool)
    keep[1:] = sizes >= min_fraction * sizes.max()
    solid = keep[labels]
    # Only the filled cavities are raised; the kept surface stays where the field put it.
    filled = np.where(solid & (grid <= threshold), 2.0 * threshold, grid)
    # Outside the kept solid, density is clamped just below the level: floaters vanish
    # while the surface of the kept pieces keeps its interpolated position.
    near_kept = ndimage.binary_dilation(solid, iterations=2)
    return np.where(near_kept, filled, np.minimum(filled, 0.5 * threshold)).astype(np.float32)
