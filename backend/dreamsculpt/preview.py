"""Pictures of a field: a grid of views and a turntable GIF."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .cameras import Cameras
from .optimize import Trainer
from .rendering import Background, render


@torch.no_grad()
def render_views(trainer: Trainer, azimuths, elevation: float = 20.0, size: int | None = None) -> np.ndarray:
    """[K, S, S, 3] uint8 renders of the final field (albedo, white or learned backdrop)."""
    c, camera = trainer.config, trainer.views.camera
    size = size or max(2 * c.render.resolution, 96)
    cams = Cameras.from_orbit(torch.as_tensor(azimuths, dtype=torch.float32), elevation,
                              sum(camera.distance) / 2, sum(camera.fov_deg) / 2).to(trainer.device)
    bg = Background("white") if trainer.background.mode == "random" else trainer.background
    frames = [render(trainer.field, cams[i], size, c.render.samples_per_ray, trainer.occupancy, bg).rgb[0]
              for i in range(len(cams))]
    return (torch.stack(frames).permute(0, 2, 3, 1).clamp(0, 1) * 255).round().byte().cpu().numpy()


#: What the pictures below are taken with: azimuths (degrees) -> [K, S, S, 3] uint8 views of
#: the result at 20 degrees elevation (render_views for a field, Refiner.pictures for a mesh).
Pictures = Callable[[list[float]], np.ndarray]


#: The turntable's frames: 24 azimuths 15 degrees apart from the front (Blender's -Y camera).
TURNTABLE = [-90.0 + 15.0 * k for k in range(24)]
#: The preview's front, right, back and left views: frames of the turntable.
PREVIEW_FRAMES = (0, 6, 12, 18)


def save_pictures(pictures: Pictures, out_dir: Path) -> None:
    """turntable.gif (24 frames around the result) and preview.png (its front, right, back and
    left frames side by side), rendered once."""
    views = pictures(TURNTABLE)
    Image.fromarray(np.concatenate([views[k] for k in PREVIEW_FRAMES], axis=1)).save(out_dir / "preview.png")
    images = [Image.fromarray(v) for v in views]
    images[0].save(out_dir / "turntable.gif", save_all=True, append_images=images[1:], duration=80, loop=0)


def save_contact_sheet(images: torch.Tensor, path: Path, columns: int | None = None) -> None:
    """[K, C, S, S] images in [0, 1] -> one PNG, a grid of `columns` (default: up to 4) per row
    on white."""
    k, _, s, _ = images.shape
    columns = columns or min(k, 4)
    rows = -(-k // columns)
    sheet = torch.ones(3, rows * s, columns * s)
    for i, image in enumerate(images):
        rgb = image[:3] * image[3:] + (1 - image[3:]) if image.shape[0] == 4 else image
        r, c = divmod(i, columns)
        sheet[:, r * s:(r + 1) * s, c * s:(c + 1) * s] = rgb
    array = (sheet.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()
    Image.fromarray(array).save(path)
