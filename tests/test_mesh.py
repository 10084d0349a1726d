"""Marching cubes on analytic densities, the automatic threshold, export frames and the IoU
measure the end-to-end tests rely on."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh
from dreamsculpt.config import FieldConfig, MeshConfig
from dreamsculpt.errors import DreamsculptError
from dreamsculpt.fields import TriplaneField
from dreamsculpt.mesh import Surface, decimate, extract_surface, unpinch
from dreamsculpt.metrics import voxel_iou
from dreamsculpt.shapes.geometry import shape_occupancy

RADIUS, PEAK, WIDTH = 0.6, 50.0, 0.04


class AnalyticField(TriplaneField):
    """An ellipsoid with half-axes `radii` around `centre` (a ball of RADIUS by default):
    density PEAK inside, 0 outside, and a linear ramp WIDTH wide across the surface with
    density PEAK / 2 exactly on it. Linear, so marching cubes interpolates it exactly; narrow
    and without a tail, so the renders' silhouette is the surface too (a soft sigmoid edge
    renders opaque well outside its PEAK / 2 level). Albedo varies with position so vertex
    colours can be checked where they lie: albedo = ((x + 1) / 2, (y + 1) / 2, 0.25)."""

    def __init__(self, centre=(0.0, 0.0, 0.0), radii=(RADIUS, RADIUS, RADIUS), peak=PEAK):
        super().__init__(FieldConfig(grid_resolution=8, feature_dim=2, hidden_dim=4))
        self.centre, self.radii, self.peak = torch.tensor(centre), torch.tensor(radii), peak

    def forward(self, points):
        r = ((points - self.centre) / self.radii).norm(dim=-1)
        density = self.peak * ((1.0 - r) * RADIUS / WIDTH + 0.5).clamp(0, 1)
        albedo = torch.stack([(points[:, 0] + 1) / 2, (points[:, 1] + 1) / 2, torch.full_like(r, 0.25)], -1)
        return density, albedo.clamp(0, 1)


def test_explicit_threshold_gives_the_sphere():
    mesh, threshold = extract_surface(AnalyticField(), MeshConfig(resolution=64, threshold=PEAK / 2))
    assert threshold == PEAK / 2
    distance = np.linalg.norm(mesh.vertices, axis=1)
    # The level set density = PEAK / 2 is |x| = RADIUS exactly.
    assert distance.mean() == pytest.approx(RADIUS, rel=0.02)
    assert distance.std() < 0.02 * RADIUS
    tm = mesh.to_trimesh()
    assert tm.is_watertight


def test_surface_is_not_biased_outwards():
    mesh, _ = extract_surface(AnalyticField(), MeshConfig(resolution=64, threshold=PEAK / 2))
    # Marching cubes on the raw grid gives a mean radius of 0.6000 and a volume of 0.9034 (the
    # ball's 4/3 pi 0.6^3 = 0.9048, less the chords' shortfall): allow a tenth of that bias.
    assert np.linalg.norm(mesh.vertices, axis=1).mean() == pytest.approx(RADIUS, abs=0.001)
    assert mesh.to_trimesh().volume == pytest.approx(4 / 3 * np.pi * RADIUS ** 3, rel=0.005)


def test_seen_albedo_is_the_albedo_at_a_sharp_surface():
    # A sharp shell (the ramp is 0.04 wide): what a viewer sees at a surface point is the
    # albedo there, whichever way the field's albedo varies along the surface.
    surface, _ = extract_surface(AnalyticField(), MeshConfig(resolution=64, threshold=PEAK / 2))
    v = torch.from_numpy(surface.vertices)
    seen = AnalyticField().seen_albedo(v, torch.from_numpy(surface.vertex_normals())).numpy()
    expected = np.stack([(v[:, 0] + 1) / 2, (v[:, 1] + 1) / 2, torch.full((len(v),), 0.25)], 1)
    assert seen.shape == v.shape and np.abs(seen - expected).max() < 0.02


def test_automatic_threshold_finds_the_surface_the_renders_show():
    mesh, threshold = extract_surface(AnalyticField(), MeshConfig(resolution=64, threshold=None))
    assert 0 < threshold < PEAK
    assert np.linalg.norm(mesh.vertices, axis=1).mean() == pytest.approx(RADIUS, rel=0.05)


def test_automatic_threshold_does_not_depend_on_the_density_scale():
    # Ten times denser, the same silhouette: the surface found stays at the radius.
    mesh, _ = extract_surface(AnalyticField(peak=10 * PEAK), MeshConfig(resolution=64))
    assert np.linalg.norm(mesh.vertices, axis=1).mean() == pytest.approx(RADIUS, rel=0.05)


def test_floaters_are_removed():
    class WithFloater(AnalyticField):
        def forward(self, points):
            density, albedo = super().forward(points)
            speck = (points - torch.tensor([0.85, 0.85, 0.85])).norm(dim=-1) < 0.06
            return torch.where(speck, torch.full_like(density, PEAK), density), albedo

    mesh, _ = extract_surface(WithFloater(), MeshConfig(resolution=64, threshold=PEAK / 2))
    # One piece, all of it on the sphere (the speck is 0.85 sqrt(3) = 1.47 from the origin).
    assert len(mesh.to_trimesh().split(only_watertight=False)) == 1
    assert np.linalg.norm(mesh.vertices, axis=1).max() < RADIUS * 1.05


def test_empty_field_says_what_to_try():
    empty = AnalyticField(peak=0.0)
    with pytest.raises(DreamsculptError, match="Try") as error:
        extract_surface(empty, MeshConfig(resolution=32, threshold=None))
    assert "--steps" in str(error.value) and "--seed" in str(error.value)
    with pytest.raises(DreamsculptError, match="Try a lower --threshold"):
        extract_surface(empty, MeshConfig(resolution=32, threshold=1.0))


def test_max_faces_decimates():
    mesh = decimate(extract_surface(AnalyticField(), MeshConfig(resolution=64, threshold=PEAK / 2))[0], 2000)
    assert len(mesh.faces) <= 2000
    assert np.linalg.norm(mesh.vertices, axis=1).mean() == pytest.approx(RADIUS, rel=0.03)


def test_decimation_keeps_a_closed_surface_closed_and_clean():
    dense, _ = extract_surface(AnalyticField(), MeshConfig(resolution=96, threshold=PEAK / 2))
    assert dense.is_watertight() and len(dense.faces) > 20_000
    for budget in (5000, 500, 60):
        light = decimate(dense, budget)
        assert len(light.faces) <= budget
        assert light.is_watertight(), budget
        assert light.to_trimesh().area_faces.min() > 0          # no degenerate faces
        assert light.to_trimesh().volume > 0                     # outward, closed


def test_a_surface_under_budget_is_only_cleaned():
    box = trimesh.creation.box(extents=(1, 1, 1))
    vertices = np.concatenate([box.vertices, [[5.0, 5.0, 5.0]]]).astype(np.float32)   # one unused
    fin = [[0, 1, 2], [2, 1, 0]]             # two faces on the same vertices: a sheet of no volume
    degenerate = [[3, 3, 4]]
    light = decimate(Surface(vertices, np.concatenate([box.faces, fin, degenerate])), 1000)
    assert len(light.faces) == 12 and len(light.vertices) == 8 and light.is_watertight()


def test_voxel_iou_of_a_unit_box_against_the_cube():
    # The built-in cube has half-size 0.5: a box with extents 1 is the same solid.
    box = trimesh.creation.box(extents=(1, 1, 1))
    assert voxel_iou(box, lambda p: shape_occupancy("cube", p)) > 0.95
    # Shifted by 0.25 along X: overlap 0.75 / union 1.25 = 0.6.
    shifted = trimesh.creation.box(extents=(1, 1, 1))
    shifted.apply_translation((0.25, 0, 0))
    assert voxel_iou(shifted, lambda p: shape_occupancy("cube", p)) == pytest.approx(0.6, abs=0.04)


def test_voxel_iou_of_an_icosphere_against_the_sphere():
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.6)
    assert voxel_iou(sphere, lambda p: shape_occupancy("sphere", p)) > 0.93
    assert voxel_iou(sphere, lambda p: shape_occupancy("torus", p)) < 0.3


def test_two_solids_pinched_along_an_edge_are_separated():
    # Unit cubes meeting along the edge x = y = 1: merged, that edge has four faces.
    a = trimesh.creation.box(bounds=[[0, 0, 0], [1, 1, 1]])
    b = trimesh.creation.box(bounds=[[1, 1, 0], [2, 2, 1]])
    pinched = trimesh.util.concatenate([a, b])
    pinched.merge_vertices()
    surface = Surface(np.asarray(pinched.vertices, np.float32), np.asarray(pinched.faces))
    assert len(surface.vertices) == 14 and not surface.is_watertight()
    separated = unpinch(surface)
    assert separated.is_watertight() and len(separated.vertices) == 16
    assert np.array_equal(separated.vertices[separated.faces], surface.vertices[surface.faces])  # nothing moved
    assert separated.to_trimesh().volume == pytest.approx(2.0)
    assert len(separated.to_trimesh().split(only_watertight=True)) == 2
