"""Scene walks as users run them: `dreamsculpt scene-walk` with tiny random models loaded from
folders, the built-in rooms from a start image and its depth, a walk stopped and resumed, and
one clear error for each kind of bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import trimesh
from dreamsculpt.cli import main
from dreamsculpt.requests import SceneWalkRequest
from dreamsculpt.scenes.frames import read_depth, save_depth, save_rgb
from dreamsculpt.scenes.rooms import ROOMS
from dreamsculpt.scenes.scene_mesh import render_mesh
from dreamsculpt.tasks import scene_walk
from PIL import Image
from pydantic import ValidationError
from test_scene_walk import FOCAL, W, walk_path
from tiny_scene_models import build_tiny_depth_anything, build_tiny_inpainting

LENS = FOCAL / W * 36.0          # the Blender lens of the tests' cameras on a 36 mm sensor


def spec(camera) -> dict:
    return {"matrix_world": camera.c2w[0].tolist(), "lens": LENS, "sensor_width": 36.0, "sensor_height": 24.0}


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    """A 6-frame path into the table room, its first frame's render and depth as files."""
    folder = tmp_path_factory.mktemp("walk")
    path = walk_path(6)
    (folder / "path.json").write_text(json.dumps([spec(c) for c in path]))
    first = render_mesh(ROOMS["table room"].mesh(), path[0])
    save_rgb(first.rgb[0], folder / "start.png")
    save_depth(first.depth[0], folder / "start_depth.png")
    return folder


def test_a_three_frame_walk_with_tiny_models_from_folders_writes_every_output(tmp_path, start):
    inpaint = build_tiny_inpainting(tmp_path / "inpaint")
    depth = build_tiny_depth_anything(tmp_path / "depth", "metric")
    (tmp_path / "cam.json").write_text(json.dumps(spec(walk_path(1)[0])))
    out = tmp_path / "out"
    code = main(["scene-walk", "a cosy room", "--camera", str(tmp_path / "cam.json"), "--motion", "pan",
                 "--frames", "3", "--step", "20", "--model", inpaint, "--depth-model", depth, "--resolution", "64",
                 "--aspect", "1.5", "--steps", "2", "--out", str(out), "--quiet"])
    assert code == 0
    for k in range(3):
        assert Image.open(out / "frames" / f"{k:04d}.png").size == (64, 42)
        with Image.open(out / "depth" / f"{k:04d}.png") as d:
            assert d.size == (64, 42) and d.mode.startswith("I")
    scene = trimesh.load(out / "scene.ply", process=False)
    assert len(scene.faces) > 0 and scene.visual.vertex_colors.shape == (len(scene.vertices), 4)
    assert len(trimesh.load(out / "scene.glb", force="mesh").faces) == len(scene.faces)
    cameras = json.loads((out / "cameras.json").read_text())
    assert len(cameras) == 3 and cameras[0]["lens"] == pytest.approx(LENS)
    record = json.loads((out / "run.json").read_text())
    assert record["kind"] == "scene_walk" and record["frames"] == 3 and len(record["per_frame"]) == 3
    assert (out / record["video"]).is_file() and record["model"] == inpaint


@pytest.mark.slow
def test_a_builtin_walk_stopped_midway_resumes_from_its_last_frame(tmp_path, start):
    args = ["scene-walk", "a room with a red table", "--prior", "builtin", "--path", str(start / "path.json"),
            "--start-image", str(start / "start.png"), "--start-depth", str(start / "start_depth.png"),
            "--out", str(tmp_path / "out"), "--quiet"]
    request = SceneWalkRequest.model_validate({"kind": "scene_walk", "prompt": "a room with a red table",
                                               "prior": "builtin", "cameras": json.loads((start / "path.json").read_text())})
    frames_seen = []

    def stop_after_three():
        frames_seen.append(len(list((tmp_path / "out" / "frames").glob("*.png"))))
        return frames_seen[-1] >= 3

    from dreamsculpt.callbacks import Callbacks
    from dreamsculpt.errors import CancelledError

    with pytest.raises(CancelledError):
        scene_walk.run(request, tmp_path / "out", Callbacks(should_cancel=stop_after_three),
                       image=start / "start.png", depth_image=start / "start_depth.png", device="cpu")
    assert len(list((tmp_path / "out" / "frames").glob("*.png"))) == 3
    assert main(args + ["--resume"]) == 0
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert [f["frame"] for f in record["per_frame"]] == list(range(6))   # frames 3-5 made once, after 0-2
    truth = render_mesh(ROOMS["table room"].mesh(), walk_path(6)[5])
    depth = read_depth(tmp_path / "out" / "depth" / "0005.png")
    both = torch.isfinite(depth) & truth.coverage[0]
    assert float(((depth[both] - truth.depth[0][both]).abs() < 0.05).float().mean()) > 0.95


# --- Bad input: one clear error each -------------------------------------------------------------

def run_cli(capsys, *args) -> str:
    assert main(["scene-walk", "a room with a red table", "--prior", "builtin", *map(str, args)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and err.count("\n") == 1
    return err


def test_a_path_of_one_camera_is_refused(tmp_path, capsys):
    (tmp_path / "one.json").write_text(json.dumps([spec(walk_path(1)[0])]))
    assert "at least 2" in run_cli(capsys, "--path", tmp_path / "one.json", "--out", tmp_path / "o")
    with pytest.raises(ValidationError, match="at least 2"):
        SceneWalkRequest.model_validate({"kind": "scene_walk", "prompt": "a room", "cameras": [spec(walk_path(1)[0])]})


def test_a_camera_that_cannot_be_inverted_is_refused_naming_its_frame(tmp_path, capsys):
    cameras = [spec(c) for c in walk_path(3)]
    cameras[2]["matrix_world"] = [[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1.5], [0, 0, 0, 1]]   # a zero axis
    (tmp_path / "path.json").write_text(json.dumps(cameras))
    err = run_cli(capsys, "--path", tmp_path / "path.json", "--out", tmp_path / "o")
    assert "camera 3" in err and "zero scale" in err


def test_a_start_image_of_another_aspect_is_refused(tmp_path, capsys, start):
    err = run_cli(capsys, "--path", start / "path.json", "--start-image", start / "start.png", "--aspect", "1.0",
                  "--out", tmp_path / "o")
    assert "128x96" in err and "aspect" in err


def test_a_depth_file_of_the_wrong_size_is_refused(tmp_path, capsys, start):
    save_depth(torch.full((50, 60), 2.0), tmp_path / "small_depth.png")
    err = run_cli(capsys, "--path", start / "path.json", "--start-image", start / "start.png",
                  "--start-depth", tmp_path / "small_depth.png", "--out", tmp_path / "o")
    assert "60x50" in err and "128x96" in err


def test_references_with_a_depth_of_the_wrong_size_are_refused(tmp_path, capsys, start):
    refs = tmp_path / "refs"
    refs.mkdir()
    Image.fromarray(np.zeros((96, 128, 3), np.uint8)).save(refs / "a.png")
    save_depth(torch.full((48, 64), 2.0), refs / "a_depth.png")
    (refs / "frames.json").write_text(json.dumps([{"image": "a.png", "depth": "a_depth.png",
                                                    "camera": spec(walk_path(1)[0])}]))
    assert main(["scene-walk", "", "--prior", "references", "--references", str(refs), "--path",
                 str(start / "path.json"), "--out", str(tmp_path / "o"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "frame 1" in err and "64x48" in err and "128x96" in err


def test_a_walk_without_a_path_says_how_to_give_one(tmp_path, capsys):
    assert "--path" in run_cli(capsys, "--out", tmp_path / "o")


def test_preset_moves_go_where_they_say():
    from dreamsculpt.scenes.paths import preset_path

    start = spec(walk_path(1)[0])
    forward = preset_path(start, "forward", 3, 0.5, 64, 48)
    assert torch.allclose((forward.position[2] - forward.position[0]).norm(), torch.tensor(1.0), atol=1e-5)
    assert torch.allclose(forward.forward[2], forward.forward[0], atol=1e-6)
    pan = preset_path(start, "pan", 2, 30.0, 64, 48)
    heading = lambda v: math.degrees(math.atan2(float(v[1]), float(v[0])))  # noqa: E731
    assert heading(pan.forward[1]) == pytest.approx(heading(pan.forward[0]) - 30.0, abs=1e-3)
    assert torch.allclose(pan.position[1], pan.position[0])


@pytest.mark.slow
def test_a_walk_on_your_own_rgbd_frames_reproduces_them(tmp_path):
    """--prior references: 24 posed RGB-D frames of the box room (as files, in frames.json) are
    the prior; a 4-frame pan from their middle comes out as the room looks from there."""
    from dreamsculpt.scenes.room_prior import RoomSet

    room = ROOMS["box room"]
    views = RoomSet(room, 96, 72, 70.0)
    entries = []
    for k in range(0, len(views), max(1, len(views) // 24))[:24]:
        frame = views.frame(k)
        save_rgb(frame.rgb, tmp_path / f"{k}.png")
        save_depth(frame.depth, tmp_path / f"{k}_depth.png")
        entries.append({"image": f"{k}.png", "depth": f"{k}_depth.png",
                        "camera": {"matrix_world": frame.camera.c2w[0].tolist(), "lens": 70.0 / 96 * 36.0}})
    (tmp_path / "frames.json").write_text(json.dumps(entries))
    start = views.camera(0)
    (tmp_path / "cam.json").write_text(json.dumps({"matrix_world": start.c2w[0].tolist(), "lens": 70.0 / 96 * 36.0}))
    out = tmp_path / "out"
    assert main(["scene-walk", "", "--prior", "references", "--references", str(tmp_path), "--camera",
                 str(tmp_path / "cam.json"), "--motion", "pan", "--frames", "4", "--step", "8", "--resolution", "96",
                 "--aspect", str(96 / 72), "--out", str(out), "--quiet"]) == 0
    from dreamsculpt.scenes.frames import read_rgb
    from dreamsculpt.scenes.paths import preset_path

    cameras = preset_path(json.loads((tmp_path / "cam.json").read_text()), "pan", 4, 8.0, 96, 72)
    for k in range(4):
        truth = render_mesh(room.mesh(), cameras[k]).rgb[0]
        made = read_rgb(out / "frames" / f"{k:04d}.png")
        assert -10 * math.log10(float((made - truth).square().mean())) >= 22.0, k


def test_the_walk_video_is_an_mp4_with_the_encoder_and_a_gif_without(tmp_path, monkeypatch):
    import sys

    from dreamsculpt.scenes.outputs import write_video

    frames = []
    for k in range(3):
        save_rgb(torch.full((3, 42, 64), k / 3.0), tmp_path / f"{k}.png")
        frames.append(tmp_path / f"{k}.png")
    pytest.importorskip("imageio_ffmpeg")
    video = write_video(frames, tmp_path)
    import imageio.v3 as iio

    assert video.name == "walk.mp4" and iio.imread(video, index=None).shape[:3] == (3, 42, 64)
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)          # as if it were not installed
    gif = write_video(frames, tmp_path)
    assert gif.name == "walk.gif" and Image.open(gif).n_frames == 3
