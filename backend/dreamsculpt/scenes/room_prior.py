"""The offline scene-walk prior: the closed-form inpainter and depth of a posed RGB-D set (a
built-in room rendered from many cameras, or the user's own frames).

For a new camera, the set's frames nearest to it (by position and viewing direction) are
warped into it: each frame's depth unprojected into a grid of triangles (the scene walk's own
rule, `frame_triangles`) and rendered from the new camera. A frame that disagrees with the
pixels the scene already shows there is left out (the condition on the known pixels), and the
rest are combined by depth, nearest first, as one surface seen through a z-buffer. What none
of them covers is filled from the nearest pixel that is.

The depth it answers is the composite's, mapped to disparity and then by an unknown scale and
shift drawn per frame, so a walk must align it exactly as it aligns a real model's.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
from scipy import ndimage

from ..cameras import Pinhole
from .rooms import Room
from .scene_mesh import MeshRender, TriangleSoup, frame_triangles, render_mesh

#: How many of the set's frames are warped into a new camera at a time ...
NEIGHBOURS = 4
#: ... until they cover this share of it, or this many are in (a frame's warp leaves slivers
#: where it steps in depth, so full coverage is rarely reached).
FULL_COVERAGE = 0.98
MAX_FRAMES = 16
#: A warped frame whose RMS colour error over the known pixels it covers exceeds this is dropped.
MAX_KNOWN_ERROR = 0.12
#: Pose distance: metres + this many metres per radian between the viewing directions.
METRES_PER_RADIAN = 1.5


@dataclass
class RGBDFrame:
    """rgb: [3, H, W] in [0, 1]; depth: [H, W] view depth in metres (inf: none); camera: length 1."""

    rgb: torch.Tensor
    depth: torch.Tensor
    camera: Pinhole


class RGBDSet:
    """Posed RGB-D frames, made on demand (`_make`) and cached. positions, forwards: [N, 3]."""

    def __init__(self, positions: torch.Tensor, forwards: torch.Tensor, cache: int = 16):
        self.positions, self.forwards = positions, forwards
        self._cache: OrderedDict[int, TriangleSoup] = OrderedDict()
        self._cache_size = cache

    def __len__(self) -> int:
        return len(self.positions)

    def frame(self, index: int) -> RGBDFrame:
        raise NotImplementedError

    def nearest(self, camera: Pinhole, count: int) -> list[int]:
        """The `count` frames nearest to `camera` in position and viewing direction."""
        angle = torch.arccos((self.forwards @ camera.forward[0]).clamp(-1, 1))
        distance = (self.positions - camera.position[0]).norm(dim=-1) + METRES_PER_RADIAN * angle
        return distance.argsort()[:count].tolist()

    def surface(self, index: int) -> TriangleSoup:
        """Frame `index` as triangles in the world (cached: neighbouring cameras share frames)."""
        if index not in self._cache:
            f = self.frame(index)
            self._cache[index] = frame_triangles(f.depth, f.rgb, f.camera, torch.ones_like(f.depth, dtype=torch.bool))
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        self._cache.move_to_end(index)
        return self._cache[index]


class RoomSet(RGBDSet):
    """A built-in room seen from a grid of cameras at eye height (1.5 m): every 1.1 m across the
    floor, 0.8 m clear of the walls and furniture, 12 headings, level and 20 degrees down; each
    frame rendered when first asked for, with the walk's own image size and focal length."""

    def __init__(self, room: Room, width: int, height: int, focal: float):
        self.room, self.width, self.height, self.focal = room, width, height, focal
        self.mesh = room.mesh()
        sx, sy, _ = room.size
        spots = [(x, y) for x in _steps(sx / 2 - 0.8) for y in _steps(sy / 2 - 0.8)
                 if not any(_near(f, x, y) for f in room.furniture)]
        poses = [(x, y, yaw, pitch) for x, y in spots for yaw in range(0, 360, 30) for pitch in (0.0, -20.0)]
        positions = torch.tensor([[x, y, 1.5] for x, y, _, _ in poses])
        forwards = torch.stack([look_direction(yaw, pitch) for _, _, yaw, pitch in poses])
        super().__init__(positions, forwards)

    def camera(self, index: int) -> Pinhole:
        c2w = look_at(self.positions[index], self.forwards[index])
        return Pinhole(c2w[None], torch.tensor([self.focal]), torch.tensor([[self.width / 2, self.height / 2]]),
                       self.width, self.height)

    def frame(self, index: int) -> RGBDFrame:
        camera = self.camera(index)
        render = render_mesh(self.mesh, camera)
        return RGBDFrame(render.rgb[0], render.depth[0], camera)


class SetPrior:
    """The closed-form Inpainter and DepthEstimator of an RGBDSet (scenes.models)."""

    def __init__(self, frames: RGBDSet, description: str, seed: int = 0, scale_error: float = 0.3,
                 shift_error: float = 0.05, neighbours: int = NEIGHBOURS):
        self.frames, self.description, self.model = frames, description, None
        self.neighbours, self.scale_error, self.shift_error = neighbours, scale_error, shift_error
        self.seed = seed
        # The last camera's warped frames, and the composite its inpainting made (its depth is
        # the one that goes with the colours).
        self._warps: tuple[torch.Tensor, list[MeshRender]] | None = None
        self._composite: tuple[torch.Tensor, MeshRender] | None = None

    def warps(self, camera: Pinhole) -> list[MeshRender]:
        """The set's frames warped into `camera`, nearest first, `neighbours` at a time until
        together they cover FULL_COVERAGE of it (or MAX_FRAMES are in)."""
        key = camera.c2w[0]
        if self._warps is not None and torch.equal(self._warps[0], key):
            return self._warps[1]
        order = self.frames.nearest(camera, MAX_FRAMES)
        renders: list[MeshRender] = []
        for start in range(0, len(order), self.neighbours):
            renders += [render_mesh(self.frames.surface(i), camera) for i in order[start:start + self.neighbours]]
            if float(torch.stack([r.coverage[0] for r in renders]).any(0).float().mean()) >= FULL_COVERAGE:
                break
        self._warps = (key.clone(), renders)
        return renders

    def composite(self, camera: Pinhole, known: torch.Tensor | None = None,
                  image: torch.Tensor | None = None) -> MeshRender:
        """The warped frames combined by depth, nearest first (one surface seen through a
        z-buffer); with `known` [H, W] pixels of `image` [3, H, W], frames that disagree there
        are left out (all of them, when every one does)."""
        renders = self.warps(camera)
        if known is not None and image is not None:
            renders = [r for r in renders if _known_error(r, known, image) <= MAX_KNOWN_ERROR] or renders
        depth = torch.stack([r.depth[0] for r in renders])                         # [K, H, W]
        best = depth.argmin(0, keepdim=True)                                        # [1, H, W]
        rgb = torch.stack([r.rgb[0] for r in renders]).gather(0, best[:, None].expand(1, 3, -1, -1))
        nearest = depth.gather(0, best)
        return MeshRender(rgb, nearest, torch.isfinite(nearest))

    def inpaint(self, image: torch.Tensor, hole: torch.Tensor, camera: Pinhole, prompt: str,
                generator: torch.Generator) -> torch.Tensor:
        composite = self.composite(camera, ~hole, image)
        self._composite = (camera.c2w[0].clone(), composite)
        filled = _nearest_fill(composite.rgb[0], composite.coverage[0])
        return torch.where(hole[None], filled, image)

    def disparity(self, image: torch.Tensor, camera: Pinhole) -> torch.Tensor:
        last = self._composite
        composite = last[1] if last is not None and torch.equal(last[0], camera.c2w[0]) else self.composite(camera)
        depth = _nearest_fill(composite.depth[0][None], composite.coverage[0])[0]
        # The unknown scale and shift: drawn from the seed and the camera, so the same frame gets
        # the same answer in a walk that was interrupted and resumed.
        key = int((camera.c2w[0, :3].double().abs().sum() * 1e6).round()) % (2 ** 31)
        draws = torch.rand(2, generator=torch.Generator().manual_seed(self.seed * 7919 + key)).tolist()
        scale = math.exp((2 * draws[0] - 1) * self.scale_error)
        shift = (2 * draws[1] - 1) * self.shift_error
        disparity = 1.0 / depth
        return scale * disparity + shift * float(disparity.median())


# --- Helpers ----------------------------------------------------------------------------------

def look_direction(yaw_deg: float, pitch_deg: float) -> torch.Tensor:
    """[3] unit: heading `yaw_deg` from +X towards +Y, `pitch_deg` above level."""
    yaw, pitch = math.radians(yaw_deg), math.radians(pitch_deg)
    return torch.tensor([math.cos(pitch) * math.cos(yaw), math.cos(pitch) * math.sin(yaw), math.sin(pitch)])


def look_at(position: torch.Tensor, forward: torch.Tensor) -> torch.Tensor:
    """[4, 4] camera-to-world at `position` looking along `forward`, world +Z up in the image."""
    back = -torch.nn.functional.normalize(forward.float(), dim=0)
    right = torch.linalg.cross(torch.tensor([0.0, 0.0, 1.0]), back)
    right = torch.nn.functional.normalize(right if right.norm() > 1e-6 else torch.tensor([1.0, 0.0, 0.0]), dim=0)
    c2w = torch.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, torch.linalg.cross(back, right), back, position
    return c2w


def _steps(half: float, spacing: float = 1.1) -> list[float]:
    count = max(1, int(2 * half / spacing) + 1)
    return [-half + 2 * half * k / max(count - 1, 1) for k in range(count)] if count > 1 else [0.0]


def _near(item, x: float, y: float, margin: float = 0.5) -> bool:
    cx, cy = item.centre
    reach = (item.size[0] if item.kind == "ball" else max(item.size[:2]) / 2) + margin
    return abs(x - cx) < reach and abs(y - cy) < reach


def _known_error(render: MeshRender, known: torch.Tensor, image: torch.Tensor) -> float:
    both = known & render.coverage[0]
    if int(both.sum()) < 64:
        return 0.0
    return float((render.rgb[0][:, both] - image[:, both]).square().mean().sqrt())


def _nearest_fill(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """[C, H, W] with the pixels outside `valid` [H, W] taken from the nearest valid pixel."""
    if bool(valid.all()) or not bool(valid.any()):
        return values
    _, (rows, cols) = ndimage.distance_transform_edt(~valid.numpy(), return_indices=True)
    return values[:, torch.from_numpy(rows), torch.from_numpy(cols)]
