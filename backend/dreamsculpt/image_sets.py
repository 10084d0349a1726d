"""Finite image sets: what the reference prior is the exact denoiser of.

Two sources fill an `ImageSet`: the built-in library of analytic shapes (`shapes/library.py`) and a
user's folder of images with an optional `poses.json` (`load_image_folder`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class ImageSet:
    """N square RGB images with their set labels and (optionally) their camera poses.

    images: [N, 3, H, W] float in [0, 1], composited over a white background.
    labels: N strings naming the set each image belongs to (e.g. "red cube").
    azimuth_deg, elevation_deg, distance, fov_deg: [N] each, or all None when the poses are
    unknown (see cameras.py for the conventions).
    """

    images: torch.Tensor
    labels: list[str]
    azimuth_deg: torch.Tensor | None = None
    elevation_deg: torch.Tensor | None = None
    distance: torch.Tensor | None = None
    fov_deg: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def has_poses(self) -> bool:
        return self.azimuth_deg is not None

    @property
    def resolution(self) -> int:
        return self.images.shape[-1]

    def select(self, mask: torch.Tensor) -> "ImageSet":
        """The images where the [N] boolean mask is true."""
        pick = lambda t: None if t is None else t[mask]  # noqa: E731
        labels = [lab for lab, keep in zip(self.labels, mask.tolist()) if keep]
        return ImageSet(self.images[mask], labels, pick(self.azimuth_deg), pick(self.elevation_deg),
                        pick(self.distance), pick(self.fov_deg))

    def resized(self, size: int) -> "ImageSet":
        """The same set at `size` x `size` pixels (area filter when shrinking)."""
        if size == self.resolution:
            return self
        mode = "area" if size < self.resolution else "bilinear"
        kwargs = {} if mode == "area" else {"align_corners": False}
        images = F.interpolate(self.images, size=(size, size), mode=mode, **kwargs).clamp(0, 1)
        return ImageSet(images, list(self.labels), self.azimuth_deg, self.elevation_deg,
                        self.distance, self.fov_deg)
