"""The built-in shapes as an image-conditioned, view-conditioned prior (offline Zero-1-to-3).

Zero-1-to-3 models p(view at pose B | image at pose A). Over the built-in library the same
conditional is known in closed form: the shapes consistent with the reference image, seen from
pose B. One image cannot tell size from distance, nor where along the line of sight the
object sits, so each shape is first *fitted* to the reference: scale and offset across the
view until its silhouette's extent matches the mask, and its albedo by least squares. The
best-fitting shape (silhouette IoU) is the posterior's mode; its renders from the library's
72 standard views, plus the reference itself at its own pose, are the image set whose exact
denoiser (`ClosedFormPrior`) guides the novel views. An image that no shape explains is an
error, not a silent guess.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..cameras import Cameras, focal_pixels
from ..errors import DreamsculptError
from ..image_sets import ImageSet
from ..picture import PictureView
from .geometry import SHAPES
from .library import LIBRARY_AZIMUTHS_DEG, LIBRARY_ELEVATIONS_DEG
from .tracing import render_shape

FIT_SIZE = 64          # pixels of the silhouette fit
MIN_IOU = 0.5          # below this no built-in shape explains the reference


@dataclass
class ShapeFit:
    shape: str
    scale: float
    offset: tuple[float, float, float]
    iou: float
    albedo: tuple[float, float, float]

    def describe(self) -> str:
        albedo = ", ".join(f"{c:.2f}" for c in self.albedo)
        return f"{self.shape} fitted to the reference (silhouette IoU {self.iou:.2f}, scale {self.scale:.2f}, albedo {albedo})"


def _extent(mask: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Centre (column, row) of the bounding box of mask > 0.5 and its half-size (pixels)."""
    rows, cols = torch.nonzero(mask > 0.5, as_tuple=True)
    lo = torch.stack([cols.min(), rows.min()]).float()
    hi = torch.stack([cols.max(), rows.max()]).float() + 1.0
    return 0.5 * (lo + hi), float((hi - lo).max()) / 2


def fit_shape(shape: str, view: PictureView, rounds: int = 4) -> ShapeFit:
    """Scale and move `shape` so its silhouette from the reference camera matches the mask."""
    rgb, mask = view.resized(FIT_SIZE)
    target = mask[0]
    want_centre, want_half = _extent(target)
    cam = view.camera
    focal = float(focal_pixels(cam.fov_deg, FIT_SIZE)[0])
    right, up = cam.c2w[0, :3, 0], cam.c2w[0, :3, 1]
    distance = float(cam.distance[0])
    scale, offset = 1.0, torch.zeros(3)
    for _ in range(rounds):
        cover = render_shape(shape, cam, FIT_SIZE, scale=scale, offset=tuple(offset.tolist())).coverage[0]
        if not (cover > 0.5).any():
            scale *= 2.0
            continue
        centre, half = _extent(cover)
        scale *= want_half / max(half, 0.5)
        d = (want_centre - centre) / focal * distance        # image-plane shift at the object's depth
        offset = offset + d[0] * right - d[1] * up
    render = render_shape(shape, cam, FIT_SIZE, scale=scale, offset=tuple(offset.tolist()))
    cover = render.coverage[0]
    a, b = cover > 0.5, target > 0.5
    iou = float((a & b).sum()) / max(float((a | b).sum()), 1.0)
    # pixel = albedo * shaded + (1 - coverage): least squares for the albedo, per channel.
    shaded = render.shaded[0]
    albedo = ((rgb - (1.0 - cover)) * shaded).sum((1, 2)) / (shaded.square().sum() + 1e-6)
    return ShapeFit(shape, scale, tuple(offset.tolist()), iou, tuple(albedo.clamp(0, 1).tolist()))


def best_fit(view: PictureView) -> ShapeFit:
    fits = sorted((fit_shape(s, view) for s in SHAPES), key=lambda f: -f.iou)
    best = fits[0]
    if best.iou < MIN_IOU:
        tried = ", ".join(f"{f.shape} {f.iou:.2f}" for f in fits)
        raise DreamsculptError(
            f"The reference image does not look like any built-in shape (silhouette IoU: {tried}; "
            f"{MIN_IOU} needed). The built-in prior only knows {', '.join(SHAPES)}: use --prior zero123 "
            "with a Zero123 model for other objects.")
    return best


def render_fit(fit: ShapeFit, cameras: Cameras, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, 3, S, S] renders over white of the fitted shape with its albedo, [B, 1, S, S] its
    coverage)."""
    render = render_shape(fit.shape, cameras, resolution, scale=fit.scale, offset=fit.offset)
    albedo = torch.tensor(fit.albedo).reshape(1, 3, 1, 1)
    return render.colourise(albedo), render.coverage[:, None]


def conditioned_set(view: PictureView, fit: ShapeFit, resolution: int,
                    cameras: Cameras | None = None) -> ImageSet:
    """The fitted shape from `cameras` (default: the 72 standard views at the reference's
    distance and field of view) plus the reference itself at its pose, with their masks (the
    fitted shape's coverage, the picture's mask)."""
    if cameras is None:
        az, el = torch.meshgrid(torch.tensor(LIBRARY_AZIMUTHS_DEG, dtype=torch.float32),
                                torch.tensor(LIBRARY_ELEVATIONS_DEG, dtype=torch.float32), indexing="xy")
        cameras = Cameras.from_orbit(az.reshape(-1), el.reshape(-1), view.camera.distance, view.camera.fov_deg)
    rendered, coverage = render_fit(fit, cameras, resolution)
    rgb, mask = view.resized(resolution)
    cat = lambda a, b: torch.cat([a, b])  # noqa: E731
    ref = view.camera
    return ImageSet(cat(rendered, rgb[None]), ["reference"] * (len(rendered) + 1),
                    cat(cameras.azimuth_deg, ref.azimuth_deg), cat(cameras.elevation_deg, ref.elevation_deg),
                    cat(cameras.distance, ref.distance), cat(cameras.fov_deg, ref.fov_deg),
                    cat(coverage, mask[None]))

