"""The image kinds' engine: one picture and its camera -> the canonical frame -> a mesh or views.

Ground truth comes from the built-in shapes: they are sphere-traced from cameras we choose
(rolled, shifted, non-square), so every test knows exactly what the picture shows and where.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import trimesh
from dreamsculpt.cameras import Cameras, orbit_c2w
from dreamsculpt.config import ImageConfig
from dreamsculpt.errors import DreamsculptError
from dreamsculpt.metrics import voxel_iou
from dreamsculpt.picture import picture_view
from dreamsculpt.server.uploads import decode_image
from dreamsculpt.shapes.fitting import best_fit
from dreamsculpt.shapes.geometry import COLOURS, SHAPES, shape_occupancy
from dreamsculpt.shapes.tracing import render_shape
from dreamsculpt.tasks import TASKS
from PIL import Image
from pydantic import ValidationError


def _rolled_camera(azimuth: float, elevation: float, distance: float, roll_deg: float,
                   target=(0.0, 0.0, 0.0)) -> torch.Tensor:
    """c2w of an orbit camera around `target`, rolled about its viewing axis."""
    c2w = orbit_c2w(torch.tensor([azimuth]), torch.tensor([elevation]), torch.tensor([distance]))[0]
    r = math.radians(roll_deg)
    roll = torch.tensor([[math.cos(r), -math.sin(r), 0.0], [math.sin(r), math.cos(r), 0.0], [0.0, 0.0, 1.0]])
    c2w[:3, :3] = c2w[:3, :3] @ roll
    c2w[:3, 3] += torch.tensor(target)
    return c2w


def _request(kind: str, path, **fields):
    """The request a user would send for the picture at `path` (named by its upload id)."""
    image = decode_image(path.read_bytes()).sha256
    return TASKS[kind].request.model_validate({"kind": kind, "image": image, **fields})


def _run(request, out, path, callbacks=None, **options):
    """Run `request`'s task on the picture file `path`, as the CLI and the server's worker do."""
    return TASKS[request.kind].run(request, out, callbacks, image=path, **options)


def _picture(tmp_path, shape: str, c2w: torch.Tensor, fov_deg: float = 40.0, size: int = 256,
             crop=None, colour: str = "red", alpha: bool = True, name: str = "ref.png", offset=(0.0, 0.0, 0.0)):
    """Render `shape` (moved by `offset`) from c2w; crop (top, bottom, left, right) makes a
    non-square, off-centre picture. Returns (path, CameraSpec of a Blender camera that took it)."""
    cam = Cameras(c2w[None], torch.tensor([fov_deg]), torch.zeros(1), torch.zeros(1), torch.ones(1))
    render = render_shape(shape, cam, size, offset=offset)
    rgba = render.rgba(colour)[0]
    top, bottom, left, right = crop or (0, size, 0, size)
    rgba = rgba[:, top:bottom, left:right]
    height, width = rgba.shape[1:]
    if not alpha:
        rgba = torch.cat([rgba[:3] * rgba[3:] + (1 - rgba[3:]), torch.ones_like(rgba[3:])])
    array = (rgba.permute(1, 2, 0) * 255).round().byte().numpy()
    path = tmp_path / name
    Image.fromarray(array if alpha else array[..., :3]).save(path)
    focal = 0.5 * size / math.tan(math.radians(fov_deg) / 2)
    # Blender: AUTO fit on the longer side; the principal point (size/2 - left, size/2 - top).
    side = max(width, height)
    spec = {"matrix_world": c2w.tolist(), "lens": focal * 36.0 / side, "sensor_width": 36.0,
            "sensor_height": 24.0, "sensor_fit": "AUTO",
            "shift_x": (0.5 * width - (0.5 * size - left)) / side,
            "shift_y": ((0.5 * size - top) - 0.5 * height) / side}
    return path, spec


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a > 0.5, b > 0.5
    return float((a & b).sum()) / max(float((a | b).sum()), 1.0)


def test_a_rolled_shifted_non_square_camera_is_resampled_exactly(tmp_path):
    """The virtual view is exact: the cube rendered from the virtual camera (in the world)
    covers the same pixels as the resampled picture, whatever roll, shift and aspect."""
    c2w = _rolled_camera(-50.0, 30.0, 4.0, roll_deg=25.0, target=(0.3, -0.2, 0.1))
    path, spec = _picture(tmp_path, "cube", c2w, fov_deg=35.0, size=320, crop=(40, 280, 10, 300),
                          offset=(0.3, -0.2, 0.1))
    view = picture_view(ImageConfig(path=str(path), camera=spec, depth=4.0))
    world = Cameras(view.world_c2w[None], view.camera.fov_deg, view.camera.azimuth_deg,
                    view.camera.elevation_deg, view.camera.distance)
    truth = render_shape("cube", world, 256, offset=(0.3, -0.2, 0.1)).coverage[0]
    assert _iou(view.mask[0], truth) > 0.97
    # World +Z projects straight up in the virtual view (the roll is taken out).
    assert abs(float(view.world_c2w[2, 0])) < 1e-5
    # The placement puts the canonical origin on the object, at the given depth.
    scale, centre = float(view.placement[0, 0]), view.placement[:3, 3]
    assert torch.linalg.norm(centre - torch.tensor([0.3, -0.2, 0.1])) < 0.15
    assert scale == pytest.approx(4.0 / float(view.camera.distance[0]), rel=1e-5)
    # The object fills the configured share of the frame.
    cols = torch.nonzero((view.mask[0] > 0.5).any(0))[:, 0]
    rows = torch.nonzero((view.mask[0] > 0.5).any(1))[:, 0]
    extent = max(cols.max() - cols.min() + 1, rows.max() - rows.min() + 1) / 256
    assert extent == pytest.approx(ImageConfig().fill, abs=0.03)


def test_an_opaque_picture_on_a_plain_background_gives_the_same_mask(tmp_path):
    c2w = _rolled_camera(-90.0, 10.0, 3.0, 0.0)
    with_alpha, _ = _picture(tmp_path, "sphere", c2w, name="a.png")
    opaque, _ = _picture(tmp_path, "sphere", c2w, alpha=False, name="b.png")
    config = ImageConfig(azimuth_deg=-90.0, elevation_deg=10.0)
    a = picture_view(config, with_alpha)
    b = picture_view(config, opaque)
    assert _iou(a.mask[0], b.mask[0]) > 0.97


@pytest.mark.parametrize("problem, message", [
    ("empty", "No object found"),
    ("cut", "cut off by the edge"),
    ("busy", "no plain background"),
    ("small", "between 32 and 4096 pixels"),
    ("not_an_image", "Cannot read"),
    ("missing", "does not exist"),
])
def test_bad_pictures_say_what_to_do(tmp_path, problem, message):
    path = tmp_path / "bad.png"
    if problem == "empty":
        Image.new("RGBA", (64, 64), (0, 0, 0, 0)).save(path)
    elif problem == "cut":
        array = np.zeros((64, 64, 4), np.uint8)
        array[20:64, 10:40] = 255                       # runs off the bottom edge
        Image.fromarray(array).save(path)
    elif problem == "busy":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    elif problem == "small":
        Image.new("RGBA", (20, 20)).save(path)
    elif problem == "not_an_image":
        path.write_text("not a picture")
    with pytest.raises(DreamsculptError, match=message):
        picture_view(ImageConfig(path=str(path)))


@pytest.mark.slow   # a fit per built-in shape
def test_the_builtin_fit_recognises_each_shape_from_one_view(tmp_path):
    c2w = _rolled_camera(-30.0, 35.0, 3.5, 0.0)
    for shape, colour in zip(SHAPES, COLOURS):
        path, spec = _picture(tmp_path, shape, c2w, colour=colour, name=f"{shape}.png")
        fit = best_fit(picture_view(ImageConfig(path=str(path), camera=spec)))
        assert fit.shape == shape
        assert fit.iou > 0.9
        assert np.allclose(fit.albedo, COLOURS[colour], atol=0.08)


def test_a_picture_of_no_builtin_shape_is_refused(tmp_path):
    array = np.zeros((128, 128, 4), np.uint8)
    array[30:100, 30:45] = 255          # an L: no built-in shape has this silhouette
    array[85:100, 30:100] = 255
    path = tmp_path / "l.png"
    Image.fromarray(array).save(path)
    with pytest.raises(DreamsculptError, match="does not look like any built-in shape"):
        best_fit(picture_view(ImageConfig(path=str(path))))


@pytest.mark.slow   # 300 optimisation steps and a mesh
def test_image_to_3d_reconstructs_the_shape_where_the_camera_saw_it(tmp_path):
    """Acceptance: one oblique picture of a torus, the built-in prior view-conditioned on it,
    CI-sized -> voxel IoU >= 0.6 against the true torus in the world, through the placement."""
    c2w = _rolled_camera(-60.0, 25.0, 3.5, 0.0, target=(1.0, 2.0, 0.5))
    path, spec = _picture(tmp_path, "torus", c2w, offset=(1.0, 2.0, 0.5))
    request = _request("image_to_3d", path, prior="builtin", camera=spec, depth=3.5, preset="preview", steps=300,
                       resolution=32, mesh={"resolution": 96})
    result = _run(request, tmp_path / "out", path)
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    placement = torch.tensor(record["placement"])
    mesh = trimesh.load(tmp_path / "out" / "mesh.ply")
    iou = voxel_iou(mesh, lambda p: shape_occupancy("torus", p * placement[0, 0] + placement[:3, 3]
                                                    - torch.tensor([1.0, 2.0, 0.5])))
    print(f"torus from one view: voxel IoU {iou:.3f}, {result.seconds:.1f} s")
    assert iou >= 0.6
    assert record["kind"] == "image_to_3d" and "torus fitted" in record["prior_detail"]
    assert (tmp_path / "out" / "reference.png").is_file() and (tmp_path / "out" / "mesh.glb").is_file()


def test_novel_views_show_the_object_from_the_asked_poses(tmp_path):
    c2w = _rolled_camera(-90.0, 20.0, 3.0, 0.0)
    path, spec = _picture(tmp_path, "cone", c2w, colour="blue")
    request = _request("novel_views", path, prior="builtin", camera=spec, depth=3.0, steps=8,
                       views=[{"azimuth_deg": 90.0}, {"azimuth_deg": 180.0, "elevation_deg": 20.0}])
    progress = []
    from dreamsculpt.callbacks import Callbacks

    result = _run(request, tmp_path / "out", path, Callbacks(on_progress=progress.append))
    assert result.record.outputs.views == 3
    record = json.loads((tmp_path / "out" / "views.json").read_text())
    assert [v["file"] for v in record["views"]] == ["view_00.png", "view_01.png", "view_02.png"]
    assert progress[-1].step == progress[-1].total == 16 and progress[-1].stage == "sampling"
    for entry in record["views"][1:]:
        image = torch.from_numpy(np.asarray(Image.open(tmp_path / "out" / entry["file"]), np.float32) / 255)
        world = Cameras(torch.tensor(entry["matrix_world"])[None], torch.tensor([entry["fov_deg"]]),
                        torch.zeros(1), torch.zeros(1), torch.ones(1))
        truth = render_shape("cone", world, image.shape[0]).coverage[0]
        assert image.shape[-1] == 4                      # the background is transparent
        assert _iou(image[..., 3], truth) > 0.85, entry["file"]
    assert Image.open(tmp_path / "out" / "novel_views.png").size[0] >= 3 * 64


@pytest.fixture(scope="module")
def tiny_zero123(tmp_path_factory) -> str:
    from tiny_zero123 import build_tiny_zero123

    return build_tiny_zero123(tmp_path_factory.mktemp("tiny-zero123") / "model")


@pytest.mark.slow
def test_zero123_novel_views_through_the_task(tmp_path, tiny_zero123):
    """A random tiny Zero123 from a folder, as a user's --model PATH: K views of its native
    size and the reference first, autoregressive included."""
    path, spec = _picture(tmp_path, "cube", _rolled_camera(-60.0, 20.0, 3.0, 0.0))
    for autoregressive in (False, True):
        request = _request("novel_views", path, prior="zero123", model=tiny_zero123, camera=spec, count=4, steps=3,
                           autoregressive=autoregressive)
        out = tmp_path / f"views-{autoregressive}"
        result = _run(request, out, path)
        assert result.record.outputs.views == 4
        for k in range(4):
            image = np.asarray(Image.open(out / f"view_{k:02d}.png"))
            assert image.shape[:2] == (64, 64)
        record = json.loads((out / "run.json").read_text())
        assert record["prior_detail"].startswith("zero123: ") and record["model"] == tiny_zero123
        assert json.loads((out / "views.json").read_text())["views"][0]["d_azimuth_deg"] == 0


@pytest.mark.slow
def test_zero123_image_to_3d_runs_the_whole_loop(tmp_path, tiny_zero123):
    """Random weights teach nothing, but the reference-view losses alone still give a mesh of
    the seen silhouette: the loop, meshing and placement work with the Zero123 prior."""
    path, spec = _picture(tmp_path, "sphere", _rolled_camera(-60.0, 20.0, 3.0, 0.0))
    request = _request("image_to_3d", path, prior="zero123", model=tiny_zero123, camera=spec, depth=3.0,
                       preset="preview", steps=40, resolution=32, mesh={"resolution": 64})
    config = request.to_config("auto", path)
    config.train.guidance_weight = 0.1     # no request option: the task takes a tuned config
    result = _run(request, tmp_path / "out", path, config=config)
    assert result.record.outputs.faces > 100
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["kind"] == "image_to_3d" and len(record["placement"]) == 4


@pytest.mark.slow
def test_image_to_3d_resumes_from_its_checkpoint(tmp_path):
    """A cancelled image run keeps its checkpoint; --resume picks it up at the same step and the
    result is placed as before (the reference view is rebuilt from the same picture)."""
    from dreamsculpt.callbacks import Callbacks
    from dreamsculpt.errors import CancelledError

    path, spec = _picture(tmp_path, "sphere", _rolled_camera(-60.0, 20.0, 3.0, 0.0))
    request = _request("image_to_3d", path, prior="builtin", camera=spec, depth=3.0, preset="preview", steps=40,
                       resolution=32, mesh={"resolution": 64})
    seen = []
    stop = Callbacks(on_progress=lambda p: seen.append(p.step) if p.stage == "optimising" else None,
                     should_cancel=lambda: len(seen) >= 25)
    with pytest.raises(CancelledError):
        _run(request, tmp_path / "out", path, stop)
    resumed = []
    _run(request, tmp_path / "out", path, Callbacks(on_progress=lambda p: resumed.append((p.step, p.stage))),
         resume=True)
    steps = [s for s, stage in resumed if stage == "optimising"]
    assert steps[0] == 26 and steps[-1] == 40
    assert json.loads((tmp_path / "out" / "run.json").read_text())["placement"][0][0] > 0


@pytest.mark.slow
def test_magic123_style_text_guidance_joins_zero123(tmp_path, tiny_zero123):
    """--prompt with --text-weight adds Stable Diffusion text SDS on top of Zero123 (tiny random
    models for both): the run goes through and says so in run.json; without a prompt it is an
    error that says what to add."""
    from tiny_sd import build_tiny_sd

    sd = build_tiny_sd(tmp_path / "sd")
    path, spec = _picture(tmp_path, "cube", _rolled_camera(-60.0, 20.0, 3.0, 0.0))
    # A 6-step field is faint: mesh whatever is there (threshold 1e-3).
    options = dict(prior="zero123", model=tiny_zero123, camera=spec, text_model=sd, text_weight=0.5,
                   preset="preview", steps=6, resolution=32, mesh={"resolution": 48, "threshold": 1e-3})
    with pytest.raises(ValidationError, match="needs a prompt"):
        _request("image_to_3d", path, **options)
    _run(_request("image_to_3d", path, prompt="a wooden crate", **options), tmp_path / "out", path)
    detail = json.loads((tmp_path / "out" / "run.json").read_text())["prior_detail"]
    assert detail.startswith("zero123: ") and f"+ sd: {sd} x 0.5" in detail
