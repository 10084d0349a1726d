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
from pathlib import Path

import mcubes
import numpy as np
import torch
import trimesh
from scipy import ndimage

from .cameras import Cameras, generate_rays, ray_box_intersect
from .config import MeshConfig
from .errors import DreamsculptError
from .fields import OccupancyGrid, TriplaneField
from .rendering import render


@dataclass
class Mesh:
    """vertices: [V, 3] float32 world (Z up, inside [-1, 1]^3); faces: [F, 3] int64;
    colours: [V, 3] float32 albedo in [0, 1]."""

    vertices: np.ndarray
    faces: np.ndarray
    colours: np.ndarray

    def to_trimesh(self) -> trimesh.Trimesh:
        rgba = np.concatenate([self.colours, np.ones_like(self.colours[:, :1])], 1)
        return trimesh.Trimesh(self.vertices, self.faces, vertex_colors=(rgba * 255).round().astype(np.uint8),
                               process=False)


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
def extract_mesh(field: TriplaneField, config: MeshConfig, occupancy: OccupancyGrid | None = None) -> tuple[Mesh, float]:
    """Marching cubes of the density at `config.resolution`^3. Returns (mesh, threshold used)."""
    threshold = config.threshold if config.threshold is not None else auto_threshold(field, occupancy)
    bound, res = field.config.bound, config.resolution
    grid = clean_solid(field.density_grid(res).cpu().numpy(), threshold, config.min_component_fraction)
    # A zero border closes surfaces that touch the box, so the mesh is watertight.
    verts, faces = mcubes.marching_cubes(np.pad(grid, 1, constant_values=0.0), threshold)
    if len(faces) == 0:
        raise DreamsculptError(f"No surface at density threshold {threshold:.3g} (densest point {grid.max():.3g}). "
                               "Try a lower --threshold, more --steps or another --seed.")
    verts = (verts - 1.0) / (res - 1) * 2.0 * bound - bound
    mesh = trimesh.Trimesh(verts, faces.astype(np.int64), process=True)
    if config.max_faces and len(mesh.faces) > config.max_faces:
        mesh = mesh.simplify_quadric_decimation(face_count=config.max_faces)
    if len(mesh.faces) < 4:
        raise DreamsculptError("The extracted mesh is degenerate (fewer than 4 faces). "
                               "Try a lower --threshold, more --steps or another --seed.")
    vertices = np.asarray(mesh.vertices, dtype=np.float32)
    colours = field.albedo_at(torch.from_numpy(vertices).to(field.planes.device)).cpu().numpy().astype(np.float32)
    return Mesh(vertices, np.asarray(mesh.faces, dtype=np.int64), colours), threshold


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


# glTF is +Y up; the engine (and Blender) is +Z up: (x, y, z) -> (x, z, -y).
_Z_UP_TO_Y_UP = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]], dtype=np.float64)


def export_mesh(mesh: Mesh, out_dir: Path, obj: bool = False) -> list[Path]:
    """Write mesh.ply (vertex colours) and mesh.glb, and mesh.obj when asked.

    mesh.ply and mesh.obj are in the engine frame (Z up); mesh.glb follows glTF's Y-up rule,
    so importers (Blender's included) bring it back Z up.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    tm = mesh.to_trimesh()
    written = [out_dir / "mesh.ply", out_dir / "mesh.glb"]
    tm.export(written[0])
    gltf = tm.copy()
    gltf.apply_transform(_Z_UP_TO_Y_UP)
    gltf.export(written[1])
    if obj:
        written.append(out_dir / "mesh.obj")
        tm.export(written[-1], include_color=True)
    return written
