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
