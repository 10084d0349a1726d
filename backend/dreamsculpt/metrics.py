"""Measures used by tests and benchmarks: voxel IoU of a mesh against a known solid."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import trimesh


def lattice(resolution: int, bound: float = 1.0) -> np.ndarray:
    """[R^3, 3] voxel centres of a resolution^3 grid over [-bound, bound]^3."""
    axis = (np.arange(resolution) + 0.5) / resolution * 2 * bound - bound
    return np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)


def mesh_occupancy(mesh: trimesh.Trimesh, points: np.ndarray, pitch: float = 1.0 / 64) -> np.ndarray:
    """[P] bool: which points lie inside the (closed) mesh, via a filled voxelisation."""
    voxels = mesh.voxelized(pitch=pitch).fill()
    return np.asarray(voxels.is_filled(points), dtype=bool)


def voxel_iou(mesh: trimesh.Trimesh, inside: Callable[[torch.Tensor], torch.Tensor], resolution: int = 64) -> float:
    """IoU between the mesh's solid and the ground-truth `inside(points [P, 3]) -> bool [P]`."""
    points = lattice(resolution)
    truth = inside(torch.from_numpy(points).float()).numpy().astype(bool)
    pred = mesh_occupancy(mesh, points)
    union = np.logical_or(truth, pred).sum()
    return float(np.logical_and(truth, pred).sum() / max(union, 1))


def render_textured(vertices: np.ndarray, faces: np.ndarray, corner_uvs: np.ndarray, texture: np.ndarray,
                    cameras, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Albedo views [B, size, size, 3] over white of a UV-textured mesh (vertices [V, 3] in
    the cameras' world frame; corner_uvs [F, 3, 2]; texture [T, T, 3] in [0, 1]), sampled
    bilinearly at the nearest surface behind each pixel centre, and [B, size, size] bool:
    where the mesh is."""
    from .cameras import project
    from .raster import cover, sample_bilinear

    pixels, depth = project(torch.from_numpy(np.asarray(vertices, np.float32)), cameras, size)
    views = np.ones((len(cameras), size, size, 3), np.float32)
    covered = np.zeros((len(cameras), size, size), bool)
    for b in range(len(cameras)):
        xy, z = pixels[b].numpy()[faces], depth[b].numpy()[faces]
        found = cover(xy, size, depth=z)
        views[b, found.rows, found.cols] = sample_bilinear(texture, found.interpolate(corner_uvs))
        covered[b, found.rows, found.cols] = True
    return views, covered


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio, dB, of two images in [0, 1]."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


@torch.no_grad()
def texture_fidelity(field, asset, occupancy=None, size: int = 128) -> tuple[float, float]:
    """How faithfully a textured asset shows its field: PSNR (dB) of the asset's albedo
    renders against the field's (over white), from 8 cameras around it (4 above, 4 below),
    over the whole images and over the pixels where both show the surface (field opacity
    above 0.5 and the mesh there), against the field's colour there without the white a
    not-quite-opaque field lets through: the texture's error without the silhouettes' and the
    field's transparency."""
    from .cameras import Cameras
    from .rendering import Background, render

    cameras = Cameras.from_orbit(torch.arange(8) * 45.0 + 22.5, torch.tensor([25.0, -20.0] * 4),
                                 torch.full((8,), 3.0), torch.full((8,), 40.0)).to(field.planes.device)
    out = render(field, cameras, size, 192, occupancy, Background("white"), "albedo")
    truth = out.rgb.permute(0, 2, 3, 1).cpu().numpy()
    vertices = asset.surface.vertices / asset.transform.scale + np.asarray(asset.transform.anchor, np.float32)
    layout = asset.layout
    views, covered = render_textured(vertices, asset.surface.faces, layout.uvs[layout.faces], asset.texture,
                                     cameras.to("cpu"), size)
    opacity = out.opacity[:, 0].cpu().numpy()
    both = covered & (opacity > 0.5)
    # Where both show surface, the field's colour is its render without the white it lets through.
    surface = (truth[both] - (1.0 - opacity[both, None])) / opacity[both, None]
    return psnr(views, truth), psnr(views[both], np.clip(surface, 0.0, 1.0))
