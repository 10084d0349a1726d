"""RGB-D frames on disk: what a scene walk writes (frames/0000.png, depth/0000.png) and what
`--prior references` reads (frames.json).

Depth is view depth (along the camera's viewing axis) in metres; on disk a 16-bit PNG in
millimetres (0: no depth, so at most 65.5 m) or a float32 .npy in metres (inf or 0: none).

frames.json is a list of {"image": "a.png", "depth": "a_depth.png", "camera": CAMERA}, paths
relative to the folder, CAMERA a Blender camera as `--camera` takes it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..cameras import Pinhole
from ..errors import DreamsculptError
from ..picture import camera_from_spec
from .room_prior import RGBDFrame, RGBDSet

MAX_DEPTH_MM = 65535


def save_rgb(rgb: torch.Tensor, path: Path) -> None:
    """[3, H, W] in [0, 1] -> an 8-bit PNG."""
    array = (rgb.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    Image.fromarray(array).save(path)


def save_depth(depth: torch.Tensor, path: Path) -> None:
    """[H, W] metres (inf: none) -> a 16-bit PNG in millimetres, 0 where there is none."""
    mm = torch.where(torch.isfinite(depth), (depth * 1000).round(), torch.zeros_like(depth))
    Image.fromarray(mm.clamp(0, MAX_DEPTH_MM).cpu().numpy().astype(np.uint16)).save(path)


def read_depth(path: Path, size: tuple[int, int] | None = None) -> torch.Tensor:
    """A depth file -> [H, W] metres, inf where it has none. `size` (width, height): what it
    must measure, or a DreamsculptError saying so."""
    try:
        if path.suffix.lower() == ".npy":
            array = np.load(path, allow_pickle=False).astype(np.float32)
        else:
            with Image.open(path) as image:
                if image.mode not in ("I;16", "I;16B", "I", "L"):
                    raise DreamsculptError(f"The depth image {path} is {image.mode}; save depth as a 16-bit grey "
                                           "PNG in millimetres, or a float32 .npy in metres.")
                array = np.asarray(image, dtype=np.float32) / 1000.0
                array[array == 0] = np.inf
    except (OSError, ValueError) as exc:
        raise DreamsculptError(f"Cannot read the depth file {path} ({exc}). Save depth as a 16-bit grey PNG in "
                               "millimetres, or a float32 .npy in metres.") from None
    if array.ndim != 2:
        raise DreamsculptError(f"The depth file {path} has shape {array.shape}; it must be one channel, H x W.")
    array[~np.isfinite(array) | (array <= 0)] = np.inf
    if size is not None and (array.shape[1], array.shape[0]) != tuple(size):
        raise DreamsculptError(f"The depth file {path} is {array.shape[1]}x{array.shape[0]} pixels but its image "
                               f"is {size[0]}x{size[1]}: render both at the same size.")
    return torch.from_numpy(array)


def read_rgb(path: Path) -> torch.Tensor:
    """An image file -> [3, H, W] in [0, 1] (alpha dropped: a scene has no background)."""
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    except (OSError, ValueError) as exc:
        raise DreamsculptError(f"Cannot read the image {path} ({exc}). Use a PNG, JPEG or WebP file.") from None
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


class ReferenceFrames(RGBDSet):
    """The user's posed RGB-D frames (frames.json), read when first asked for."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder).expanduser()
        listing = self.folder / "frames.json"
        if not listing.is_file():
            raise DreamsculptError(f"{self.folder} has no frames.json. It must list the frames: [{{\"image\": "
                                   "\"a.png\", \"depth\": \"a_depth.png\", \"camera\": CAMERA}, ...].")
        try:
            entries = json.loads(listing.read_text())
        except (OSError, ValueError) as exc:
            raise DreamsculptError(f"{listing} is not valid JSON ({exc}).") from None
        if not isinstance(entries, list) or not entries:
            raise DreamsculptError(f"{listing} must be a non-empty list of frames.")
        self.entries = [self._checked(entry, k) for k, entry in enumerate(entries)]
        cameras = [self.camera(k) for k in range(len(self.entries))]
        super().__init__(torch.stack([c.position[0] for c in cameras]), torch.stack([c.forward[0] for c in cameras]))

    def _checked(self, entry, k: int) -> dict:
        where = f"{self.folder / 'frames.json'}, frame {k + 1}"
        if not isinstance(entry, dict) or not {"image", "depth", "camera"} <= set(entry):
            raise DreamsculptError(f"{where}: each frame needs image, depth and camera.")
        for key in ("image", "depth"):
            if not (self.folder / str(entry[key])).is_file():
                raise DreamsculptError(f"{where}: {entry[key]} does not exist in {self.folder}.")
        with Image.open(self.folder / str(entry["image"])) as image:
            size = image.size
        depth = self.folder / str(entry["depth"])
        if depth.suffix.lower() == ".npy":
            shape = np.load(depth, mmap_mode="r", allow_pickle=False).shape
            depth_size = (shape[1], shape[0]) if len(shape) == 2 else shape
        else:
            with Image.open(depth) as image:
                depth_size = image.size
        if tuple(depth_size) != tuple(size):
            raise DreamsculptError(f"{where}: the depth {entry['depth']} is {depth_size[0]}x{depth_size[1]} pixels but "
                                   f"the image {entry['image']} is {size[0]}x{size[1]}: save both at the same size.")
        return {**entry, "size": size}

    def camera(self, index: int) -> Pinhole:
        entry = self.entries[index]
        width, height = entry["size"]
        real = camera_from_spec(entry["camera"], width, height)
        return Pinhole(real.c2w[None], torch.tensor([real.focal]), torch.tensor([[real.cx, real.cy]]), width, height)

    def frame(self, index: int) -> RGBDFrame:
        entry = self.entries[index]
        rgb = read_rgb(self.folder / str(entry["image"]))
        depth = read_depth(self.folder / str(entry["depth"]), tuple(entry["size"]))
        return RGBDFrame(rgb, depth, self.camera(index))
