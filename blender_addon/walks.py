"""A scene walk's plain parts (no `bpy`): the start render's depth as the 16-bit PNG the backend
takes, and the walk's frames laid out as an image sequence that keeps step with the timeline.

Depth is view depth (along the camera's viewing axis, as Blender's Z pass gives it) in metres;
on the wire a 16-bit grey PNG in millimetres, 0 where there is none (so at most 65.535 m).
"""

from __future__ import annotations

import os
import shutil
import struct
import sys
import zlib
from array import array
from pathlib import Path

#: The farthest depth a 16-bit PNG in millimetres holds, metres.
MAX_DEPTH_M = 65.535


def depth_path(image_path: str | Path) -> Path:
    """Where a start render's depth is kept: next to the render (capture.png -> capture-depth.png)."""
    path = Path(image_path)
    return path.with_name(f"{path.stem}-depth.png")


def depth_millimetres(z, far: float) -> array:
    """View depths `z` (metres, any sequence) as millimetres ('H'): 0 where there is nothing (at
    or past `far`, the camera's clip end or the background's marker, or past MAX_DEPTH_M; not
    positive; not finite). 1.2345 m -> 1235; far 100, z 100.0 -> 0."""
    limit = min(far * (1.0 - 1e-6), MAX_DEPTH_M)
    return array("H", (round(v * 1000.0) if 0.0 < v < limit else 0 for v in z))


def png_grey16(values: array, width: int, height: int, bottom_up: bool = False) -> bytes:
    """A 16-bit grey PNG of `values` ('H', row by row; `bottom_up`: the first row is the
    image's bottom, as Blender's pixels are), written with zlib and struct."""
    if len(values) != width * height:
        raise ValueError(f"{len(values)} values for a {width}x{height} image")
    samples = array("H", values)
    if sys.byteorder == "little":
        samples.byteswap()                      # PNG samples are big-endian
    data = samples.tobytes()
    stride = 2 * width
    rows = range(height - 1, -1, -1) if bottom_up else range(height)
    raw = b"".join(b"\x00" + data[r * stride:(r + 1) * stride] for r in rows)   # filter 0: none

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)   # 16-bit grey, no interlace
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6))
            + chunk(b"IEND", b""))


def sequence_length(frames: int, every: int) -> int:
    """Files of the background sequence: one per timeline frame from the first path frame to
    the last (8 frames, every 3 -> 22)."""
    return (frames - 1) * every + 1


def lay_out_sequence(frames: list[str], every: int, folder: Path) -> list[Path]:
    """The walk's frames (files, in path order) as an image sequence in `folder` (a new or
    empty one), one file per timeline frame: 0001.png on, walk frame k as files k * every + 1
    .. (k + 1) * every (the last one once), so it shows from its own path frame until the next
    one's. The first file of each frame is the download itself (moved), the others hard links
    to it (a copy where the file system has none). Returns the files in order."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for n in range(sequence_length(len(frames), every)):
        k, target = n // every, folder / f"{n + 1:04d}.png"
        if n % every == 0:
            shutil.move(frames[k], target)
        else:
            try:
                os.link(files[k * every], target)
            except OSError:
                shutil.copyfile(files[k * every], target)
        files.append(target)
    return files
