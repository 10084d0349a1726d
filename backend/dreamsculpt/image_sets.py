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
                          soft: float = 0.08) -> torch.Tensor:
    """[3, H, W] an image on a plain background of `colour` [3] -> the object's mask [H, W].

    The background is the region within `tolerance` (largest channel difference) of the colour
    that touches the frame, so parts of the object of that colour stay object where they are
    enclosed by it. Pixels next to the background fade in over the next `soft` of difference
    (anti-aliased edges); the rest is object.
    """
    from scipy import ndimage

    distance = (rgb - colour.reshape(3, 1, 1)).abs().amax(0)
    labels, _ = ndimage.label((distance <= tolerance).numpy())
    border = set(labels[0]) | set(labels[-1]) | set(labels[:, 0]) | set(labels[:, -1])
    background = torch.from_numpy(np.isin(labels, [b for b in border if b]))
    edge = ((distance - tolerance) / soft).clamp(0, 1)
    near = torch.from_numpy(ndimage.binary_dilation(background.numpy(), iterations=2))
    return torch.where(background, torch.zeros_like(edge), torch.where(near, edge, torch.ones_like(edge)))
