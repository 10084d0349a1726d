"""User mistakes on the command line: a non-zero exit and one line on stderr that says what
to do, never a traceback. Checked in-process (`cli.main`) and through the installed console
script, as a user runs it (those are marked slow)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dreamsculpt import cli
from dreamsculpt.image_folders import save_image_folder

SCRIPT = Path(sys.executable).with_name("dreamsculpt")


@pytest.fixture(autouse=True)
def keep_sigint_handler():
    """run_generate installs its own Ctrl-C handler; give pytest its own back."""
    handler = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, handler)


def error_line(stderr: str) -> str:
    """The error message: the last line of stderr, the only one saying "error:"."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert lines, "nothing on stderr"
    assert sum("error:" in line for line in lines) == 1, stderr
    assert lines[-1].startswith("error: "), stderr
    return lines[-1]


def image_folder(folder: Path, sizes=((16, 16),)) -> Path:
    for i, (h, w) in enumerate(sizes):
        save_image_folder(folder, torch.rand(1, 3, h, w), [f"view_{i}.png"])
    return folder


# Each case: (arguments after "generate", words the one-line message must contain), for a
# folder `tmp` prepared by the `workspace` fixture.
def user_errors(tmp: Path) -> dict[str, tuple[list[str], list[str]]]:
    preview = ["--preset", "preview", "--out", str(tmp / "out")]
    return {
        "empty prompt": (["", "--prior", "builtin", *preview], ["prompt is empty", "a red cube"]),
        "unknown shape": (["a teapot", "--prior", "builtin", *preview],
                          ["teapot", "Available shapes: ", "cube", "sphere", "--prior references"]),
        "two shapes": (["a cube on a sphere", "--prior", "builtin", *preview], ["Name one shape"]),
        "missing model": (["a chair", "--prior", "sd", "--model", "/nonexistent", *preview],
                          ["/nonexistent", "does not exist", "--model PATH", "--prior builtin"]),
        "missing references": (["a vase", "--prior", "references", "--references", str(tmp / "nope"), *preview],
                               ["does not exist", "--references"]),
        "no references flag": (["a vase", "--prior", "references", *preview], ["--references DIR"]),
        "empty reference folder": (["a vase", "--prior", "references", "--references", str(tmp / "empty"), *preview],
                                   ["has no images", ".png"]),
        "file as reference folder": (["a vase", "--prior", "references", "--references", str(tmp / "notes.txt"),
                                      *preview], ["not a folder", "--references"]),
        "nothing to resume": (["a red cube", "--prior", "builtin", "--resume", *preview],
                              ["Nothing to resume", "checkpoint.pt", "without --resume"]),
        "zero steps": (["a red cube", "--prior", "builtin", "--steps", "0", *preview],
                       ["--steps must be from 1 to 100000 (got 0)"]),
        "tiny resolution": (["a red cube", "--prior", "builtin", "--resolution", "4", *preview],
                            ["--resolution must be from 16 to 512 (got 4)"]),
        "negative refine": (["a red cube", "--prior", "builtin", "--refine", "-1", *preview],
                            ["--refine must be from 0 to 100000 (got -1)"]),
    }


CASES = list(user_errors(Path("unused")))


@pytest.fixture
def workspace(tmp_path) -> Path:
    """tmp_path with an empty folder and a plain file, to pass where a folder of images belongs."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not a folder")
    return tmp_path


@pytest.mark.parametrize("case", CASES)
def test_user_error_in_process(case, workspace, capsys):
    args, words = user_errors(workspace)[case]
    assert cli.main(["generate", *args]) == 1
    captured = capsys.readouterr()
    message = error_line(captured.err)
    for word in words:
        assert word in message, (word, message)
    assert captured.out == ""
    assert not (workspace / "out" / "mesh.ply").exists()


def test_non_square_and_broken_references_say_what_to_do(tmp_path, capsys):
    folder = image_folder(tmp_path / "wide", sizes=((16, 24),))
    assert cli.main(["generate", "x", "--prior", "references", "--references", str(folder), "--quiet"]) == 1
    assert "must be square" in error_line(capsys.readouterr().err)
    broken = image_folder(tmp_path / "broken")
    (broken / "view_1.png").write_bytes(b"\x89PNG not really")
    assert cli.main(["generate", "x", "--prior", "references", "--references", str(broken), "--quiet"]) == 1
    message = error_line(capsys.readouterr().err)
    assert "view_1.png" in message and "Re-save it" in message


def test_unreadable_reference_folder(tmp_path, monkeypatch, capsys):
    folder = image_folder(tmp_path / "locked")
    # chmod 000 does not stop root (CI runs as root), so listing the folder is made to fail as
    # it does for a user without permission.
    real_iterdir = Path.iterdir

    def iterdir(self):
        if self == folder:
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    assert cli.main(["generate", "x", "--prior", "references", "--references", str(folder), "--quiet"]) == 1
    message = error_line(capsys.readouterr().err)
    assert "Cannot list the reference folder" in message and "Permission denied" in message
    assert "Check that you may read it" in message


def test_user_error_is_the_only_line_on_stderr(tmp_path, capsys):
    args, _ = user_errors(tmp_path)["unknown shape"]
    assert cli.main(["generate", *args]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_refine_reaches_the_request_and_the_run_config():
    """--refine STEPS is the request's refine; without it the preset's applies (high: on),
    and 0 turns it off even on high."""
    parser = cli.build_parser()

    def request(*options: str):
        return cli.request_from_args(parser.parse_args(["generate", "a red cube", "--prior", "builtin", *options]),
                                     parser)

    asked = request("--refine", "250")
    assert asked.refine == 250 and asked.to_config().refine.steps == 250
    off = request("--preset", "high", "--refine", "0")
    assert off.refine == 0 and off.to_config().refine.steps == 0
    for preset, steps in (("preview", 0), ("standard", 0), ("high", 1000)):
        default = request("--preset", preset)
        assert default.refine is None and default.to_config().refine.steps == steps, preset


def run_cli(command: list[str], *args: str) -> subprocess.CompletedProcess:
    """Run the CLI as a user does (this session's cache and offline settings are inherited)."""
    return subprocess.run([*command, "generate", *args], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))


@pytest.mark.slow   # each case starts the console script (torch import: seconds)
@pytest.mark.parametrize("case", ["empty prompt", "unknown shape", "missing model", "missing references",
                                  "nothing to resume", "zero steps"])
def test_user_error_from_the_console_script(case, workspace):
    assert SCRIPT.exists(), f"{SCRIPT} is missing: pip install -e . installs it"
    args, words = user_errors(workspace)[case]
    result = run_cli([str(SCRIPT)], *args)
    assert result.returncode == 1, result.stderr
    message = error_line(result.stderr)
    for word in words:
        assert word in message, (word, message)
    assert not (workspace / "out" / "mesh.ply").exists()


@pytest.mark.slow
def test_python_dash_m_works_too(tmp_path):
    args, _ = user_errors(tmp_path)["zero steps"]
    result = run_cli([sys.executable, "-m", "dreamsculpt.cli"], *args)
    assert result.returncode == 1
    assert "--steps must be from 1 to 100000" in error_line(result.stderr)


@pytest.mark.slow
def test_bad_option_value_is_an_argparse_error(tmp_path):
    result = run_cli([str(SCRIPT)], "a red cube", "--prior", "bogus")
    assert result.returncode == 2
    assert "invalid choice: 'bogus'" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_version_and_help():
    version = subprocess.run([str(SCRIPT), "--version"], capture_output=True, text=True, timeout=120)
    assert version.returncode == 0 and version.stdout.startswith("dreamsculpt ")
    helptext = subprocess.run([str(SCRIPT), "generate", "--help"], capture_output=True, text=True, timeout=120)
    assert helptext.returncode == 0
    for option in ("--prior", "--model", "--references", "--preset", "--steps", "--refine", "--resume", "--obj"):
        assert option in helptext.stdout
