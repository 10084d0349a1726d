"""Volume rendering against hand-derived numbers, and the field / occupancy grid on analytic
densities (fields whose answer is known in closed form)."""

from __future__ import annotations

import math

import pytest
import torch
from dreamsculpt.cameras import Cameras, generate_rays, ray_box_intersect
from dreamsculpt.config import FieldConfig
from dreamsculpt.fields import OccupancyGrid, TriplaneField
from dreamsculpt.rendering import Background, composite, render, shade

LN2 = math.log(2.0)


class AnalyticField(TriplaneField):
    """A TriplaneField whose density and albedo are given functions of position (the triplane
    and MLP are left unused), so renders and normals have known answers."""

    def __init__(self, density_fn, albedo=(0.2, 0.4, 0.6), bound: float = 1.0):
        super().__init__(FieldConfig(grid_resolution=8, feature_dim=2, hidden_dim=4, bound=bound))
        self.density_fn = density_fn
        self.albedo = torch.tensor(albedo)

    def forward(self, points):
        return self.density_fn(points), self.albedo.expand(points.shape[0], 3)


def ball(radius: float, density: float):
    """Constant density inside a ball at the origin, zero outside."""
    return lambda p: torch.where(p.norm(dim=-1) < radius, density, 0.0)


# --- composite --------------------------------------------------------------------------------

def test_composite_two_half_opaque_samples():
    # density * delta = ln 2 -> alpha = 1 - exp(-ln 2) = 0.5 for both samples.
    # w0 = 0.5; T1 = 1 - 0.5 = 0.5, so w1 = 0.5 * 0.5 = 0.25; opacity = 0.75.
    density = torch.tensor([[LN2 / 0.1, LN2 / 0.2]])
    deltas = torch.tensor([[0.1, 0.2]])
    values = torch.tensor([[[1.0, 10.0], [3.0, 20.0]]])
    weights, out = composite(density, deltas, values)
    assert weights.tolist()[0] == pytest.approx([0.5, 0.25], abs=1e-6)
    # Composited: 0.5 * (1, 10) + 0.25 * (3, 20) = (1.25, 10).
    assert out.tolist()[0] == pytest.approx([1.25, 10.0], abs=1e-5)


def test_composite_empty_and_opaque_samples():
    # An empty first sample passes everything (T stays 1); a very dense second one takes all.
    density = torch.tensor([[0.0, 1e4, 5.0]])
    deltas = torch.full((1, 3), 0.1)
    weights, _ = composite(density, deltas, torch.zeros(1, 3, 1))
    # w2 = (1 - e^-0.5) * T2 with T2 = e^-1000 ~ 0.
    assert weights.tolist()[0] == pytest.approx([0.0, 1.0, 0.0], abs=1e-6)


def test_composite_constant_density_opacity_is_beer_lambert():
    # N equal steps of sigma over a length L: opacity = 1 - prod(1 - alpha) = 1 - exp(-sigma L).
    # sigma = 1.5, L = 0.8: 1 - exp(-1.2) = 0.698806.
    sigma, length, n = 1.5, 0.8, 64
    density = torch.full((1, n), sigma)
    deltas = torch.full((1, n), length / n)
    weights, _ = composite(density, deltas, torch.zeros(1, n, 1))
    assert weights.sum().item() == pytest.approx(1.0 - math.exp(-sigma * length), abs=1e-5)
    assert weights.sum().item() == pytest.approx(0.698806, abs=1e-5)
    # Weights decay geometrically: w_{i+1} / w_i = 1 - alpha = exp(-sigma L / N).
    ratio = weights[0, 1:] / weights[0, :-1]
    assert torch.allclose(ratio, torch.full_like(ratio, math.exp(-sigma * length / n)), atol=1e-5)


def test_shade_modes():
    albedo = torch.tensor([[0.5, 1.0, 0.2]])
    normal, light = torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([0.0, 0.6, 0.8])
    # n . l = 0.8; ambient 0.3: light = 0.3 + 0.7 * 0.8 = 0.86.
    assert shade(albedo, None, None, "albedo", 0.3).tolist()[0] == pytest.approx([0.5, 1.0, 0.2])
    assert shade(albedo, normal, light, "lambertian", 0.3).tolist()[0] == pytest.approx([0.43, 0.86, 0.172])
    assert shade(albedo, normal, light, "textureless", 0.3).tolist()[0] == pytest.approx([0.86] * 3)
    # Facing away from the light: ambient only.
    assert shade(albedo, -normal, light, "lambertian", 0.3).tolist()[0] == pytest.approx([0.15, 0.3, 0.06])


# --- render on an analytic ball -----------------------------------------------------------------

@pytest.mark.parametrize("azimuth, elevation", [(30.0, 20.0), (-90.0, 0.0), (200.0, -45.0)])
def test_render_of_a_ball(azimuth, elevation):
    radius, distance, size, n = 0.5, 3.0, 33, 64
    field = AnalyticField(ball(radius, 1000.0))
    cam = Cameras.from_orbit(azimuth, elevation, distance, 40.0)
    out = render(field, cam, size, n)
    assert out.rgb.shape == (1, 3, size, size) and out.opacity.shape == (1, 1, size, size)
    c = size // 2  # the centre pixel's ray goes through the origin (odd size)
    assert out.opacity[0, 0, c, c].item() == pytest.approx(1.0, abs=1e-4)
    assert out.rgb[0, :, c, c].tolist() == pytest.approx([0.2, 0.4, 0.6], abs=1e-4)
    # Depth: the surface is at distance - radius = 2.5. Samples sit at near + (i + 0.5) * span
    # along the ray's chord of the box, and one sample of density 1000 is opaque
    # (alpha = 1 - exp(-1000 * span) ~ 1), so the depth is the first sample inside the
    # ball: at most one span past the surface.
    span = chord_span(cam, n)
    depth = out.depth[0, 0, c, c].item()
    assert distance - radius <= depth <= distance - radius + span + 1e-4
    # A corner ray passes the origin at 3 sin(atan(sqrt(2) tan 20 deg)) = 1.37 > 0.5: background.
    assert out.opacity[0, 0, 0, 0].item() == pytest.approx(0.0, abs=1e-6)
    assert out.rgb[0, :, 0, 0].tolist() == pytest.approx([1.0, 1.0, 1.0], abs=1e-6)  # white
    # The ball covers a disc: its area is pi (f r')^2 pixels, with f = 16.5 / tan(20 deg)
    # = 45.33 px and angular radius asin(0.5 / 3) -> r' = tan(asin(1/6)) = 0.16903: 184 px.
    covered = (out.opacity > 0.5).sum().item()
    assert covered == pytest.approx(math.pi * (45.333 * 0.16903) ** 2, rel=0.08)


def chord_span(cam: Cameras, n: int) -> float:
    """Sample spacing on the centre ray of a 33-pixel image: the box chord / the sample count."""
    near, far = ray_box_intersect(generate_rays(cam, 33))
    return ((far - near)[0, 16, 16] / n).item()


def test_render_half_transparent_slab_matches_beer_lambert():
    # A ball of density 1 and radius 0.5: the centre ray crosses 1.0 of it, so its opacity
    # is 1 - exp(-1) = 0.632 (up to where the sample grid cuts the ball's edges).
    field = AnalyticField(ball(0.5, 1.0))
    out = render(field, Cameras.from_orbit(0.0, 0.0, 3.0, 40.0), 33, 256)
    assert out.opacity[0, 0, 16, 16].item() == pytest.approx(1.0 - math.exp(-1.0), abs=0.01)
    # Over white: rgb = albedo * opacity + (1 - opacity).
    o = out.opacity[0, 0, 16, 16].item()
    assert out.rgb[0, :, 16, 16].tolist() == pytest.approx([0.2 * o + 1 - o, 0.4 * o + 1 - o, 0.6 * o + 1 - o], abs=1e-5)


def test_background_modes():
    dirs = torch.nn.functional.normalize(torch.randn(2, 4, 4, 3), dim=-1)
    assert torch.equal(Background("white")(dirs), torch.ones(2, 4, 4, 3))
    random = Background("random")(dirs, torch.Generator().manual_seed(0))
    assert torch.equal(random[0], random[0, :1, :1].expand(4, 4, 3))  # one colour per image
    learned = Background("learned")(dirs)
    assert learned.shape == (2, 4, 4, 3) and ((learned > 0) & (learned < 1)).all()
    with pytest.raises(ValueError):
        Background("purple")


def test_render_is_differentiable_and_counts_samples():
    field = TriplaneField(FieldConfig(grid_resolution=16))
    out = render(field, Cameras.from_orbit(10.0, 10.0, 3.0, 40.0), 8, 16)
    out.rgb.mean().backward()
    assert field.planes.grad is not None and field.planes.grad.abs().sum() > 0
    assert out.samples == 8 * 8 * 16  # no occupancy grid: every sample inside the box counts


# --- normals and the occupancy grid -------------------------------------------------------------

def test_normals_of_a_radial_density_point_outward():
    # Density falling off with radius: -grad(density) is along +x / |x|.
    field = AnalyticField(lambda p: 10.0 * torch.exp(-p.square().sum(-1) / 0.18))
    g = torch.Generator().manual_seed(0)
    points = torch.nn.functional.normalize(torch.randn(100, 3, generator=g), dim=-1) * 0.4
    normals = field.normals(points)
    assert normals.norm(dim=-1).sub(1).abs().max() < 1e-4
    cosine = (normals * points / 0.4).sum(-1)
    assert cosine.min() > 0.999


def test_normals_of_a_slab_are_its_face_normal():
    # Dense below z = 0.1, smooth step: the outward normal is +Z everywhere near the face.
    field = AnalyticField(lambda p: 20.0 * torch.sigmoid((0.1 - p[:, 2]) / 0.05))
    points = torch.tensor([[0.3, -0.2, 0.1], [-0.5, 0.5, 0.12], [0.0, 0.0, 0.05]])
    assert torch.allclose(field.normals(points), torch.tensor([[0.0, 0.0, 1.0]] * 3), atol=1e-4)


def test_occupancy_grid_query_outside_the_box_is_false():
    grid = OccupancyGrid(16, 1.0, 0.01, 0.05)
    assert grid.occupied.all()  # before any update everything may hold matter
    inside = torch.tensor([[0.0, 0.0, 0.0], [0.99, -0.99, 0.5], [-1.0, -1.0, -1.0]])
    outside = torch.tensor([[1.01, 0.0, 0.0], [0.0, -1.2, 0.0], [0.0, 0.0, 3.0], [-5.0, 5.0, 0.0]])
    assert grid.query(inside).all()
    assert not grid.query(outside).any()
    # The bound scales the box: at bound 2, (1.5, 0, 0) is inside, (2.5, 0, 0) is not.
    wide = OccupancyGrid(16, 2.0, 0.01, 0.05)
    assert wide.query(torch.tensor([[1.5, 0.0, 0.0], [2.5, 0.0, 0.0]])).tolist() == [True, False]


def test_occupancy_grid_update_marks_the_ball_and_clears_empty_space():
    # Step 0.05, alpha threshold 0.01: a cell is occupied when density > -ln(0.99) / 0.05 = 0.201.
    grid = OccupancyGrid(16, 1.0, 0.01, 0.05)
    assert grid.density_threshold == pytest.approx(-math.log(0.99) / 0.05, rel=1e-5)
    grid.update(AnalyticField(ball(0.4, 50.0)), torch.Generator().manual_seed(0))
    # Cells are 0.125 wide; the ball (r 0.4) plus one dilated cell stays within |x| < 0.8.
    assert grid.query(torch.tensor([[0.0, 0.0, 0.0], [0.3, 0.0, 0.0], [0.0, -0.2, 0.2]])).all()
    assert not grid.query(torch.tensor([[0.9, 0.9, 0.9], [-0.9, 0.0, 0.0], [0.0, 0.0, 0.95]])).any()
    # 4/3 pi 0.4^3 = 0.268 of the box's volume 8 is 3.4%; dilation makes it a few times that.
    assert 0.02 < grid.fraction < 0.2


def test_render_with_occupancy_grid_skips_empty_space_without_changing_the_image():
    field = AnalyticField(ball(0.4, 50.0))
    grid = OccupancyGrid(16, 1.0, 0.01, 2 * math.sqrt(3) / 64)
    grid.update(field, torch.Generator().manual_seed(0))
    cam = Cameras.from_orbit(30.0, 20.0, 3.0, 40.0)
    full, skipped = render(field, cam, 16, 64), render(field, cam, 16, 64, occupancy=grid)
    assert skipped.samples < full.samples / 4
    assert torch.allclose(full.rgb, skipped.rgb, atol=1e-5)
    assert torch.allclose(full.opacity, skipped.opacity, atol=1e-5)
