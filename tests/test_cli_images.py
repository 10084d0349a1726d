"""`dreamsculpt image-to-3d IMAGE` and `dreamsculpt novel-views IMAGE` as a user runs them:
mistakes are one `error:` line and exit 1 (the options are checked by the job server's own
request models, so both accept the same values); tiny runs with the built-in prior write what
they say; Ctrl-C stops cleanly with exit 130."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import trimesh
from dreamsculpt import cli
from PIL import Image
from server_harness import camera_spec, reference_image
from test_cli import SCRIPT, error_line


@pytest.fixture(autouse=True)
def keep_sigint_handler():
    """The commands install their own Ctrl-C handler; give pytest its own back."""
    handler = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, handler)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A red cube seen from the front (RGBA), its Blender camera, and things that are not
    what an option wants."""
    tmp = tmp_path_factory.mktemp("cli-images")
    reference_image(tmp / "cube")
    (tmp / "camera.json").write_text(json.dumps(camera_spec()))
    (tmp / "notes.txt").write_text("not an image")
    Image.new("RGBA", (16, 16)).save(tmp / "tiny.png")
    Image.new("RGBA", (64, 64), (0, 0, 0, 0)).save(tmp / "empty.png")
    (tmp / "broken.json").write_text('{"matrix_world": [[1, 0, 0, 0],')
    (tmp / "list.json").write_text("[1, 2]")
    nan = camera_spec()
    nan["matrix_world"][0][0] = float("nan")
    (tmp / "nan.json").write_text(json.dumps(nan))
    flat = camera_spec()
    flat["matrix_world"] = [[0.0] * 4, [0.0] * 4, [0.0] * 4, [0.0, 0.0, 0.0, 1.0]]
    (tmp / "flat.json").write_text(json.dumps(flat))
    return tmp


# Each case: (command and arguments, with {tmp} for the workspace; words the message must contain).
CASES = {
    "missing image": (["novel-views", "{tmp}/nope.png"], ["nope.png", "does not exist", "PNG, JPEG or WebP"]),
    "not an image": (["image-to-3d", "{tmp}/notes.txt"], ["notes.txt", "not a PNG, JPEG or WebP image"]),
    "image too small": (["novel-views", "{tmp}/tiny.png"], ["16x16", "between 32 and 4096"]),
    "no object (novel-views)": (["novel-views", "{tmp}/empty.png", "--prior", "builtin"],
                                ["No object found", "alpha is empty"]),
    "no object (image-to-3d)": (["image-to-3d", "{tmp}/empty.png", "--prior", "builtin"], ["No object found"]),
    "camera missing": (["image-to-3d", "{tmp}/cube/view_000.png", "--camera", "{tmp}/nope.json"],
                       ["--camera", "nope.json", "does not exist", "matrix_world"]),
    "camera not JSON": (["novel-views", "{tmp}/cube/view_000.png", "--camera", "{tmp}/broken.json"],
                        ["--camera", "broken.json", "not valid JSON", "line 1"]),
    "camera not an object": (["novel-views", "{tmp}/cube/view_000.png", "--camera", "{tmp}/list.json"],
                             ["--camera", "JSON object", "matrix_world"]),
    "camera NaN": (["image-to-3d", "{tmp}/cube/view_000.png", "--camera", "{tmp}/nan.json"],
                   ["--camera", "matrix_world.0.0", "finite number"]),
    "camera flat": (["novel-views", "{tmp}/cube/view_000.png", "--camera", "{tmp}/flat.json"],
                    ["--camera", "matrix_world", "zero scale"]),
    "camera and elevation": (["novel-views", "{tmp}/cube/view_000.png", "--camera", "{tmp}/camera.json",
                              "--elevation", "10"], ["--camera already gives the view", "--elevation"]),
    "views not pairs": (["novel-views", "{tmp}/cube/view_000.png", "--views", "30,0 60:10"],
                        ["--views", "d_azimuth,d_elevation", "'60:10'", '"30,0 60,10"']),
    "views out of range": (["novel-views", "{tmp}/cube/view_000.png", "--views", "30,0 60,95"],
                           ["--views pair 2", "elevation", "89", "95"]),
    "views empty": (["novel-views", "{tmp}/cube/view_000.png", "--views", " "], ["--views is empty"]),
    "one view": (["novel-views", "{tmp}/cube/view_000.png", "--count", "1"], ["--count", "2", "got 1"]),
    "no neighbours": (["novel-views", "{tmp}/cube/view_000.png", "--neighbours", "0"], ["--neighbours"]),
    "zero sampling steps": (["novel-views", "{tmp}/cube/view_000.png", "--steps", "0"], ["--steps", "got 0"]),
    "wide fov": (["image-to-3d", "{tmp}/cube/view_000.png", "--fov", "175"], ["--fov", "170"]),
    "text weight alone": (["image-to-3d", "{tmp}/cube/view_000.png", "--text-weight", "0.5"],
                          ["--text-weight", "needs a prompt"]),
    "coarse mesh": (["image-to-3d", "{tmp}/cube/view_000.png", "--mesh-resolution", "8"],
                    ["--mesh-resolution", "32", "got 8"]),
    "negative refine": (["image-to-3d", "{tmp}/cube/view_000.png", "--refine", "-5"],
                        ["--refine must be from 0 to 100000 (got -5)"]),
    "nothing to resume": (["image-to-3d", "{tmp}/cube/view_000.png", "--prior", "builtin", "--resume"],
                          ["Nothing to resume", "checkpoint.pt", "without --resume"]),
}


def arguments(case: str, tmp: Path) -> list[str]:
    args, _ = CASES[case]
    return [a.replace("{tmp}", str(tmp)) for a in args] + ["--out", str(tmp / "out" / case.replace(" ", "-"))]


@pytest.mark.parametrize("case", list(CASES))
def test_user_error_is_one_line(case, workspace, capsys):
    assert cli.main(arguments(case, workspace)) == 1
    captured = capsys.readouterr()
    message = error_line(captured.err)
    assert len(captured.err.strip().splitlines()) == 1, captured.err
    for word in CASES[case][1]:
        assert word in message, (word, message)
    assert captured.out == ""
    out = workspace / "out" / case.replace(" ", "-")
    assert not (out / "mesh.ply").exists() and not (out / "views.json").exists()


def test_image_to_3d_takes_refine_and_novel_views_does_not(workspace, capsys):
    """Refinement polishes a mesh: image-to-3d has --refine (the request's refine, else the
    preset's), novel views make no mesh and refuse it."""
    parser = cli.build_parser()
    image = str(workspace / "cube" / "view_000.png")
    asked = cli.request_from_args(parser.parse_args(["image-to-3d", image, "--refine", "300"]), parser)
    assert asked.refine == 300 and asked.to_config(image_path=image).refine.steps == 300
    high = cli.request_from_args(parser.parse_args(["image-to-3d", image, "--preset", "high"]), parser)
    assert high.refine is None and high.to_config(image_path=image).refine.steps == 1000
    with pytest.raises(SystemExit) as stopped:
        parser.parse_args(["novel-views", image, "--refine", "300"])
    assert stopped.value.code == 2 and "unrecognized arguments: --refine 300" in capsys.readouterr().err


@pytest.mark.slow   # each case starts the console script
@pytest.mark.parametrize("case", ["not an image", "views out of range", "camera NaN"])
def test_user_error_from_the_console_script(case, workspace):
    result = subprocess.run([str(SCRIPT), *arguments(case, workspace)], check=False, capture_output=True,
                            text=True, timeout=300, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert result.returncode == 1, result.stderr
    message = error_line(result.stderr)
    for word in CASES[case][1]:
        assert word in message, (word, message)


@pytest.mark.slow
def test_help_lists_the_options():
    for command, options in [("image-to-3d", ["--camera", "--elevation", "--azimuth", "--fov", "--prior", "--model",
                                              "--variant", "--prompt", "--text-weight", "--text-model", "--preset",
                                              "--steps", "--refine", "--mesh-resolution", "--threshold", "--resume",
                                              "--obj"]),
                             ("novel-views", ["--camera", "--count", "--views", "--autoregressive", "--neighbours",
                                              "--steps", "--seed", "--fp16", "--device"])]:
        result = subprocess.run([str(SCRIPT), command, "--help"], check=False, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0
        for option in options:
            assert option in result.stdout, (command, option)


def test_novel_views_writes_the_views_into_out_image_name(workspace, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    image = workspace / "cube" / "view_000.png"
    assert cli.main(["novel-views", str(image), "--prior", "builtin", "--elevation", "10", "--count", "4",
                     "--steps", "5", "--quiet"]) == 0
    out = Path("out") / "view-000"
    line = capsys.readouterr().out.strip()
    assert re.fullmatch(rf"wrote 4 views to {out}/ \(novel_views\.png\) in \d+ s", line), line
    record = json.loads((out / "views.json").read_text())
    assert [v["file"] for v in record["views"]] == [f"view_{i:02d}.png" for i in range(4)]
    for view in record["views"]:
        with Image.open(out / view["file"]) as picture:
            assert picture.size[0] == picture.size[1] >= 64
    assert (out / "novel_views.png").is_file() and (out / "reference.png").is_file()


@pytest.mark.slow   # 40 optimisation steps and a mesh
def test_image_to_3d_with_a_blender_camera(workspace, tmp_path, capsys):
    out = tmp_path / "cube"
    assert cli.main(["image-to-3d", str(workspace / "cube" / "view_000.png"), "--camera",
                     str(workspace / "camera.json"), "--prior", "builtin", "--preset", "preview", "--steps", "40",
                     "--resolution", "32", "--mesh-resolution", "64", "--threshold", "1", "--out", str(out),
                     "--quiet"]) == 0
    line = capsys.readouterr().out.strip()
    match = re.fullmatch(rf"wrote {out}/mesh\.glb \((\d+) vertices, (\d+) faces, 512² texture\) in \d+ s", line)
    assert match, line
    mesh = trimesh.load(out / "mesh.ply", process=False)
    assert len(mesh.faces) == int(match.group(2)) > 100
    colour = np.asarray(mesh.vertex_attributes["color"])[:, :3].mean(0)
    assert colour[0] > 2 * colour[1], colour     # red
    run = json.loads((out / "run.json").read_text())
    assert run["kind"] == "image_to_3d" and run["steps"] == 40 and run["prior"] == "builtin"
    assert np.array(run["placement"]).shape == (4, 4)
    for name in ("mesh.glb", "reference.png", "preview.png", "turntable.gif", "checkpoint.pt"):
        assert (out / name).is_file(), name


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT to a child process")
def test_ctrl_c_stops_image_to_3d_cleanly(workspace, tmp_path):
    out = tmp_path / "stopped"
    process = subprocess.Popen([str(SCRIPT), "image-to-3d", str(workspace / "cube" / "view_000.png"), "--prior",
                                "builtin", "--preset", "preview", "--steps", "5000", "--out", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        seen, deadline = b"", time.monotonic() + 240
        while b"optimising" not in seen and time.monotonic() < deadline and process.poll() is None:
            if select.select([process.stderr], [], [], 1.0)[0]:
                seen += os.read(process.stderr.fileno(), 4096)
        assert b"optimising" in seen, seen[-2000:]
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    stderr = (seen + stderr).decode()
    assert process.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and "cancelled" in stderr
    assert (out / "checkpoint.pt").is_file() and not (out / "mesh.ply").exists()
    assert stdout == b""
