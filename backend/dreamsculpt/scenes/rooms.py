"""The built-in rooms: procedural interiors the project renders itself, the truth the offline
scene-walk prior is made of and the tests measure against.

A room is a triangle mesh in Blender's world frame (metres, Z up, the floor at z = 0, the room
centred on the origin): floor, walls and ceiling in 0.25 m tiles (a checkered floor, walls
with a darker skirting band, so a warp or a seam shows), and furniture: boxes, balls and a
table. Every triangle has one colour, shaded once by a light fixed in the room
(`AMBIENT + DIFFUSE * max(0, n . LIGHT)`), so a render is the mesh's vertex colours, as a
scene walk's own mesh is.

Renders go through the project's rasterizer (scene_mesh.render_mesh): colour, view depth and
coverage.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from ..errors import DreamsculptError
from ..shapes.geometry import COLOURS
from .scene_mesh import TriangleSoup

TILE = 0.25                                 # metres: the size of the floor, wall and ceiling tiles
LIGHT = torch.nn.functional.normalize(torch.tensor([0.3, -0.5, 0.8]), dim=0)
AMBIENT, DIFFUSE = 0.6, 0.4
WALL, SKIRTING, CEILING = (0.82, 0.78, 0.70), (0.45, 0.35, 0.28), (0.92, 0.92, 0.90)
FLOOR_TILES = ((0.62, 0.52, 0.40), (0.50, 0.40, 0.30))


@dataclass(frozen=True)
class Furniture:
    """kind: "box" (size: x, y, z extents), "ball" (size[0]: radius) or "table" (size: the top's
    x, y extents and its height). centre: the footprint's centre on the floor (x, y)."""

    kind: str
    colour: str
    centre: tuple[float, float]
    size: tuple[float, ...]


@dataclass(frozen=True)
class Room:
    name: str
    size: tuple[float, float, float]        # x, y extents and the ceiling's height, metres
    furniture: tuple[Furniture, ...]

    def words(self) -> set[str]:
        """What a prompt may name it by: its name's words, its furniture and their colours."""
        return set(self.name.split()) | {f.kind for f in self.furniture} | {f.colour for f in self.furniture}

    def mesh(self) -> TriangleSoup:
        sx, sy, height = self.size
        shell = [_floor(sx, sy), _walls(sx, sy, height), _ceiling(sx, sy, height)]
        return TriangleSoup.join(shell + [_furniture(f) for f in self.furniture])


ROOMS: dict[str, Room] = {room.name: room for room in (
    Room("table room", (6.0, 5.0, 2.8), (
        Furniture("table", "red", (0.6, 0.9), (1.4, 0.8, 0.75)),
        Furniture("box", "blue", (-1.8, 1.4), (0.6, 0.6, 0.6)),
        Furniture("ball", "yellow", (1.9, -1.2), (0.35,)),
        Furniture("box", "green", (-1.6, -1.5), (0.8, 0.5, 1.1)))),
    Room("box room", (5.0, 5.0, 2.6), (
        Furniture("box", "orange", (1.2, 1.2), (0.9, 0.9, 0.9)),
        Furniture("box", "purple", (-1.3, 1.0), (0.5, 1.2, 0.5)),
        Furniture("box", "green", (0.0, -1.5), (1.6, 0.5, 0.4)),
        Furniture("ball", "blue", (-1.2, -1.1), (0.3,)))),
    Room("ball room", (6.0, 6.0, 3.0), (
        Furniture("ball", "red", (1.5, 1.5), (0.5,)),
        Furniture("ball", "green", (-1.5, 1.2), (0.4,)),
        Furniture("ball", "blue", (0.0, -1.8), (0.6,)),
        Furniture("table", "white", (-1.5, -1.0), (1.0, 1.0, 0.7)))),
)}


def room_for_prompt(prompt: str) -> Room:
    """The room a prompt names best ("a room with a red table" -> the table room): the most
    words in common; a prompt naming none of them is an error listing what there is."""
    words = {w[:-1] if w.endswith("s") and w[:-1] in _VOCABULARY else w for w in re.findall(r"[a-z]+", prompt.lower())}
    words = {"ball" if w in ("sphere", "balls", "spheres") else "box" if w in ("cube", "boxes", "cubes") else w
             for w in words}
    scores = {name: len(words & (room.words() - {"room"})) for name, room in ROOMS.items()}
    best = max(scores, key=scores.get)
    if scores[best] == 0:
        listing = "; ".join(f"{name} ({', '.join(f'{f.colour} {f.kind}' for f in room.furniture)})"
                            for name, room in ROOMS.items())
        raise DreamsculptError(f"No built-in room matches {prompt!r}. The rooms: {listing}. Try \"a room with a "
                               "red table\", or use --prior references --references DIR for your own RGB-D frames.")
    return ROOMS[best]


_VOCABULARY = {w for room in ROOMS.values() for w in room.words()}


# --- Building the mesh ------------------------------------------------------------------------

def _shaded(colour, normal: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(colour) * (AMBIENT + DIFFUSE * float((normal @ LIGHT).clamp_min(0)))


def _grid(corner, u, v, nu: int, nv: int, colour_of) -> TriangleSoup:
    """A parallelogram from `corner` along u and v (3-vectors) in nu x nv tiles, each of two
    triangles facing u x v, coloured by colour_of(i, j) shaded by that normal."""
    corner, u, v = (torch.tensor(a, dtype=torch.float32) for a in (corner, u, v))
    normal = torch.nn.functional.normalize(torch.linalg.cross(u, v), dim=0)
    i, j = torch.meshgrid(torch.arange(nu), torch.arange(nv), indexing="ij")
    i, j = i.reshape(-1), j.reshape(-1)
    quad = torch.tensor([[0, 0], [1, 0], [1, 1], [0, 1]])
    a, b = (i[:, None] + quad[:, 0]).float() / nu, (j[:, None] + quad[:, 1]).float() / nv       # [T, 4]
    vertices = corner + a[..., None] * u + b[..., None] * v                                     # [T, 4, 3]
    colours = torch.stack([_shaded(colour_of(int(x), int(y)), normal) for x, y in zip(i, j)])
    base = torch.arange(len(i))[:, None] * 4
    faces = torch.cat([base + torch.tensor([0, 1, 2]), base + torch.tensor([0, 2, 3])])
    return TriangleSoup(vertices.reshape(-1, 3), faces, colours[:, None].expand(-1, 4, -1).reshape(-1, 3))


def _tiles(length: float) -> int:
    return max(1, math.ceil(length / TILE - 1e-6))


def _floor(sx: float, sy: float) -> TriangleSoup:
    return _grid((-sx / 2, -sy / 2, 0.0), (sx, 0, 0), (0, sy, 0), _tiles(sx), _tiles(sy),
                 lambda i, j: FLOOR_TILES[(i // 2 + j // 2) % 2])


def _ceiling(sx: float, sy: float, height: float) -> TriangleSoup:
    return _grid((-sx / 2, -sy / 2, height), (0, sy, 0), (sx, 0, 0), _tiles(sy), _tiles(sx), lambda i, j: CEILING)


def _walls(sx: float, sy: float, height: float) -> TriangleSoup:
    """Four walls facing into the room, a skirting band along the floor."""
    rows = _tiles(height)
    colour = lambda i, j: SKIRTING if j == 0 else WALL  # noqa: E731
    # Clockwise seen from above, so each wall's u x v (along it, then up) points into the room.
    corners = [(-sx / 2, -sy / 2), (-sx / 2, sy / 2), (sx / 2, sy / 2), (sx / 2, -sy / 2)]
    walls = []
    for (x0, y0), (x1, y1) in zip(corners, corners[1:] + corners[:1]):
        length = math.hypot(x1 - x0, y1 - y0)
        walls.append(_grid((x0, y0, 0.0), (x1 - x0, y1 - y0, 0), (0, 0, height), _tiles(length), rows, colour))
    return TriangleSoup.join(walls)


def _box(low, high, colour) -> TriangleSoup:
    """An axis-aligned box from corner `low` to `high`, faces outwards, in tiles."""
    (x0, y0, z0), (x1, y1, z1) = low, high
    dx, dy, dz = x1 - x0, y1 - y0, z1 - z0
    c = lambda i, j: colour  # noqa: E731
    sides = [((x0, y0, z0), (0, dy, 0), (dx, 0, 0)),      # bottom (-z)
             ((x0, y0, z1), (dx, 0, 0), (0, dy, 0)),      # top (+z)
             ((x0, y0, z0), (dx, 0, 0), (0, 0, dz)),      # -y
             ((x1, y1, z0), (-dx, 0, 0), (0, 0, dz)),     # +y
             ((x0, y1, z0), (0, -dy, 0), (0, 0, dz)),     # -x
             ((x1, y0, z0), (0, dy, 0), (0, 0, dz))]      # +x
    return TriangleSoup.join([_grid(o, u, v, _tiles(math.dist(u, (0, 0, 0))), _tiles(math.dist(v, (0, 0, 0))), c)
                              for o, u, v in sides])


def _ball(centre, radius: float, colour, rings: int = 24, segments: int = 48) -> TriangleSoup:
    """A UV sphere, one shaded colour per triangle."""
    theta = torch.linspace(0, math.pi, rings + 1)
    phi = torch.linspace(0, 2 * math.pi, segments + 1)
    t, p = torch.meshgrid(theta, phi, indexing="ij")
    grid = torch.stack([t.sin() * p.cos(), t.sin() * p.sin(), t.cos()], -1)                   # [R+1, S+1, 3]
    quads = [(grid[r, s], grid[r + 1, s], grid[r + 1, s + 1], grid[r, s + 1])
             for r in range(rings) for s in range(segments)]
    triangles = torch.stack([torch.stack(q) for quad in quads for q in ((quad[0], quad[1], quad[2]),
                                                                           (quad[0], quad[2], quad[3]))])
    normals = torch.nn.functional.normalize(triangles.mean(1), dim=-1)
    colours = torch.as_tensor(colour) * (AMBIENT + DIFFUSE * (normals @ LIGHT).clamp_min(0))[:, None]
    vertices = torch.tensor(centre) + radius * triangles
    faces = torch.arange(3 * len(triangles)).reshape(-1, 3)
    return TriangleSoup(vertices.reshape(-1, 3), faces, colours[:, None].expand(-1, 3, -1).reshape(-1, 3))


def _furniture(item: Furniture) -> TriangleSoup:
    colour, (x, y) = COLOURS[item.colour], item.centre
    if item.kind == "box":
        sx, sy, sz = item.size
        return _box((x - sx / 2, y - sy / 2, 0.0), (x + sx / 2, y + sy / 2, sz), colour)
    if item.kind == "ball":
        radius = item.size[0]
        return _ball((x, y, radius), radius, colour)
    sx, sy, height = item.size                                  # a table: a top and four legs
    top, leg = 0.06, 0.08
    parts = [_box((x - sx / 2, y - sy / 2, height - top), (x + sx / 2, y + sy / 2, height), colour)]
    for cx in (x - sx / 2 + leg, x + sx / 2 - 2 * leg):
        for cy in (y - sy / 2 + leg, y + sy / 2 - 2 * leg):
            parts.append(_box((cx, cy, 0.0), (cx + leg, cy + leg, height - top), colour))
    return TriangleSoup.join(parts)
