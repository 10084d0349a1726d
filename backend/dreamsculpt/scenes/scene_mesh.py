"""The scene a walk builds: a triangle mesh with vertex colours, rendered from the next camera,
extended by the pixels it did not cover, kept within a face budget.

    render(scene, camera) -> rgb, depth, coverage
    holes: what it does not cover; tiny holes filled classically (nearest known pixel), as
        SceneScape and Text2Room do, the rest left to the inpainter
    frame_triangles: the new pixels (and the seam to the known ones around them) unprojected
        into a pixel grid of triangles; triangles across a depth step or seen at a grazing
        angle are dropped (Text2Room's rules)
    bounded: decimated when the walk outgrows its face budget
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from ..cameras import Pinhole
from ..rasterizer import rasterize, to_screen

#: Triangles whose normal is nearer than this (|cos|) to perpendicular to the view are dropped.
MIN_VIEW_COS = 0.1


@dataclass
class TriangleSoup:
    """Triangles with a colour per vertex. vertices: [V, 3] metres; faces: [F, 3] int64;
    colours: [V, 3] in [0, 1]."""

    vertices: torch.Tensor
    faces: torch.Tensor
    colours: torch.Tensor

    @staticmethod
    def empty() -> "TriangleSoup":
        return TriangleSoup(torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.int64), torch.zeros(0, 3))

    @staticmethod
    def join(parts: list["TriangleSoup"]) -> "TriangleSoup":
        offsets = torch.tensor([0] + [len(p.vertices) for p in parts]).cumsum(0)
        return TriangleSoup(torch.cat([p.vertices for p in parts]),
                            torch.cat([p.faces + int(o) for p, o in zip(parts, offsets)]),
                            torch.cat([p.colours for p in parts]))


@dataclass
class MeshRender:
    """rgb: [B, 3, H, W] (0 where nothing); depth: [B, H, W] view depth, inf where nothing;
    coverage: [B, H, W] bool."""

    rgb: torch.Tensor
    depth: torch.Tensor
    coverage: torch.Tensor


@torch.no_grad()
def render_mesh(mesh: TriangleSoup, cameras: Pinhole) -> MeshRender:
    """The nearest triangle's interpolated colour and depth at every pixel centre (both sides
    of a triangle are drawn: a surface seen from behind still hides what is behind it)."""
    B, H, W = len(cameras), cameras.height, cameras.width
    if len(mesh.faces) == 0:
        return MeshRender(torch.zeros(B, 3, H, W), torch.full((B, H, W), float("inf")),
                          torch.zeros(B, H, W, dtype=torch.bool))
    raster = rasterize(to_screen(mesh.vertices, cameras), mesh.faces, cull_back=False)
    rgb = raster.image(raster.interpolate(mesh.colours), 0.0).permute(0, 3, 1, 2)
    depth = raster.image(raster.depth[:, None], float("inf"))[..., 0]
    return MeshRender(rgb.clamp(0, 1), depth, raster.face >= 0)


# --- Holes ------------------------------------------------------------------------------------

@dataclass
class Holes:
    """What a frame must make. small: [H, W] bool, tiny holes already filled in `rgb` and
    `depth` from their nearest known pixel; large: [H, W] bool, for the inpainter and the depth
    model. rgb: [3, H, W], depth: [H, W] the render with the small holes filled."""

    small: torch.Tensor
    large: torch.Tensor
    rgb: torch.Tensor
    depth: torch.Tensor


def find_holes(render: MeshRender, max_small: int) -> Holes:
    """Split what the render (one view) leaves uncovered into holes of at most `max_small`
    pixels (cracks between earlier frames' triangles, specks) and the rest."""
    uncovered = ~render.coverage[0].numpy()
    labels, count = ndimage.label(uncovered)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    small = uncovered & (sizes[labels] <= max_small) & (labels > 0)
    rgb, depth = render.rgb[0].clone(), render.depth[0].clone()
    if small.any() and (~uncovered).any():
        _, (rows, cols) = ndimage.distance_transform_edt(uncovered, return_indices=True)
        r, c = torch.from_numpy(rows[small]), torch.from_numpy(cols[small])
        where = torch.from_numpy(small)
        rgb[:, where] = rgb[:, r, c]
        depth[where] = depth[r, c]
    elif small.any():                               # nothing known to fill from
        small[:] = False
    large = torch.from_numpy(uncovered & ~small)
    return Holes(torch.from_numpy(small), large, rgb, depth)


def dilated(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """[H, W] bool grown by `pixels` (a square neighbourhood)."""
    if pixels <= 0:
        return mask
    grown = torch.nn.functional.max_pool2d(mask[None, None].float(), 2 * pixels + 1, 1, pixels)
    return grown[0, 0] > 0


# --- New geometry -----------------------------------------------------------------------------

def frame_triangles(depth: torch.Tensor, rgb: torch.Tensor, camera: Pinhole, new: torch.Tensor,
                    min_view_cos: float = MIN_VIEW_COS) -> TriangleSoup:
    """Triangles over the pixel grid of one frame that touch a `new` [H, W] pixel: vertices at
    the pixel centres unprojected by `depth` [H, W] (view depth, metres; inf: nothing there),
    coloured by `rgb` [3, H, W]. Triangles touching known pixels stitch the new surface to the
    scene where the known depth is the scene's own.

    Dropped: triangles with a corner without depth; stretched triangles, whose corners' depths
    differ more than any surface seen at the grazing limit could over two pixels (across a depth
    step, 2 / (focal * min_view_cos)); triangles seen at a grazing angle (|n . v| below
    `min_view_cos`)."""
    H, W = depth.shape
    points = camera.unproject(torch.where(torch.isfinite(depth), depth, torch.zeros_like(depth))[None])[0]
    index = torch.arange(H * W).reshape(H, W)
    a, b, c, d = index[:-1, :-1], index[1:, :-1], index[1:, 1:], index[:-1, 1:]     # quad corners, CCW on screen
    faces = torch.cat([torch.stack([a, b, c], -1).reshape(-1, 3), torch.stack([a, c, d], -1).reshape(-1, 3)])
    flat_depth, flat_new = depth.reshape(-1), new.reshape(-1)
    corner_depth = flat_depth[faces]
    keep = flat_new[faces].any(1) & torch.isfinite(corner_depth).all(1) & (corner_depth > 0).all(1)
    faces, corner_depth = faces[keep], corner_depth[keep]
    limit = 1.0 + 2.0 / (float(camera.focal[0]) * min_view_cos)
    keep = corner_depth.amax(1) <= limit * corner_depth.amin(1)
    tri = points.reshape(-1, 3)[faces]
    normal = torch.nn.functional.normalize(torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), dim=-1)
    view = torch.nn.functional.normalize(tri.mean(1) - camera.position[0], dim=-1)
    keep &= (normal * view).sum(-1).abs() >= min_view_cos
    faces = faces[keep]
    used, faces = torch.unique(faces, return_inverse=True)
    return TriangleSoup(points.reshape(-1, 3)[used], faces.reshape(-1, 3),
                        rgb.reshape(3, -1).T[used].float().clamp(0, 1))


# --- Keeping it bounded -----------------------------------------------------------------------

def bounded(mesh: TriangleSoup, max_faces: int) -> TriangleSoup:
    """The mesh decimated to about half of `max_faces` once it has more than `max_faces`
    (fast-simplification's quadric decimation; each kept vertex keeps the colour of the
    nearest original one), so a long walk's mesh grows in steps, not without bound."""
    if len(mesh.faces) <= max_faces:
        return mesh
    import fast_simplification
    from scipy.spatial import cKDTree

    vertices, faces = mesh.vertices.numpy().astype(np.float32), mesh.faces.numpy().astype(np.int64)
    reduction = 1.0 - 0.5 * max_faces / len(faces)
    points, kept = fast_simplification.simplify(vertices, faces, target_reduction=reduction)
    _, nearest = cKDTree(vertices).query(points)
    return TriangleSoup(torch.from_numpy(np.asarray(points, dtype=np.float32)),
                        torch.from_numpy(np.asarray(kept, dtype=np.int64)), mesh.colours[torch.from_numpy(nearest)])
