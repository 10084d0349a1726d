"""A differentiable triangle rasterizer in pure PyTorch, on the CPU and on CUDA.

    to_screen -> rasterize: which triangle each pixel centre sees (no gradient), then that
    triangle's perspective-correct barycentrics there (with gradient) -> Raster.interpolate
    vertex attributes -> antialias: the silhouettes' gradients

Visibility is found without a gradient, as nvdiffrast and every hardware rasterizer do:
triangles are grouped by the size of their pixel bounding box (powers of two per axis), each
is tested against the pixel centres of its box, and a packed int64 key (depth bits, triangle
id) per covered pixel goes through `scatter_reduce_("amin")`, so the nearest triangle wins
exactly. The barycentrics of the winner are then recomputed from the screen positions, so
attributes interpolated with them carry gradients to the vertices.

Inside a triangle that moves nothing about the silhouette: pixels flip from one triangle to
another. `antialias` gives the silhouettes their gradient (nvdiffrast's idea, written here
from its paper: Laine et al., "Modular Primitives for High-Performance Differentiable
Rendering", 2020): where two neighbouring pixels see different triangles and the nearer one's
edge between them is a silhouette edge of the mesh, the pixel the edge passes through is
blended towards its neighbour by how far the edge reaches into it. The blend weight is a
function of the edge's screen position, so it is differentiable in the edge's vertices.

Conventions are cameras.py's: pixel (col, row) has its centre at (col + 0.5, row + 0.5), rows
grow downwards, a triangle wound counter-clockwise seen from outside faces the camera.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .cameras import Cameras, Pinhole, project

#: Pixels times candidate triangles tested at once (bounds the coverage pass's memory: ~30 bytes each).
CHUNK = 1 << 21
#: Triangles with a vertex nearer the camera than this (view depth) are not drawn.
NEAR = 1e-3
_NONE = torch.iinfo(torch.int64).max
#: How far (a share of the depth) what a pixel next to a silhouette shows may lie in front of
#: the edge for the edge to count as seen (its own surface, foreshortened near the outline).
SILHOUETTE_SLACK = 0.02


@dataclass
class Screen:
    """Vertices seen by a batch of B cameras of width x height pixels (height 0: square).
    xy: [B, V, 2] pixels (col, row); depth: [B, V] along the viewing axis. Both differentiable
    in the world positions."""

    xy: torch.Tensor
    depth: torch.Tensor
    width: int
    height: int = 0

    def __post_init__(self) -> None:
        self.height = self.height or self.width


def to_screen(vertices: torch.Tensor, cameras: Cameras | Pinhole, size: int | None = None) -> Screen:
    """World vertices [V, 3] -> their pixel positions and depths in each of `cameras`: square
    orbit Cameras at `size` pixels, or Pinhole cameras at their own width x height."""
    if isinstance(cameras, Pinhole):
        xy, depth = cameras.to(vertices.device).project(vertices)
        return Screen(xy, depth, cameras.width, cameras.height)
    xy, depth = project(vertices, cameras.to(vertices.device), size)
    return Screen(xy, depth, size)


@dataclass
class Topology:
    """Edges of a triangle mesh. face_edges: [F, 3], the edge opposite each corner (between
    corners k+1 and k+2); edges: [E, 2] vertex pairs; face_count: [E] faces on each edge;
    face_pairs: [M, 2] the two faces of each edge shared by exactly two."""

    face_edges: torch.Tensor
    edges: torch.Tensor
    face_count: torch.Tensor
    face_pairs: torch.Tensor

    @staticmethod
    def of(faces: torch.Tensor, vertex_count: int) -> "Topology":
        a = torch.stack([faces[:, 1], faces[:, 2], faces[:, 0]], 1)
        b = torch.stack([faces[:, 2], faces[:, 0], faces[:, 1]], 1)
        lo, hi = torch.minimum(a, b).reshape(-1), torch.maximum(a, b).reshape(-1)
        keys, inverse, counts = torch.unique(lo * vertex_count + hi, return_inverse=True, return_counts=True)
        edges = torch.stack([keys // vertex_count, keys % vertex_count], 1)
        order = torch.argsort(inverse, stable=True)
        sorted_edges = inverse[order]
        paired = (sorted_edges[1:] == sorted_edges[:-1]) & (counts[sorted_edges[:-1]] == 2)
        first = order[:-1][paired]
        pairs = torch.stack([first // 3, order[1:][paired] // 3], 1)
        return Topology(inverse.reshape(-1, 3), edges, counts, pairs)


@dataclass
class Raster:
    """What each pixel of B images of H x W sees.

    face: [B, H, W] int64 triangle id, -1 where no triangle is. bary: [P, 3] perspective-correct
    barycentrics of the covered pixels (in the order of `pixels`, flat indices into B * H * W),
    differentiable in the screen positions; depth: [P] view depth there (differentiable).
    """

    face: torch.Tensor
    pixels: torch.Tensor
    bary: torch.Tensor
    depth: torch.Tensor
    faces: torch.Tensor

    @property
    def mask(self) -> torch.Tensor:
        """[B, H, W, 1] float: 1 where a triangle is."""
        return (self.face >= 0).to(self.bary.dtype)[..., None]

    def interpolate(self, attributes: torch.Tensor) -> torch.Tensor:
        """Vertex attributes [V, C] -> [P, C] at the covered pixels (differentiable in both)."""
        corners = attributes[self.faces[self.face.reshape(-1)[self.pixels]]]   # [P, 3, C]
        return (self.bary[..., None] * corners).sum(1)

    def image(self, values: torch.Tensor, fill: float | torch.Tensor = 0.0) -> torch.Tensor:
        """Per covered pixel values [P, C] -> [B, H, W, C], `fill` elsewhere (a number, or a
        [B, H, W, C] image); differentiable in both."""
        shape = (*self.face.shape, values.shape[-1])
        if isinstance(fill, torch.Tensor):
            base = fill.reshape(-1, values.shape[-1])
        else:
            base = values.new_full((self.face.numel(), values.shape[-1]), fill)
        return base.index_put((self.pixels,), values).reshape(shape)


def facing(screen: Screen, faces: torch.Tensor) -> torch.Tensor:
    """[B, F] bool: the triangle faces the camera (counter-clockwise on screen, y up)."""
    return _signed_area(screen.xy[:, faces].detach()) < 0


def rasterize(screen: Screen, faces: torch.Tensor, cull_back: bool = True) -> Raster:
    """The nearest triangle at every pixel centre and its barycentrics there.

    cull_back: skip triangles facing away (a closed mesh seen from outside loses nothing)."""
    W, H = screen.width, screen.height
    B = screen.xy.shape[0]
    face = torch.stack([_nearest(screen.xy[b].detach(), screen.depth[b].detach(), faces, W, H, cull_back)
                        for b in range(B)])
    pixels = (face.reshape(-1) >= 0).nonzero()[:, 0]
    batch, rest = pixels // (W * H), pixels % (W * H)
    centre = torch.stack([rest % W, rest // W], -1).to(screen.xy.dtype) + 0.5
    tri = faces[face.reshape(-1)[pixels]]                                       # [P, 3]
    corners = screen.xy[batch[:, None], tri]                                    # [P, 3, 2]
    depth = screen.depth[batch[:, None], tri]                                   # [P, 3]
    weights = _barycentric(corners, centre) / depth                             # perspective correction
    total = weights.sum(-1, keepdim=True)
    return Raster(face.reshape(B, H, W), pixels, weights / total, 1.0 / total[:, 0], faces)


def antialias(image: torch.Tensor, raster: Raster, screen: Screen, topology: Topology) -> torch.Tensor:
    """`image` [B, H, W, C] (shaded and composited over its background) with the mesh's
    visible silhouette edges blended into the pixels they cross, differentiably in the
    edges' screen positions."""
    B, H, W = raster.face.shape
    flat = image.reshape(B * H * W, -1)
    depth = torch.full((B * H * W,), float("inf"), device=flat.device, dtype=raster.depth.dtype)
    depth[raster.pixels] = raster.depth.detach()
    front = facing(screen, raster.faces)                                       # [B, F]
    delta = torch.zeros_like(flat)
    for b in range(B):
        edges = _silhouettes(front[b], raster.faces, topology)
        for axis in (0, 1):
            delta = delta + _edge_blend(flat, depth, screen, raster, edges, b, axis)
    return (flat + delta).reshape(image.shape)


# --- Coverage -----------------------------------------------------------------------------------

def _signed_area(corners: torch.Tensor) -> torch.Tensor:
    """[..., 3, 2] -> [...] twice the signed area in pixel coordinates (rows down)."""
    d1, d2 = corners[..., 1, :] - corners[..., 0, :], corners[..., 2, :] - corners[..., 0, :]
    return d1[..., 0] * d2[..., 1] - d1[..., 1] * d2[..., 0]


def _barycentric(corners: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Screen-space barycentrics [..., 3] of points [..., 2] in triangles [..., 3, 2]
    (affine in the point; negative outside)."""
    rel = corners - points[..., None, :]
    x, y = rel[..., 0], rel[..., 1]
    e0 = x[..., 1] * y[..., 2] - x[..., 2] * y[..., 1]
    e1 = x[..., 2] * y[..., 0] - x[..., 0] * y[..., 2]
    e2 = x[..., 0] * y[..., 1] - x[..., 1] * y[..., 0]
    edges = torch.stack([e0, e1, e2], -1)
    return edges / edges.sum(-1, keepdim=True)


def _nearest(xy: torch.Tensor, depth: torch.Tensor, faces: torch.Tensor, W: int, H: int,
             cull_back: bool) -> torch.Tensor:
    """[H * W] id of the nearest triangle covering each pixel centre, -1 for none (no gradient)."""
    corners, z = xy[faces], depth[faces]                                        # [F, 3, 2], [F, 3]
    area = _signed_area(corners)
    keep = (z > NEAR).all(1) & (area != 0)
    if cull_back:
        keep &= area < 0
    lo = torch.ceil(corners.amin(1) - 0.5).clamp_min(0)
    hi = torch.minimum(torch.floor(corners.amax(1) - 0.5), corners.new_tensor([W - 1, H - 1]))
    keep &= (hi >= lo).all(1)
    ids = keep.nonzero()[:, 0]
    lo, hi = lo[ids].long(), hi[ids].long()
    span = hi - lo + 1
    # Group by the bounding box rounded up to powers of two per axis: each group's triangles
    # test the same number of candidate pixels.
    bits = torch.ceil(torch.log2(span.float())).long()
    group = bits[:, 0] * 64 + bits[:, 1]
    best = torch.full((W * H,), _NONE, dtype=torch.int64, device=xy.device)
    for key in torch.unique(group).tolist():
        members = (group == key).nonzero()[:, 0]
        width, height = 1 << (key // 64), 1 << (key % 64)
        step = max(CHUNK // (width * height), 1)
        for chunk in members.split(step):
            _cover(best, ids[chunk], lo[chunk], hi[chunk], width, height, corners, z, W)
    return torch.where(best == _NONE, -1, best & 0xFFFFFFFF)


def _cover(best: torch.Tensor, ids: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, width: int, height: int,
           corners: torch.Tensor, z: torch.Tensor, row_length: int) -> None:
    """Scatter (depth, id) keys of triangles `ids` into `best` over their boxes [lo, hi]."""
    device = best.device
    dx = torch.arange(width, device=device).repeat(height)
    dy = torch.arange(height, device=device).repeat_interleave(width)
    cols, rows = lo[:, :1] + dx, lo[:, 1:] + dy                                 # [N, w * h]
    valid = (cols <= hi[:, :1]) & (rows <= hi[:, 1:])
    centre = torch.stack([cols, rows], -1).to(corners.dtype) + 0.5
    bary = _barycentric(corners[ids][:, None], centre)                          # [N, w * h, 3]
    inside = valid & (bary >= 0).all(-1)
    depth = 1.0 / (bary / z[ids][:, None]).sum(-1)
    n, k = inside.nonzero(as_tuple=True)
    key = (depth[n, k].float().view(torch.int32).long() << 32) | ids[n]
    best.scatter_reduce_(0, rows[n, k] * row_length + cols[n, k], key, "amin")


# --- Silhouettes --------------------------------------------------------------------------------

def _silhouettes(front: torch.Tensor, faces: torch.Tensor, topology: Topology) -> torch.Tensor:
    """[K, 3] vertex ids (edge start, edge end, the far corner of its face towards the camera)
    of the edges between a face towards the camera and one away from it, and of border edges."""
    fronts = torch.zeros_like(topology.face_count).index_add_(
        0, topology.face_edges.reshape(-1), front[:, None].expand(-1, 3).reshape(-1).long())
    outline = ((fronts > 0) & (fronts < topology.face_count)) | (topology.face_count == 1)
    f, k = (front[:, None] & outline[topology.face_edges]).nonzero(as_tuple=True)
    return torch.stack([faces[f, (k + 1) % 3], faces[f, (k + 2) % 3], faces[f, k]], -1)


def _edge_blend(flat: torch.Tensor, depth: torch.Tensor, screen: Screen, raster: Raster, edges: torch.Tensor,
                b: int, axis: int) -> torch.Tensor:
    """The blends [B * H * W, C] where silhouette `edges` of image b cross the segments between
    the centres of neighbouring pixels along `axis` (1: a row's neighbours, 0: a column's).

    Each crossing at distance t (pixels) from the centre on the mesh's side: past the midpoint
    (t > 1/2) the surface covers t - 1/2 of the far pixel, which is blended towards the near
    one by that much; short of it, the near pixel is blended towards the far one by 1/2 - t.
    Only where the edge is what the pixels show: the near pixel sees the surface at the edge's
    depth, the far one something behind it or nothing."""
    H, W = raster.face.shape[1:]
    xy, z = screen.xy[b], screen.depth[b].detach()
    along, across = (0, 1) if axis == 1 else (1, 0)          # crossing lines: constant `across` coordinate
    lines, span = (H, W) if axis == 1 else (W, H)            # how many lines; pixels along each
    # Each edge blends along one axis only, the one it is more perpendicular to (counted along
    # both, a diagonal outline would be blended twice and drawn a fifth of a pixel thin).
    steep = (xy[edges[:, 1]] - xy[edges[:, 0]]).detach().abs()
    edges = edges[steep[:, across] >= steep[:, along] if axis == 1 else steep[:, across] > steep[:, along]]
    p0, p1, opposite = xy[edges[:, 0]], xy[edges[:, 1]], xy[edges[:, 2]].detach()
    lo = torch.minimum(p0[:, across], p1[:, across]).detach()
    hi = torch.maximum(p0[:, across], p1[:, across]).detach()
    first = torch.ceil(lo - 0.5).clamp_min(0)
    count = (torch.floor(hi - 0.5).clamp_max(lines - 1) - first + 1).clamp_min(0).long()
    which = torch.repeat_interleave(torch.arange(len(edges), device=xy.device), count)
    line = first[which].long() + torch.arange(len(which), device=xy.device) - \
        torch.repeat_interleave(torch.cumsum(count, 0) - count, count)
    a, c = p0[which], p1[which]
    u = (line.to(xy.dtype) + 0.5 - a[:, across]) / (c[:, across] - a[:, across])
    cross = a[:, along] + u * (c[:, along] - a[:, along])        # where the edge crosses the line
    left = torch.floor(cross.detach() - 0.5).long()
    keep = (left >= 0) & (left + 1 < span)
    # The mesh's side: the one holding the face's far corner.
    side = lambda q: (c[:, 0] - a[:, 0]) * (q[:, 1] - a[:, 1]) - (c[:, 1] - a[:, 1]) * (q[:, 0] - a[:, 0])  # noqa: E731
    centre = torch.zeros_like(a)
    centre[:, along], centre[:, across] = left.to(xy.dtype) + 0.5, line.to(xy.dtype) + 0.5
    left_inside = (side(centre.detach()) * side(opposite[which])) > 0
    t = torch.where(left_inside, cross - (left + 0.5), (left + 1.5) - cross)
    pixel = lambda k: b * H * W + (line * W + k if axis == 1 else k * W + line)  # noqa: E731
    near = pixel(torch.where(left_inside, left, left + 1).clamp(0, span - 1))
    far = pixel(torch.where(left_inside, left + 1, left).clamp(0, span - 1))
    edge_depth = (z[edges[which, 0]] + u.detach().clamp(0, 1) * (z[edges[which, 1]] - z[edges[which, 0]]))
    slack = SILHOUETTE_SLACK * edge_depth
    keep &= (depth[near] >= edge_depth - slack) & (depth[near] < float("inf")) & (depth[far] > edge_depth + slack)
    near, far, t = near[keep], far[keep], t[keep].clamp(0.0, 1.0)[:, None]
    colour_near, colour_far = flat[near], flat[far]
    delta = torch.zeros_like(flat).index_add(0, far, (t - 0.5).clamp_min(0.0) * (colour_near - colour_far))
    return delta.index_add(0, near, (0.5 - t).clamp_min(0.0) * (colour_far - colour_near))
