"""The scene walk's engine: depth alignment, unprojection and its round trip, the stretched-
triangle rule, holes, the face budget, the built-in rooms, and a whole walk through a built-in
room measured against the room itself (F-score of the mesh, PSNR of every frame)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from dreamsculpt.cameras import Pinhole
from dreamsculpt.errors import DreamsculptError
from dreamsculpt.metrics import f_score, seen_surface
from dreamsculpt.scenes.alignment import align_disparity
from dreamsculpt.scenes.room_prior import RoomSet, SetPrior, look_at, look_direction
from dreamsculpt.scenes.rooms import ROOMS, room_for_prompt
from dreamsculpt.scenes.scene_mesh import (
    MeshRender,
    TriangleSoup,
    bounded,
    find_holes,
    frame_triangles,
    render_mesh,
)
from dreamsculpt.scenes.walk import WalkSettings, WalkState, next_frame, start_frame

W, H, FOCAL = 128, 96, 104.0


def camera_at(position, yaw_deg: float, pitch_deg: float = -10.0, width: int = W, height: int = H,
              focal: float = FOCAL) -> Pinhole:
    c2w = look_at(torch.tensor(position, dtype=torch.float32), look_direction(yaw_deg, pitch_deg))
    return Pinhole(c2w[None], torch.tensor([focal]), torch.tensor([[width / 2, height / 2]]), width, height)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return -10.0 * math.log10(float((a - b).square().mean()))


# --- Alignment ----------------------------------------------------------------------------------

def test_alignment_recovers_a_known_scale_and_shift_despite_outliers():
    depth = 1.0 + 4.0 * torch.rand(40, 50, generator=torch.Generator().manual_seed(0))
    predicted = (1.0 / depth - 0.05) / 2.5                    # truth = 2.5 * predicted + 0.05
    predicted[:5, :5] = 3.0                                   # an object edge the prediction gets wrong
    known = torch.ones_like(depth, dtype=torch.bool)
    known[30:] = False                                        # the hole: not used
    fit = align_disparity(predicted, depth, known)
    assert fit.scale == pytest.approx(2.5, rel=1e-6) and fit.shift == pytest.approx(0.05, abs=1e-7)
    assert fit.pixels == 30 * 50 - 25                         # the outliers were trimmed
    assert torch.allclose(fit.depth(predicted)[30:], depth[30:], rtol=1e-5)


def test_alignment_with_nothing_known_keeps_the_models_own_scale():
    fit = align_disparity(torch.rand(8, 8), torch.full((8, 8), float("inf")), torch.ones(8, 8, dtype=torch.bool))
    assert (fit.scale, fit.shift, fit.pixels) == (1.0, 0.0, 0)


def test_an_inverted_prediction_falls_back_to_the_scenes_median_distance():
    depth = 1.0 + torch.linspace(0, 3, 400).reshape(20, 20)
    fit = align_disparity(depth.clone(), depth, torch.ones(20, 20, dtype=torch.bool))   # depth, not disparity
    assert fit.fallback and fit.scale > 0
    assert float(fit.depth(depth).median()) == pytest.approx(float(depth.median()), rel=0.05)


# --- Unprojection and its round trip ------------------------------------------------------------

def test_a_frame_unprojected_and_rendered_again_from_its_camera_is_the_frame():
    room = ROOMS["table room"].mesh()
    camera = camera_at((-2.0, -1.5, 1.5), 35.0)
    frame = render_mesh(room, camera)
    triangles = frame_triangles(frame.depth[0], frame.rgb[0], camera, torch.ones(H, W, dtype=torch.bool))
    again = render_mesh(triangles, camera)
    covered = again.coverage[0]
    assert float(covered.float().mean()) > 0.97               # only depth steps' slivers are missing
    assert psnr(again.rgb[0][:, covered], frame.rgb[0][:, covered]) >= 35.0
    assert torch.allclose(again.depth[0][covered], frame.depth[0][covered], rtol=1e-3)


def test_triangles_across_a_depth_step_are_dropped():
    depth = torch.full((20, 30), 2.0)
    depth[:, 15:] = 4.0                                       # a wall 2 m behind a panel
    camera = camera_at((0.0, 0.0, 1.5), 0.0, 0.0, 30, 20, 25.0)
    triangles = frame_triangles(depth, torch.rand(3, 20, 30), camera, torch.ones(20, 30, dtype=torch.bool))
    corner_depth = (triangles.vertices[triangles.faces] - camera.position[0]) @ camera.forward[0]   # [F, 3]
    assert len(triangles.faces) == 2 * 19 * 28                # every quad but the column across the step
    assert float((corner_depth.amax(1) / corner_depth.amin(1)).max()) < 1.01


def test_triangles_seen_edge_on_are_dropped():
    # A floor seen from 1.5 m up: near the horizon its triangles turn edge-on and are dropped.
    camera = camera_at((0.0, 0.0, 1.5), 0.0, 0.0, 40, 40, 30.0)
    rows = torch.arange(40, dtype=torch.float32)[:, None].expand(40, 40)
    below = (rows + 0.5 - 20) / 30.0                          # tan of the angle below the horizon
    depth = torch.where(below > 0, 1.5 / below.clamp_min(1e-6), torch.full_like(below, float("inf")))
    triangles = frame_triangles(depth, torch.rand(3, 40, 40), camera, torch.ones(40, 40, dtype=torch.bool))
    assert torch.allclose(triangles.vertices[:, 2], torch.tensor(0.0), atol=1e-4)   # all on the floor
    v = triangles.vertices[triangles.faces]
    view = torch.nn.functional.normalize(v.mean(1) - camera.position[0], dim=-1)
    assert float(view[:, 2].abs().min()) >= 0.1               # none flatter than the grazing limit ...
    assert len(triangles.faces) < 2 * 39 * 19                 # ... and the flattest rows are gone


# --- Holes and the face budget ------------------------------------------------------------------

def test_tiny_holes_are_filled_from_their_neighbours_and_large_ones_left_to_the_models():
    coverage = torch.ones(1, 20, 20, dtype=torch.bool)
    coverage[0, 5, 5] = False                                 # a crack
    coverage[0, 10:18, 10:18] = False                         # a hole
    rgb = torch.rand(1, 3, 20, 20, generator=torch.Generator().manual_seed(1))
    render = MeshRender(rgb, torch.where(coverage, 2.0, float("inf")), coverage)
    holes = find_holes(render, max_small=4)
    assert holes.small.sum() == 1 and holes.small[5, 5] and holes.large.sum() == 64
    assert holes.depth[5, 5] == 2.0 and torch.isfinite(holes.rgb).all()
    assert any(torch.equal(holes.rgb[:, 5, 5], rgb[0, :, 5 + dr, 5 + dc]) for dr in (-1, 0, 1) for dc in (-1, 0, 1))


def test_a_mesh_past_its_face_budget_is_decimated_and_keeps_its_colours():
    room = ROOMS["table room"].mesh()
    camera = camera_at((-2.0, -1.5, 1.5), 35.0)
    frame = render_mesh(room, camera)
    mesh = frame_triangles(frame.depth[0], frame.rgb[0], camera, torch.ones(H, W, dtype=torch.bool))
    small = bounded(mesh, len(mesh.faces) // 2)
    assert len(small.faces) <= len(mesh.faces) // 2
    again = render_mesh(small, camera)
    both = again.coverage[0]
    assert float(both.float().mean()) > 0.9 and psnr(again.rgb[0][:, both], frame.rgb[0][:, both]) >= 22.0
    assert bounded(mesh, len(mesh.faces)) is mesh


# --- The built-in rooms -------------------------------------------------------------------------

def test_a_prompt_picks_the_room_it_names_and_an_unknown_one_says_what_there_is():
    assert room_for_prompt("a room with a red table").name == "table room"
    assert room_for_prompt("Orange boxes").name == "box room"
    with pytest.raises(DreamsculptError, match="table room"):
        room_for_prompt("a spaceship bridge")


def test_the_rooms_are_closed_around_their_cameras():
    # From inside, every pixel sees a surface: walls, floor and ceiling leave no gap.
    for room in ROOMS.values():
        render = render_mesh(room.mesh(), camera_at((0.3, 0.2, 1.5), 20.0, 40.0))
        assert bool(render.coverage.all()), room.name


# --- A walk -------------------------------------------------------------------------------------

def walk_path(frames: int = 20) -> list[Pinhole]:
    """Into the table room from a corner, walking 0.12 m a frame while turning right 3 degrees."""
    heading = math.radians(35.0)
    return [camera_at((-2.0 + 0.12 * k * math.cos(heading), -1.5 + 0.12 * k * math.sin(heading), 1.5), 35.0 - 3 * k)
            for k in range(frames)]


@pytest.mark.slow
def test_a_walk_through_a_builtin_room_rebuilds_the_room_it_sees():
    """Started from the room's render and depth at the first camera (what the add-on sends from
    the artist's scene), 19 more frames made by the closed-form prior, whose depth comes with a
    fresh unknown scale and shift each frame."""
    room = room_for_prompt("a room with a red table")
    truth = room.mesh()
    path = walk_path()
    prior = SetPrior(RoomSet(room, W, H, FOCAL), "table room", seed=0)
    state, settings = WalkState(), WalkSettings("a room with a red table")
    generator = torch.Generator().manual_seed(0)
    first = render_mesh(truth, path[0])
    start_frame(state, path[0], first.rgb[0], first.depth[0], prior, prior, settings, generator)
    scores = []
    for camera in path[1:]:
        made = next_frame(state, camera, prior, prior, settings, generator)
        assert made.alignment is not None and made.alignment.pixels > 0.5 * W * H
        scores.append(psnr(made.rgb, render_mesh(truth, camera).rgb[0]))
    assert min(scores) >= 22.0
    cameras = Pinhole(torch.cat([c.c2w for c in path]), torch.full((len(path),), FOCAL),
                      torch.tensor([[W / 2, H / 2]] * len(path)), W, H)
    seen = seen_surface(truth.vertices.double().numpy(), truth.faces.numpy(), cameras, 300_000)
    f, precision, recall = f_score(state.scene.vertices.double().numpy(), state.scene.faces.numpy(), seen, 0.05)
    assert f >= 0.8, (precision, recall)


def test_a_soup_joins_its_parts_with_their_indices_moved():
    a = TriangleSoup(torch.zeros(3, 3), torch.tensor([[0, 1, 2]]), torch.zeros(3, 3))
    b = TriangleSoup(torch.ones(4, 3), torch.tensor([[0, 1, 2], [1, 2, 3]]), torch.ones(4, 3))
    joined = TriangleSoup.join([TriangleSoup.empty(), a, b])
    assert joined.faces.tolist() == [[0, 1, 2], [3, 4, 5], [4, 5, 6]] and len(joined.vertices) == 7
    assert np.isclose(float(joined.colours.sum()), 12.0)
