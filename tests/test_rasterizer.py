"""The differentiable rasterizer: which triangle each pixel sees, at what depth and with what
barycentrics, against values worked out by hand; its gradients against finite differences,
inside triangles and at a silhouette edge; antialiased coverage against true areas; the same
answers on CUDA when there is one."""

from __future__ import annotations

import math

import pytest
import torch
import trimesh
from dreamsculpt.cameras import Cameras, Pinhole
from dreamsculpt.rasterizer import Screen, Topology, antialias, rasterize, to_screen

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def flat_screen(points, depth=2.0, size=16, dtype=torch.float64, device="cpu") -> Screen:
    xy = torch.as_tensor(points, dtype=dtype, device=device)[None]
    z = torch.as_tensor(depth, dtype=dtype, device=device).expand(xy.shape[1]).clone()[None]
    return Screen(xy, z, size)


def test_a_triangle_covers_the_pixel_centres_inside_it_with_their_barycentrics():
    # Corners at pixel (col, row) positions; counter-clockwise on screen with y up.
    screen = flat_screen([[1.0, 1.0], [1.0, 9.0], [9.0, 1.0]], size=12)
    raster = rasterize(screen, torch.tensor([[0, 1, 2]]))
    covered = {(int(p) // 12, int(p) % 12) for p in raster.pixels}       # (row, col)
    # Centres (c + 0.5, r + 0.5) with c, r >= 1 and (c + 0.5) + (r + 0.5) <= 10.
    expected = {(r, c) for r in range(12) for c in range(12) if c >= 1 and r >= 1 and c + r + 1 <= 10}
    assert covered == expected
    # Pixel (row 2, col 3): centre (3.5, 2.5) -> weights of corners 1 and 2 are (y - 1) / 8, (x - 1) / 8.
    k = (raster.pixels == 2 * 12 + 3).nonzero()[0, 0]
    assert torch.allclose(raster.bary[k], torch.tensor([1 - 1.5 / 8 - 2.5 / 8, 1.5 / 8, 2.5 / 8], dtype=torch.float64))
    assert torch.allclose(raster.depth, torch.full_like(raster.depth, 2.0))


def test_a_triangle_facing_away_is_culled_unless_asked():
    screen = flat_screen([[1.0, 1.0], [9.0, 1.0], [1.0, 9.0]], size=12)   # clockwise: its back
    assert len(rasterize(screen, torch.tensor([[0, 1, 2]])).pixels) == 0
    assert len(rasterize(screen, torch.tensor([[0, 1, 2]]), cull_back=False).pixels) == 36


def test_perspective_correct_barycentrics_and_depth_of_a_slanted_triangle():
    # Corner depths 1, 2 and 4: at a pixel the depth is the harmonic blend 1 / sum(b_i / z_i) of
    # the screen-space weights, and the barycentrics are b_i / z_i normalised.
    screen = flat_screen([[0.0, 0.0], [0.0, 16.0], [16.0, 0.0]], size=16)
    screen.depth = torch.tensor([[1.0, 2.0, 4.0]], dtype=torch.float64)
    raster = rasterize(screen, torch.tensor([[0, 1, 2]]))
    k = (raster.pixels == 5 * 16 + 2).nonzero()[0, 0]         # centre (2.5, 5.5)
    screen_weights = torch.tensor([1 - (2.5 + 5.5) / 16, 5.5 / 16, 2.5 / 16], dtype=torch.float64)
    inverse = screen_weights / torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    assert torch.allclose(raster.depth[k], 1 / inverse.sum())
    assert torch.allclose(raster.bary[k], inverse / inverse.sum())


def test_the_nearest_of_overlapping_triangles_wins():
    near, far = [[1.0, 1.0], [1.0, 9.0], [9.0, 1.0]], [[0.0, 0.0], [0.0, 12.0], [12.0, 0.0]]
    screen = flat_screen(near + far, size=12)
    screen.depth = torch.tensor([[3.0, 3.0, 3.0, 5.0, 5.0, 5.0]], dtype=torch.float64)
    raster = rasterize(screen, torch.tensor([[3, 4, 5], [0, 1, 2]]))
    face = raster.face[0]
    assert face[2, 3] == 1 and face[0, 0] == 0 and face[11, 11] == -1
    assert torch.allclose(raster.depth[raster.face.reshape(-1)[raster.pixels] == 1], torch.tensor(3.0, dtype=torch.float64))


def test_a_wide_pinhole_image_is_the_middle_of_the_square_one_with_the_same_focal_length():
    """A Blender-like 48 x 32 camera (any aspect) sees what the 48 x 48 camera with the same
    focal length and centre sees, less 8 rows at the top and bottom; its depths unproject back
    onto the cube's front face."""
    box = trimesh.creation.box((1.0, 1.0, 1.0))
    vertices, faces = torch.tensor(box.vertices, dtype=torch.float32), torch.tensor(box.faces)
    c2w = Cameras.from_orbit(-80.0, 15.0, 3.0, 40.0).c2w
    focal = torch.tensor([40.0])
    square = Pinhole(c2w, focal, torch.tensor([[24.0, 24.0]]), 48, 48)
    wide = Pinhole(c2w, focal, torch.tensor([[24.0, 16.0]]), 48, 32)
    face_square = rasterize(to_screen(vertices, square), faces).face
    raster = rasterize(to_screen(vertices, wide), faces)
    assert raster.face.shape == (1, 32, 48)
    assert torch.equal(raster.face, face_square[:, 8:40])
    depth = raster.image(raster.depth[:, None], float("nan"))[..., 0]
    points = wide.unproject(depth)[raster.face >= 0]
    assert torch.allclose(points.abs().amax(-1), torch.tensor(0.5), atol=1e-4)   # on the cube's surface


@pytest.mark.parametrize("device", DEVICES)
def test_a_cube_seen_face_on_shows_its_front_face_at_its_depth(device):
    """A unit cube 3 units from the camera on -Y: the front face (y = -0.5) at depth 2.5 fills
    the square its edges project to, 64 px at 40 degrees: focal 32 / tan 20, half side
    0.5 / 2.5 * focal = 17.58 px, so 35 x 35 pixel centres."""
    box = trimesh.creation.box((1.0, 1.0, 1.0))
    cam = Cameras.from_orbit(-90.0, 0.0, 3.0, 40.0).to(device)
    vertices = torch.tensor(box.vertices, dtype=torch.float32, device=device)
    faces = torch.tensor(box.faces, device=device)
    raster = rasterize(to_screen(vertices, cam, 64), faces)
    half = 0.5 / 2.5 * 32 / math.tan(math.radians(20))
    inside = [c for c in range(64) if abs(c + 0.5 - 32) <= half]
    assert len(raster.pixels) == len(inside) ** 2
    assert torch.allclose(raster.depth, torch.full_like(raster.depth, 2.5), atol=1e-5)
    front = torch.tensor(box.face_normals[:, 1] < -0.99, device=device).nonzero()[:, 0]
    assert torch.isin(raster.face[raster.face >= 0], front).all()
    points = raster.interpolate(vertices)
    assert torch.allclose(points[:, 1], torch.full_like(points[:, 1], -0.5), atol=1e-5)


def test_topology_of_a_closed_mesh():
    box = trimesh.creation.box((1.0, 1.0, 1.0))
    topology = Topology.of(torch.tensor(box.faces), len(box.vertices))
    assert len(topology.edges) == 18 and (topology.face_count == 2).all()
    assert len(topology.face_pairs) == 18


# --- Gradients ----------------------------------------------------------------------------------

def shaded_sum(xy: torch.Tensor, faces: torch.Tensor, size: int, weights: torch.Tensor) -> torch.Tensor:
    """A weighted sum of an antialiased image whose colour varies over the triangles."""
    screen = Screen(xy[None], torch.full((1, len(xy)), 2.0, dtype=xy.dtype), size)
    raster = rasterize(screen, faces)
    colour = raster.interpolate(torch.stack([xy[:, 0] / size, 1 - xy[:, 1] / size, torch.ones_like(xy[:, 0])], -1))
    image = raster.image(colour, 0.25)
    return (antialias(image, raster, screen, Topology.of(faces, len(xy))) * weights).sum()


@pytest.mark.parametrize("vertex", [0, 1, 2, 3])
def test_gradients_match_finite_differences_inside_and_at_the_silhouette(vertex):
    """A quad of two triangles over a grey background: every corner moves both the colours
    inside (through the barycentrics) and the outline (through antialias). Central differences
    of 0.005 px move no edge across a pixel centre here."""
    xy = torch.tensor([[3.3, 2.2], [4.1, 12.6], [13.7, 11.8], [12.2, 3.1]], dtype=torch.float64, requires_grad=True)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    weights = torch.rand((1, 16, 16, 3), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    shaded_sum(xy, faces, 16, weights).backward()
    for axis in (0, 1):
        step = torch.zeros_like(xy)
        step[vertex, axis] = 0.005
        with torch.no_grad():
            numeric = (shaded_sum(xy + step, faces, 16, weights) - shaded_sum(xy - step, faces, 16, weights)) / 0.01
        assert abs(xy.grad[vertex, axis] - numeric) <= 1e-4 * abs(numeric) + 1e-6, (axis, xy.grad[vertex], numeric)


def test_moving_an_outline_edge_outwards_grows_the_covered_area():
    """d(coverage)/d(x of the right edge) is about the edge's length in pixels: 8 rows."""
    xy = torch.tensor([[3.3, 2.2], [3.3, 10.2], [10.7, 10.2], [10.7, 2.2]], dtype=torch.float64, requires_grad=True)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    screen = Screen(xy[None], torch.full((1, 4), 2.0, dtype=torch.float64), 16)
    raster = rasterize(screen, faces)
    antialias(raster.image(torch.ones_like(raster.depth)[:, None]), raster, screen, Topology.of(faces, 4)).sum().backward()
    assert float(xy.grad[2, 0] + xy.grad[3, 0]) == pytest.approx(8.0, abs=0.5)
    assert float(xy.grad[0, 0] + xy.grad[1, 0]) == pytest.approx(-8.0, abs=0.5)


@pytest.mark.parametrize("degrees", [0, 10, 30, 45])
def test_antialiased_coverage_is_the_true_area_at_any_angle(degrees):
    """A 10 x 10 square turned by `degrees`, averaged over sub-pixel shifts: the antialiased
    coverage sums to its area within 1%, where hard coverage is off by up to 8% (45 degrees)."""
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    a = math.radians(degrees)
    turn = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=torch.float64)
    totals = []
    for shift in torch.linspace(0.05, 0.95, 6, dtype=torch.float64):   # no edge on a pixel centre
        corners = torch.tensor([[-5.0, -5.0], [-5.0, 5.0], [5.0, 5.0], [5.0, -5.0]], dtype=torch.float64) @ turn.T
        screen = Screen((corners + 16 + shift)[None], torch.full((1, 4), 2.0, dtype=torch.float64), 32)
        raster = rasterize(screen, faces)
        image = raster.image(torch.ones_like(raster.depth)[:, None])
        totals.append(float(antialias(image, raster, screen, Topology.of(faces, 4)).sum()))
    assert sum(totals) / len(totals) == pytest.approx(100.0, rel=0.01)


def test_an_edge_between_two_faces_towards_the_camera_is_not_blended():
    """The diagonal shared by the quad's two triangles is inside the outline: pixels along it
    keep their colour."""
    xy = torch.tensor([[2.0, 2.0], [2.0, 14.0], [14.0, 14.0], [14.0, 2.0]], dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    screen = Screen(xy[None], torch.full((1, 4), 2.0, dtype=torch.float64), 16)
    raster = rasterize(screen, faces)
    colour = torch.where(raster.face.reshape(-1)[raster.pixels] == 0, 1.0, 0.0).to(torch.float64)[:, None]
    image = raster.image(colour)
    assert torch.equal(antialias(image, raster, screen, Topology.of(faces, 4)), image)


# --- CPU and CUDA -------------------------------------------------------------------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_gives_the_cpus_answers():
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.8)
    cams = Cameras.from_orbit(torch.tensor([10.0, 130.0]), torch.tensor([20.0, -30.0]), 3.0, 40.0)
    results = []
    for device in ("cpu", "cuda"):
        vertices = torch.tensor(sphere.vertices, dtype=torch.float32, device=device, requires_grad=True)
        faces = torch.tensor(sphere.faces, device=device)
        screen = to_screen(vertices, cams, 96)
        raster = rasterize(screen, faces)
        image = antialias(raster.image(raster.interpolate(vertices), 1.0), raster, screen, Topology.of(faces, len(vertices)))
        image.sum().backward()
        results.append((raster.face.cpu(), image.detach().cpu(), vertices.grad.cpu()))
    (face_cpu, image_cpu, grad_cpu), (face_gpu, image_gpu, grad_gpu) = results
    assert (face_cpu != face_gpu).float().mean() < 1e-3
    assert torch.allclose(image_cpu, image_gpu, atol=1e-3)
    assert torch.allclose(grad_cpu, grad_gpu, atol=1e-2, rtol=1e-2)
