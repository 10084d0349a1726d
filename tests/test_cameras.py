"""Camera maths in Blender's frame (Z up): orbit positions, projection, rays, box clipping and
the view-prompt weights. Numbers are derived by hand in the comments."""

from __future__ import annotations

import math

import pytest
import torch
from dreamsculpt.cameras import Cameras, Rays, generate_rays, project, ray_box_intersect
from dreamsculpt.guidance.base import VIEW_NAMES, view_weights

ORBITS = [  # (azimuth, elevation, distance, fov), degrees
    (0.0, 0.0, 3.0, 40.0), (90.0, 10.0, 2.6, 38.0), (-90.0, -30.0, 3.2, 45.0),
    (137.0, 60.0, 3.0, 20.0), (-180.0, 89.0, 2.8, 60.0), (45.0, -89.0, 3.0, 40.0),
    (10.0, 90.0, 3.0, 40.0), (200.0, -90.0, 3.0, 40.0),
]


@pytest.mark.parametrize("azimuth, elevation, distance, fov", ORBITS)
def test_orbit_camera_projects_the_origin_to_the_image_centre(azimuth, elevation, distance, fov):
    cam = Cameras.from_orbit(azimuth, elevation, distance, fov)
    pixels, depth = project(torch.zeros(1, 3), cam, 64)
    # The camera looks at the origin: pixel (32, 32) of a 64-pixel image, at depth `distance`.
    assert pixels[0, 0].tolist() == pytest.approx([32.0, 32.0], abs=1e-3)
    assert depth[0, 0].item() == pytest.approx(distance, rel=1e-5)
    rotation = cam.c2w[0, :3, :3]
    assert torch.allclose(rotation @ rotation.t(), torch.eye(3), atol=1e-5)  # orthonormal
    assert torch.linalg.det(rotation).item() == pytest.approx(1.0, abs=1e-5)  # right-handed


@pytest.mark.parametrize("azimuth, elevation, distance, fov", ORBITS)
def test_centre_ray_passes_through_the_origin(azimuth, elevation, distance, fov):
    cam = Cameras.from_orbit(azimuth, elevation, distance, fov)
    rays = generate_rays(cam, 33)  # odd size: pixel (16, 16) has its centre on the optical axis
    origin, direction = rays.origins[0, 16, 16], rays.directions[0, 16, 16]
    # Distance from the origin to the line o + t d is |o x d| for unit d.
    assert torch.linalg.cross(origin, direction).norm().item() == pytest.approx(0.0, abs=1e-5)
    assert torch.dot(-origin, direction).item() == pytest.approx(distance, rel=1e-5)  # and ahead
    assert rays.directions.norm(dim=-1).sub(1).abs().max() < 1e-5


def test_azimuth_and_elevation_place_the_camera_in_blenders_frame():
    cams = Cameras.from_orbit(torch.tensor([0.0, 90.0, -90.0, 30.0]), torch.tensor([0.0, 0.0, 0.0, 90.0]), 3.0, 40.0)
    # Azimuth 0 -> +X, azimuth 90 -> +Y, azimuth -90 -> -Y (Blender's Front view), elevation 90 -> +Z.
    expected = torch.tensor([[3.0, 0, 0], [0, 3.0, 0], [0, -3.0, 0], [0, 0, 3.0]])
    assert torch.allclose(cams.position, expected, atol=1e-5)
    # Elevation 30 at azimuth 45, distance 2: (2 cos30 cos45, 2 cos30 sin45, 2 sin30) = (1.2247, 1.2247, 1).
    cam = Cameras.from_orbit(45.0, 30.0, 2.0, 40.0)
    assert cam.position[0].tolist() == pytest.approx([1.2247449, 1.2247449, 1.0], abs=1e-5)


def test_world_up_is_image_up_and_front_view_has_x_to_the_right():
    front = Cameras.from_orbit(-90.0, 0.0, 3.0, 40.0)  # on -Y looking along +Y, as Blender's Front
    pixels, _ = project(torch.tensor([[0.0, 0.0, 0.5], [0.5, 0.0, 0.0]]), front, 64)
    above, right = pixels[0, 0], pixels[0, 1]
    assert above[1] < 32.0 and above[0] == pytest.approx(32.0, abs=1e-3)   # +Z: higher (smaller row)
    assert right[0] > 32.0 and right[1] == pytest.approx(32.0, abs=1e-3)   # +X: to the right
    # Focal length of a 40 degree, 64-pixel image: 32 / tan(20 deg) = 87.92 px; a point 0.5 off
    # the axis at depth 3 lands 87.92 * 0.5 / 3 = 14.65 px from the centre.
    assert (32.0 - above[1]).item() == pytest.approx(14.654, abs=1e-2)


def test_pixel_zero_is_the_top_left_corner():
    cam = Cameras.from_orbit(-90.0, 0.0, 3.0, 40.0)
    d = generate_rays(cam, 8).directions[0]
    # Front view: image-right is +X and image-up is +Z, so the top-left ray goes -X and +Z.
    assert d[0, 0, 0] < 0 and d[0, 0, 2] > 0
    assert d[7, 7, 0] > 0 and d[7, 7, 2] < 0


def rays(origin, direction) -> Rays:
    d = torch.nn.functional.normalize(torch.tensor([direction], dtype=torch.float32), dim=-1)
    return Rays(torch.tensor([origin], dtype=torch.float32), d)


def test_ray_box_intersect_known_values():
    # From (3, 0, 0) along -X: enters the unit box at x = 1 (t = 2), leaves at x = -1 (t = 4).
    near, far = ray_box_intersect(rays([3, 0, 0], [-1, 0, 0]))
    assert (near.item(), far.item()) == pytest.approx((2.0, 4.0))
    # Offset in Y but still inside the slab |y| <= 1: the same.
    near, far = ray_box_intersect(rays([3, 0.5, -0.9], [-1, 0, 0]))
    assert (near.item(), far.item()) == pytest.approx((2.0, 4.0))
    # Along the diagonal from (-3, -3, -3): enters at (-1, -1, -1), t = 2 sqrt(3) = 3.4641,
    # leaves at (1, 1, 1), t = 4 sqrt(3) = 6.9282.
    near, far = ray_box_intersect(rays([-3, -3, -3], [1, 1, 1]))
    assert (near.item(), far.item()) == pytest.approx((3.4641016, 6.9282032), abs=1e-5)
    # From inside (the origin) along (1, 1, 0): near clamps to 0, leaves at x = y = 1, t = sqrt(2).
    near, far = ray_box_intersect(rays([0, 0, 0], [1, 1, 0]))
    assert (near.item(), far.item()) == pytest.approx((0.0, math.sqrt(2)), abs=1e-5)
    # A box of half-size 2 from (3, 0, 0): t = 1 and t = 5.
    near, far = ray_box_intersect(rays([3, 0, 0], [-1, 0, 0]), bound=2.0)
    assert (near.item(), far.item()) == pytest.approx((1.0, 5.0))


def test_ray_box_intersect_misses():
    # Passing beside the box (|y| = 2 > 1), and pointing away from it: far <= near.
    for origin, direction in (([3, 2, 0], [-1, 0, 0]), ([3, 0, 0], [1, 0, 0]), ([0, 0, 3], [1, 1, 0])):
        near, far = ray_box_intersect(rays(origin, direction))
        assert far.item() <= near.item(), (origin, direction)


def weights(azimuth, elevation):
    return view_weights(torch.tensor([float(azimuth)]), torch.tensor([float(elevation)]))[0].tolist()


def test_view_weights_name_blenders_views():
    assert VIEW_NAMES == ("front", "side", "back", "overhead")
    assert weights(-90, 0) == pytest.approx([1, 0, 0, 0])   # camera on -Y: Blender's Front
    assert weights(270, 0) == pytest.approx([1, 0, 0, 0])   # the same camera, azimuth wrapped
    assert weights(90, 0) == pytest.approx([0, 0, 1, 0])    # on +Y: back
    assert weights(0, 0) == pytest.approx([0, 1, 0, 0])     # on +X: side
    assert weights(180, 0) == pytest.approx([0, 1, 0, 0])   # on -X: the other side
    assert weights(-45, 0) == pytest.approx([0.5, 0.5, 0, 0])  # halfway front -> side
    assert weights(33, 90) == pytest.approx([0, 0, 0, 1])  # straight above: overhead
    # Overhead fades in over 45..60 degrees: at 52.5 it is half; the ring share is halved too.
    assert weights(-90, 52.5) == pytest.approx([0.5, 0, 0, 0.5])
    assert weights(-90, 45) == pytest.approx([1, 0, 0, 0])
    assert weights(0, -60) == pytest.approx([0, 1, 0, 0])  # below is never "overhead"


def test_view_weights_rows_sum_to_one():
    g = torch.Generator().manual_seed(0)
    az = torch.rand(500, generator=g) * 720 - 360
    el = torch.rand(500, generator=g) * 180 - 90
    w = view_weights(az, el)
    assert w.shape == (500, 4) and (w >= 0).all()
    assert torch.allclose(w.sum(-1), torch.ones(500), atol=1e-6)
