"""The built-in shape library and user reference folders: fast, offline."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from dreamsculpt.cameras import Cameras, focal_pixels
from dreamsculpt.errors import DreamsculptError
from dreamsculpt.image_folders import load_image_folder
from dreamsculpt.shapes import library as shapes
from dreamsculpt.shapes.geometry import COLOURS, SHAPES, shape_occupancy, shape_sdf
from dreamsculpt.shapes.library import builtin_library, write_shape_folder
from dreamsculpt.shapes.prompts import match_prompt
from dreamsculpt.shapes.tracing import render_shape
from PIL import Image


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("DREAMSCULPT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def views(azimuths, elevations) -> Cameras:
    return Cameras.from_orbit(torch.tensor(azimuths, dtype=torch.float32),
                              torch.tensor(elevations, dtype=torch.float32), 3.0, 40.0)


# --- Signed distances --------------------------------------------------------------------------

def test_sdf_signs_and_values():
    p = lambda *xyz: torch.tensor([xyz], dtype=torch.float32)  # noqa: E731
    for name in ("cube", "sphere", "cone", "cylinder"):
        assert shape_sdf(name, p(0, 0, 0)) < 0, name
    for name in SHAPES:
        assert shape_sdf(name, p(0.9, 0.9, 0.9)) > 0, name
    # Torus (R 0.5, r 0.2 in XY): the centre is in the hole, 0.5 - 0.2 = 0.3 from the tube.
    assert shape_sdf("torus", p(0, 0, 0)).item() == pytest.approx(0.3)
    assert shape_sdf("torus", p(0.5, 0, 0)).item() == pytest.approx(-0.2)
    assert shape_sdf("torus", p(0, 0.5, 0.2)).item() == pytest.approx(0.0, abs=1e-6)
    # Cube half-size 0.5: 1 - 0.5 along an axis; the corner (1,1,1) is sqrt(3) * 0.5 away.
    assert shape_sdf("cube", p(1, 0, 0)).item() == pytest.approx(0.5)
    assert shape_sdf("cube", p(1, 1, 1)).item() == pytest.approx(math.sqrt(3) * 0.5)
    assert shape_sdf("sphere", p(0, 1, 0)).item() == pytest.approx(0.4)
    # Cone (base radius 0.55 at z = -0.55, apex at z = +0.55): 0.05 above the apex, 0.05
    # below the base; halfway up the radius is 0.275.
    assert shape_sdf("cone", p(0, 0, 0.6)).item() == pytest.approx(0.05, abs=1e-6)
    assert shape_sdf("cone", p(0, 0, -0.6)).item() == pytest.approx(0.05, abs=1e-6)
    assert shape_sdf("cone", p(0.275, 0, 0)).item() == pytest.approx(0.0, abs=1e-6)
    assert shape_sdf("cylinder", p(0, 0.45, 0.3)).item() == pytest.approx(0.0, abs=1e-6)
    assert shape_sdf("cylinder", p(0, 0, 0.75)).item() == pytest.approx(0.2)


def test_sdfs_are_distances():
    # An exact SDF has a unit gradient almost everywhere (sphere tracing relies on it).
    points = torch.rand(2000, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    h = 1e-3
    for name in SHAPES:
        grad = torch.stack([(shape_sdf(name, points + h * e) - shape_sdf(name, points - h * e)) / (2 * h)
                            for e in torch.eye(3)], -1)
        assert (grad.norm(dim=-1) - 1).abs().quantile(0.98) < 0.02, name


def test_occupancy_volumes():
    # Monte Carlo over [-1, 1]^3 (volume 8): 400k points give about 1% error for the cone.
    points = torch.rand(400_000, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1
    expected = {"cube": 1.0, "sphere": 4 / 3 * math.pi * 0.6 ** 3, "torus": 2 * math.pi ** 2 * 0.5 * 0.2 ** 2,
                "cone": math.pi * 0.55 ** 2 * 1.1 / 3, "cylinder": math.pi * 0.45 ** 2 * 1.1}
    for name, volume in expected.items():
        occupied = shape_occupancy(name, points)
        assert occupied.dtype == torch.bool
        assert occupied.float().mean().item() * 8 == pytest.approx(volume, rel=0.03), name


# --- Renders -----------------------------------------------------------------------------------

def test_sphere_silhouette_area():
    # A sphere of radius r seen from distance d projects to a disc of radius f r / sqrt(d^2 - r^2).
    size, r, d = 64, 0.6, 3.0
    cams = views([0, 77, 200, 315, 30], [0, -30, 45, 75, 89.9])
    coverage = render_shape("sphere", cams, size).coverage
    f = focal_pixels(torch.tensor(40.0), size).item()
    r_px = f * r / math.sqrt(d * d - r * r)   # 87.9 * 0.6 / 2.94 = 17.9 px
    for area in coverage.sum((1, 2)).tolist():
        assert area == pytest.approx(math.pi * r_px ** 2, rel=0.02)


def test_orientation_cone_apex_up_and_torus_hole_from_above():
    cone = render_shape("cone", views([30], [10]), 64).coverage[0] > 0.5
    rows = torch.nonzero(cone.any(1)).squeeze(1)
    top, bottom = cone[rows[0]].sum().item(), cone[rows[-1] - 3].sum().item()
    assert top <= 3 and bottom > 20   # narrow apex at the top of the image, wide base below
    torus = render_shape("torus", views([0], [75]), 64).coverage[0]
    assert torus[32, 32] == 0 and torus[32, 14] == 1   # hole at the centre, ring around it


def test_red_cube_centre_is_red_and_corners_white():
    images = render_shape("cube", shapes.library_cameras()[::5], 32).colourise("red")
    for image in images:
        r, g, b = image[:, 16, 16].tolist()
        assert r > 0.45 and g < 0.15 and b < 0.15
        for y, x in ((0, 0), (0, -1), (-1, 0), (-1, -1)):
            assert image[:, y, x].tolist() == [1.0, 1.0, 1.0]


# --- The library -------------------------------------------------------------------------------

def test_library_has_every_shape_colour_and_pose(cache_in_tmp):
    lib = builtin_library(16)
    labels = {f"{c} {s}" for s in SHAPES for c in COLOURS}
    assert set(lib.labels) == labels
    assert len(lib) == len(labels) * 72 and lib.images.shape[1:] == (3, 16, 16)
    assert lib.has_poses and lib.distance.eq(3.0).all() and lib.fov_deg.eq(40.0).all()
    assert set(lib.elevation_deg.tolist()) == {-30, -10, 10, 30, 50, 75}
    assert set(lib.azimuth_deg.tolist()) == set(range(0, 360, 30))
    assert 0 <= lib.images.min() and lib.images.max() <= 1
    assert list(cache_in_tmp.glob("*16px.pt"))
    only = builtin_library(16, labels=["blue torus"])
    assert set(only.labels) == {"blue torus"} and len(only) == 72


def test_library_cache_is_used_and_corrupt_cache_rebuilt(cache_in_tmp, monkeypatch):
    first = builtin_library(16)
    (path,) = cache_in_tmp.glob("*.pt")
    rendered = []
    real_render = shapes.render_shape
    monkeypatch.setattr(shapes, "render_shape", lambda *a, **k: rendered.append(1) or real_render(*a, **k))
    assert torch.equal(builtin_library(16).images, first.images) and not rendered
    path.write_bytes(b"not a torch file")
    assert torch.equal(builtin_library(16).images, first.images) and rendered
    assert not list(cache_in_tmp.glob("*.tmp"))
    rendered.clear()
    builtin_library(16)
    assert not rendered   # the rebuilt file is valid again


# --- Prompts -----------------------------------------------------------------------------------

LABELS = [f"{c} {s}" for s in SHAPES for c in COLOURS for _ in range(3)]


@pytest.mark.parametrize("prompt, expected", [
    ("a red cube", ["red cube"]),
    ("A Crimson BALL", ["red sphere"]),
    ("two blue donuts", ["blue torus"]),
    ("a gray tube", ["grey cylinder"]),
    ("can you make a green cone", ["green cone"]),
    ("a yellow can", ["yellow cylinder"]),
    ("a red cube on a white background", ["red cube"]),
])
def test_match_prompt(prompt, expected):
    assert match_prompt(prompt, LABELS) == expected


def test_match_prompt_without_colour_gives_every_colour():
    assert match_prompt("a box", LABELS) == [f"{c} cube" for c in COLOURS]


@pytest.mark.parametrize("prompt, says", [
    ("a teapot", "No built-in shape matches 'a teapot'"),
    ("", "needs a prompt naming a shape"),
    ("a cube and a sphere", "Name one shape"),
    ("a red and blue cube", "Name one colour"),
    ("a black sphere", "no black shapes"),
])
def test_match_prompt_errors_list_what_is_available(prompt, says):
    with pytest.raises(DreamsculptError) as err:
        match_prompt(prompt, LABELS)
    message = str(err.value)
    assert says in message
    if "shape matches" in says or "needs" in says or "black" in says:
        assert "cube, sphere, torus, cone, cylinder" in message and "red" in message
        assert "--prior references" in message


# --- Reference folders -------------------------------------------------------------------------

def test_reference_folder_round_trip(tmp_path):
    folder = write_shape_folder("cube", "red", tmp_path / "refs", resolution=32)
    loaded = load_image_folder(folder, 32)
    lib = builtin_library(32, labels=["red cube"])
    assert len(loaded) == 72 and loaded.labels == ["refs"] * 72
    assert (loaded.images - lib.images).abs().max() <= 2 / 255
    for key in ("azimuth_deg", "elevation_deg", "distance", "fov_deg"):
        assert torch.allclose(getattr(loaded, key), getattr(lib, key), atol=1e-4)


def test_rgba_folder_composites_over_white(tmp_path):
    cams = views([0, 120, 240], [10, 30, -10])
    plain = load_image_folder(write_shape_folder("torus", "purple", tmp_path / "rgb", 32, cams), 32)
    rgba = load_image_folder(write_shape_folder("torus", "purple", tmp_path / "rgba", 32, cams,
                                                        alpha=True), 32)
    assert Image.open(tmp_path / "rgba" / "view_000.png").mode == "RGBA"
    assert (plain.images - rgba.images).abs().max() <= 2 / 255
    # Hand-made: pure red at half alpha over white is (1, 0.5, 0.5); fully transparent is white.
    pixels = np.zeros((4, 4, 4), np.uint8)
    pixels[..., 0], pixels[..., 3] = 255, 0
    pixels[0, 0, 3] = 128
    folder = tmp_path / "hand"
    folder.mkdir()
    Image.fromarray(pixels, "RGBA").save(folder / "a.png")
    image = load_image_folder(folder, 4).images[0]
    assert image[:, 0, 0].tolist() == pytest.approx([1.0, 127 / 255, 127 / 255], abs=1e-6)
    assert image[:, 3, 3].tolist() == [1.0, 1.0, 1.0]


def test_loader_reads_any_case_sorted_resizes_and_works_without_poses(tmp_path):
    for name, value in (("b.JPeG", 220), ("a.PNG", 255), ("c.jpg", 255), ("notes.txt", None)):
        if value is None:
            (tmp_path / name).write_text("not an image")
        else:
            Image.new("RGB", (8, 8), (value, value, value)).save(tmp_path / name, quality=100,
                                                                 format="PNG" if "png" in name.lower() else "JPEG")
    loaded = load_image_folder(tmp_path, 4)
    assert loaded.images.shape == (3, 3, 4, 4) and not loaded.has_poses
    assert loaded.images[:, 0, 0, 0].tolist() == pytest.approx([1.0, 220 / 255, 1.0], abs=0.02)


def test_loader_warns_about_a_dark_background(tmp_path):
    Image.new("RGB", (8, 8), (20, 20, 20)).save(tmp_path / "dark.png")
    with pytest.warns(UserWarning, match="white background"):
        load_image_folder(tmp_path, 8)


def _folder_with_images(tmp_path, count=2, size=(8, 8)):
    for i in range(count):
        Image.new("RGB", size, "white").save(tmp_path / f"img{i}.png")
    return tmp_path


@pytest.mark.parametrize("case, says", [
    ("missing", "does not exist"),
    ("file", "not a folder"),
    ("empty", ".png, .jpg, .jpeg"),
    ("non_square", "must be square"),
    ("corrupt", "Cannot decode the image broken.png"),
    ("poses_missing_entry", "no entry for img1.png"),
    ("poses_not_number", '"elevation_deg" of img0.png is "high"'),
    ("poses_bad_json", "line 1"),
    ("poses_not_object", "one JSON object"),
])
def test_loader_errors_say_what_to_do(tmp_path, case, says):
    folder = tmp_path / "refs"
    folder.mkdir()
    pose = {"azimuth_deg": 0, "elevation_deg": 10, "distance": 3, "fov_deg": 40}
    if case == "missing":
        folder = tmp_path / "nowhere"
    elif case == "file":
        folder = tmp_path / "refs" / "x.png"
        folder.write_bytes(b"")
    elif case == "empty":
        (folder / "readme.txt").write_text("hi")
    elif case == "non_square":
        _folder_with_images(folder, 1, size=(8, 6))
    elif case == "corrupt":
        _folder_with_images(folder, 1)
        (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    else:
        _folder_with_images(folder, 2)
        table = {"poses_missing_entry": json.dumps({"img0.png": pose}),
                 "poses_not_number": json.dumps({"img0.png": {**pose, "elevation_deg": "high"}, "img1.png": pose}),
                 "poses_bad_json": "{'img0.png': 1}",
                 "poses_not_object": json.dumps([pose, pose])}
        (folder / "poses.json").write_text(table[case])
    with pytest.raises(DreamsculptError) as err:
        load_image_folder(folder, 8)
    assert says in str(err.value)


def test_poses_default_distance_and_fov(tmp_path):
    _folder_with_images(tmp_path, 1)
    (tmp_path / "poses.json").write_text(json.dumps({"img0.png": {"azimuth_deg": 45, "elevation_deg": -5}}))
    loaded = load_image_folder(tmp_path, 8)
    assert loaded.azimuth_deg.tolist() == [45.0] and loaded.elevation_deg.tolist() == [-5.0]
    assert loaded.distance.tolist() == [3.0] and loaded.fov_deg.tolist() == [40.0]
