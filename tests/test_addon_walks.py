"""A scene walk's plain parts in the add-on (blender_addon/walks.py, no bpy): the start render's
depth as the 16-bit PNG the backend reads, and the frames laid out as an image sequence that
keeps step with the timeline."""

from __future__ import annotations

import io
import os
from array import array

import numpy as np
import pytest
from addon_modules import load as _load
from PIL import Image

walks = _load("walks")


def test_depth_becomes_millimetres_with_nothing_as_zero():
    # 1.2346 m -> 1235 mm; the background (Cycles: 1e10, EEVEE: the clip end, 100 m here), past
    # 65.535 m, zero, negative and NaN are "no depth" (0).
    z = [1.2346, 0.0004, 65.5, 1e10, 100.0, 70.0, 0.0, -1.0, float("nan"), float("inf")]
    assert list(walks.depth_millimetres(z, far=100.0)) == [1235, 0, 65500, 0, 0, 0, 0, 0, 0, 0]
    assert list(walks.depth_millimetres([4.0, 5.0, 6.0], far=5.0)) == [4000, 0, 0]     # clip end 5 m


def test_the_depth_png_is_16_bit_grey_top_row_first():
    """Blender's pixels start at the bottom row; the PNG starts at the top, as the backend reads it."""
    width, height = 5, 3
    bottom_up = array("H", [100 * r + c for r in range(height) for c in range(width)])   # row r from the bottom
    data = walks.png_grey16(bottom_up, width, height, bottom_up=True)
    image = Image.open(io.BytesIO(data))
    assert image.mode.startswith("I;16") and image.size == (width, height)
    pixels = np.asarray(image, dtype=np.int64)
    assert pixels[0].tolist() == [200, 201, 202, 203, 204]          # the top row: Blender's last
    assert pixels[2].tolist() == [0, 1, 2, 3, 4]
    assert pixels.max() <= 65535
    top_down = np.asarray(Image.open(io.BytesIO(walks.png_grey16(array("H", [65535, 1]), 2, 1))))
    assert top_down.tolist() == [[65535, 1]]


def test_the_backend_reads_the_depth_png_as_metres(tmp_path):
    from dreamsculpt.scenes.frames import read_depth
    from dreamsculpt.server.uploads import decode_depth

    # 32 x 32 (the smallest the backend takes): the bottom half 2.5 m with the background in
    # its first pixel, the top half 0.75 m.
    z = [1e10] + [2.5] * (16 * 32 - 1) + [0.75] * (16 * 32)
    data = walks.png_grey16(walks.depth_millimetres(z, far=100.0), 32, 32, bottom_up=True)
    path = tmp_path / "depth.png"
    path.write_bytes(decode_depth(data).png)                        # as POST /images?depth=true keeps it
    depth = read_depth(path, (32, 32))
    assert depth[:16].unique().tolist() == [0.75]                   # the top rows: Blender's last
    assert depth[31, 0] == float("inf") and depth[16:].isfinite().sum() == 16 * 32 - 1
    assert depth[16:][depth[16:].isfinite()].unique().tolist() == [2.5]


def test_a_png_needs_as_many_values_as_pixels():
    with pytest.raises(ValueError, match="6 values for a 2x2"):
        walks.png_grey16(array("H", [0] * 6), 2, 2)


def test_the_sequence_has_one_file_per_timeline_frame(tmp_path):
    """4 walk frames every 3 timeline frames: files 0001..0010; walk frame k from file 3k + 1 to
    3k + 3 (the last once), the repeats hard links to the first."""
    downloads = tmp_path / "download"
    downloads.mkdir()
    frames = []
    for k in range(4):
        (downloads / f"{k:04d}.png").write_bytes(f"frame {k}".encode())
        frames.append(str(downloads / f"{k:04d}.png"))
    files = walks.lay_out_sequence(frames, 3, tmp_path / "walk")
    assert walks.sequence_length(4, 3) == len(files) == 10
    assert [f.name for f in files] == [f"{n:04d}.png" for n in range(1, 11)]
    assert [f.read_text() for f in files] == [f"frame {n // 3}" for n in range(10)]
    assert os.path.samefile(files[3], files[5]) and not os.path.samefile(files[3], files[6])
    assert not any((downloads / f"{k:04d}.png").exists() for k in range(4))      # moved, not copied
    again = walks.lay_out_sequence([str(f) for f in files[::3]], 1, tmp_path / "again")   # every frame
    assert [f.read_text() for f in again] == [f"frame {k}" for k in range(4)]


def test_the_depth_file_sits_beside_its_render():
    assert walks.depth_path("/captures/2026-Camera-walk.png").as_posix() == "/captures/2026-Camera-walk-depth.png"
