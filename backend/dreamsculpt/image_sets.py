"""Finite image sets: what the reference prior is the exact denoiser of.

Two sources fill an `ImageSet`: the built-in library of analytic shapes (`shapes/library.py`) and a
user's folder of images with an optional `poses.json` (`load_image_folder`).

A set may know each image's object mask (its coverage). The reference prior then composites
its images over any solid background colour (`over`), so training can use random backgrounds:
over white alone, near-white density is invisible and never removed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class ImageSet:
    """N square RGB images with their set labels and (optionally) their camera poses.

    images: [N, 3, H, W] float in [0, 1], composited over a white background.
    labels: N strings naming the set each image belongs to (e.g. "red cube").
    azimuth_deg, elevation_deg, distance, fov_deg: [N] each, or all None when the poses are
    unknown (see cameras.py for the conventions).
    masks: [N, 1, H, W] coverage of the object in [0, 1] (1 where the pixel is all object), or
    None when unknown: images[i] = m * colour + (1 - m) * white.
    """

    images: torch.Tensor
    labels: list[str]
    azimuth_deg: torch.Tensor | None = None
    elevation_deg: torch.Tensor | None = None
    distance: torch.Tensor | None = None
    fov_deg: torch.Tensor | None = None
    masks: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def has_poses(self) -> bool:
        return self.azimuth_deg is not None

    @property
    def has_masks(self) -> bool:
        return self.masks is not None

    @property
    def resolution(self) -> int:
        return self.images.shape[-1]

    def select(self, mask: torch.Tensor) -> "ImageSet":
        """The images where the [N] boolean mask is true."""
        pick = lambda t: None if t is None else t[mask]  # noqa: E731
        labels = [lab for lab, keep in zip(self.labels, mask.tolist()) if keep]
        return ImageSet(self.images[mask], labels, pick(self.azimuth_deg), pick(self.elevation_deg),
                        pick(self.distance), pick(self.fov_deg), pick(self.masks))

    def resized(self, size: int) -> "ImageSet":
        """The same set at `size` x `size` pixels (area filter when shrinking)."""
        if size == self.resolution:
            return self
        mode = "area" if size < self.resolution else "bilinear"
        kwargs = {} if mode == "area" else {"align_corners": False}
        resize = lambda t: F.interpolate(t, size=(size, size), mode=mode, **kwargs).clamp(0, 1)  # noqa: E731
        # Compositing is linear, so resized images are still the resized masks over white.
        masks = None if self.masks is None else resize(self.masks)
        return ImageSet(resize(self.images), list(self.labels), self.azimuth_deg, self.elevation_deg,
                        self.distance, self.fov_deg, masks)

    def over(self, colour: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] the images composited over the solid `colour` [3] instead of white:
        x - (1 - m)(1 - colour). Needs masks."""
        if self.masks is None:
            raise ValueError("this image set has no masks: it is known over white only")
        return self.images - (1.0 - self.masks) * (1.0 - colour.reshape(1, 3, 1, 1))


def plain_background_mask(rgb: torch.Tensor, colour: torch.Tensor, tolerance: float = 0.04,
                          soft: float = 0.08, min_enclosed: float | None = None) -> torch.Tensor:
    """[3, H, W] an image on a plain background of `colour` [3] -> the object's mask [H, W].

    The background is the region within `tolerance` (largest channel difference) of the colour
    that touches the frame, so parts of the object of that colour stay object where they are
    enclosed by it. With `min_enclosed` (a share of the image), enclosed regions of the colour
    at least that large are background too: a ring's hole, the space between a table's legs
    (smaller ones, like highlights, stay object). Pixels within 2 of the background are
    anti-aliased edges, x = a f + (1 - a) colour with f the colour of the nearest pixel inside
    the object: a by least squares. (Where f is within `soft` of the background colour, a
    ramps from 0 to 1 over `soft` of difference instead.) The rest is object.
    """
    from scipy import ndimage

    distance = (rgb - colour.reshape(3, 1, 1)).abs().amax(0)
    labels, count = ndimage.label((distance <= tolerance).numpy())
    chosen = set(labels[0]) | set(labels[-1]) | set(labels[:, 0]) | set(labels[:, -1])
    if min_enclosed is not None:
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        chosen |= set(np.nonzero(sizes >= min_enclosed * labels.size)[0].tolist())
    background = np.isin(labels, [b for b in chosen if b])
    edge = ndimage.binary_dilation(background, iterations=2) & ~background
    inside = ~background & ~edge
    alpha = ((distance - tolerance) / soft).clamp(0, 1)
    if inside.any():
        _, (rows, cols) = ndimage.distance_transform_edt(~inside, return_indices=True)
        towards = rgb - colour.reshape(3, 1, 1)                                # x - colour
        span = rgb[:, torch.from_numpy(rows), torch.from_numpy(cols)] - colour.reshape(3, 1, 1)  # f - colour
        unmixed = ((towards * span).sum(0) / span.square().sum(0).clamp_min(1e-6)).clamp(0, 1)
        alpha = torch.where(span.abs().amax(0) > soft, unmixed, alpha)
    alpha = torch.where(torch.from_numpy(edge), alpha, torch.ones_like(alpha))
    return alpha.masked_fill(torch.from_numpy(background), 0.0)
