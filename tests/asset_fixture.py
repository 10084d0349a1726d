"""A mesh job's result as the backend writes it, without the backend: result.ply (welded,
normals, sRGB vertex colours, per-face corner UVs), texture.png, optionally normal.png, and
run.json naming them; and `FolderClient`, which serves such a folder to the add-on's job
thread as the server would. Stdlib only, so the Blender tests can import it too.

The Blender tests take the folder from `write_result`; pointed at a real job's out/ folder
(or with the real client), the same assertions check the real backend's output.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

#: The cube's albedo (sRGB bytes) and the texture's other colour.
RED, GREEN = (200, 20, 20), (20, 200, 20)
#: Every face's corners sample inside the texture's top-right quadrant (red); a flipped v (the
#: PNG's first row is v = 1) or ignored UVs would sample green.
FACE_UVS = (0.6, 0.6, 0.9, 0.6, 0.9, 0.9)
#: A unit cube's triangles, counter-clockwise seen from outside (vertex i = its x, y, z bits).
CUBE_FACES = ((0, 2, 1), (1, 2, 3), (4, 5, 6), (5, 7, 6), (0, 1, 4), (1, 5, 4),
              (2, 6, 3), (3, 6, 7), (0, 4, 2), (2, 4, 6), (1, 3, 5), (3, 7, 5))


def cube(side: float = 1.0, origin: str = "bottom") -> list[tuple[float, float, float]]:
    """The 8 corners of a cube of `side` metres centred in x, y; `origin` "bottom": z from 0
    to side, "center": z from -side/2 to side/2 (the backend's two origins)."""
    h, z0 = side / 2.0, 0.0 if origin == "bottom" else -side / 2.0
    return [(-h + side * (i & 1), -h + side * (i >> 1 & 1), z0 + side * (i >> 2 & 1)) for i in range(8)]


def ply_bytes(positions, faces, colors=None, uvs=None, normals=True) -> bytes:
    """Binary little-endian PLY in the backend's layout: x y z, nx ny nz, red green blue alpha;
    faces as `list uchar int vertex_indices` then `list uchar float texcoord` (6 a face)."""
    colors = colors or [(*RED, 255)] * len(positions)
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(positions)}",
              "property float x", "property float y", "property float z"]
    if normals:
        header += ["property float nx", "property float ny", "property float nz"]
    header += ["property uchar red", "property uchar green", "property uchar blue", "property uchar alpha",
               f"element face {len(faces)}", "property list uchar int vertex_indices"]
    if uvs is not None:
        header.append("property list uchar float texcoord")
    body = bytearray("\n".join(header + ["end_header"]).encode("ascii") + b"\n")
    cx, cy, cz = (sum(p[k] for p in positions) / len(positions) for k in range(3))
    for (x, y, z), rgba in zip(positions, colors):
        body += struct.pack("<3f", x, y, z)
        if normals:
            n = ((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) ** 0.5 or 1.0
            body += struct.pack("<3f", (x - cx) / n, (y - cy) / n, (z - cz) / n)
        body += struct.pack("<4B", *rgba)
    for i, face in enumerate(faces):
        body += struct.pack("<B3i", 3, *face)
        if uvs is not None:
            body += struct.pack("<B6f", 6, *uvs[6 * i:6 * i + 6])
    return bytes(body)


def png_bytes(rows: list[list[tuple[int, int, int]]]) -> bytes:
    """An 8-bit RGB PNG; rows[0] is the top row (v = 1 in Blender's UVs)."""
    height, width = len(rows), len(rows[0])
    raw = b"".join(b"\x00" + bytes(c for pixel in row for c in pixel) for row in rows)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def quadrant_texture(size: int = 64) -> bytes:
    """Red in the top-right quadrant (u, v in [0.5, 1]), green elsewhere."""
    return png_bytes([[RED if (x >= size // 2 and y < size // 2) else GREEN for x in range(size)]
                      for y in range(size)])


def flat_normal_map(size: int = 16) -> bytes:
    """A tangent-space normal map that leaves the surface as it is: (0, 0, 1) everywhere."""
    return png_bytes([[(128, 128, 255)] * size for _ in range(size)])


def write_result(folder: Path, side: float = 1.0, origin: str = "bottom", texture: bool = True,
                 normal_map: bool = False, kind: str = "text_to_3d") -> Path:
    """A finished mesh job's downloads in `folder`, by their URL names: result.ply, run.json,
    texture.png (unless `texture` is False: an older server), normal.png (with `normal_map`)."""
    folder.mkdir(parents=True, exist_ok=True)
    uvs = list(FACE_UVS) * len(CUBE_FACES) if texture else None
    (folder / "result.ply").write_bytes(ply_bytes(cube(side, origin), CUBE_FACES, uvs=uvs))
    record = {"kind": kind, "seed": 0, "steps": 1, "vertices": 8, "faces": len(CUBE_FACES), "threshold": 1.0}
    if texture:
        (folder / "texture.png").write_bytes(quadrant_texture())
        record.update(texture="texture.png", normal_map="normal.png" if normal_map else None)
    if normal_map:
        (folder / "normal.png").write_bytes(flat_normal_map())
    (folder / "run.json").write_text(json.dumps(record))
    return folder


class FolderClient:
    """What JobWatcher needs of client.Client, answered from a folder of downloads: the job is
    done, and each file is served by name; a missing one raises `rejected` (the add-on's
    client.Rejected, whose module name differs in Blender and in the bpy-free tests) with 404."""

    def __init__(self, folder: str | Path, rejected: type, kind: str = "text_to_3d"):
        self.folder, self.rejected, self.kind = Path(folder), rejected, kind

    def job(self, job_id: str) -> dict:
        files = sorted(p.name for p in self.folder.iterdir())
        return {"id": job_id, "kind": self.kind, "status": "done", "stage": "done", "step": 1, "total": 1,
                "result": {"files": files}}

    def download(self, job_id: str, name: str) -> bytes:
        path = self.folder / name
        if not path.is_file():
            raise self.rejected(f"Job {job_id} has no {name} (it is done).", 404)
        return path.read_bytes()
