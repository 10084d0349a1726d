"""What a scene walk asks of its two models, so real ones (Stable Diffusion inpainting, a
transformers depth model) and the closed-form ones of a posed RGB-D set are interchangeable.

Images are [3, H, W] float in [0, 1]; masks [H, W] bool; cameras a length-1 `Pinhole` (the
frame's camera in the world, Blender axes, metres). Closed-form models use the camera; image
models ignore it.
"""

from __future__ import annotations

from typing import Protocol

import torch

from ..cameras import Pinhole


class Inpainter(Protocol):
    #: One line for run.json ("Stable Diffusion inpainting (stabilityai/...)").
    description: str
    #: The model it loaded (hub id, folder or file), None for a closed-form prior.
    model: str | None

    def inpaint(self, image: torch.Tensor, hole: torch.Tensor, camera: Pinhole, prompt: str,
                generator: torch.Generator) -> torch.Tensor:
        """`image` [3, H, W] with `hole` [H, W] (True: to be made; the values there are
        meaningless) -> [3, H, W]: the known pixels exactly as given, the holes filled."""
        ...


class DepthEstimator(Protocol):
    description: str
    model: str | None

    def disparity(self, image: torch.Tensor, camera: Pinhole) -> torch.Tensor:
        """[3, H, W] -> [H, W] inverse depth up to an unknown positive scale and a shift
        (a metric model's 1 / depth is one such). Positive where it is finite."""
        ...
