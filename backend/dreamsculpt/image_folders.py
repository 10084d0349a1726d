"""A user's folder of reference images, read into an `ImageSet` (and written, for demos).

Folder layout::

    my_chair/
        front.png  side.jpg  back.JPEG ...   images, read in order of file name
        poses.json                           optional

Images:

* PNG, JPG or JPEG (any case). They must be square: crop them to a square around the object
  (centred) first; they are resized to the run's resolution with an area filter.
* Images with transparency (RGBA, LA, palette with a transparent colour) are composited over
  white, and their alpha is the object's mask.
* Plain RGB images should have a white (or near-white: every channel at least 90%) plain
  background. The background is the region of the border's colour (within 4%) that touches
  the border, or is enclosed by the object and covers at least 1/2000 of the image (a ring's
  hole, even a sliver of it; smaller specks stay object); it becomes the mask's outside, with
  anti-aliased edges unmixed, and is painted exactly white.
  Near-white parts of the object that touch the background, or large ones, count as
  background: save such images with transparency instead.
  A warning names the images whose border is far from white; those are used as they are,
  without a mask (a "background colour" guessed from a dark border can just as well be part
  of the object).
* When every image has a mask, the set has masks and training composites renders and
  references over random solid colours (near-white haze is then seen and removed); when any
  image has none, both stay over white.
* JPEG EXIF orientation is applied, as image viewers do.

`poses.json`, when present, maps every image's file name to its camera (conventions in
`cameras.py`: Z up, azimuth from +X towards +Y, elevation above the XY plane, degrees)::

    {"front.png": {"azimuth_deg": -90, "elevation_deg": 10, "distance": 3.0, "fov_deg": 40}}

"azimuth_deg" and "elevation_deg" are required; "distance" and "fov_deg" default to
DEFAULT_DISTANCE and DEFAULT_FOV_DEG. Entries for files that are not in the folder are
ignored.

Without `poses.json` the set has no poses (the `ImageSet` pose fields are None). Such images
are taken to come from an orbit camera at distance DEFAULT_DISTANCE (3.0) with a
DEFAULT_FOV_DEG (40 degree) field of view, looking at the object centred in the frame, at an
unknown azimuth and elevation: the object should fill roughly the middle half of the image,
like the built-in library's renders.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from .errors import DreamsculptError
from .image_sets import ImageSet, plain_background_mask

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
POSES_FILE = "poses.json"
POSE_KEYS = ("azimuth_deg", "elevation_deg", "distance", "fov_deg")
#: Camera assumed for images without poses, and used for the built-in library's renders.
DEFAULT_DISTANCE = 3.0
DEFAULT_FOV_DEG = 40.0
#: A plain-RGB image whose border median is darker than this (any channel) gets a warning.
_WHITE_BORDER = 0.8


def load_image_folder(folder: str | Path, resolution: int) -> ImageSet:
    """Read a folder of reference images (and its optional poses.json).

    Returns an ImageSet with images [N, 3, resolution, resolution] in [0, 1] over white, all
    labelled with the folder's name, poses [N] each or None, and masks [N, 1, resolution,
    resolution] when every image has one (alpha or a plain near-white background), else None.
    Raises DreamsculptError, saying what to do, for anything unusable.
    """
    folder = Path(folder).expanduser()
    paths = _image_paths(folder)
    images, masks, dark = [], [], []
    for path in paths:
        image, mask = _read_image(path)
        if mask is None:
            if _border_median(image).min() < _WHITE_BORDER:
                dark.append(path.name)
            image, mask = _plain_white_background(image)
        images.append(_resize(image, resolution))
        masks.append(None if mask is None else _resize(mask, resolution))
    unmasked = [p.name for p, m in zip(paths, masks) if m is None]
    if unmasked and len(unmasked) < len(paths):
        warnings.warn(f"{len(unmasked)} of {len(paths)} reference images in {folder} ({_listed(unmasked)}) have "
                      "neither transparency nor a plain white background, so the object's outline is "
                      "unknown there: training stays on a white background for the whole set.",
                      UserWarning, stacklevel=2)
    if dark:
        warnings.warn(f"{len(dark)} of {len(paths)} reference images in {folder} ({_listed(dark)}) do not have a "
                      "white background. The reference prior compares renders over white: save them "
                      "with transparency (RGBA) or paint the background white for best results.",
                      UserWarning, stacklevel=2)
    poses = _read_poses(folder, [p.name for p in paths])
    label = folder.resolve().name or "references"
    stacked = None if unmasked else torch.stack(masks)
    return ImageSet(torch.stack(images), [label] * len(paths), *poses, masks=stacked)


def _listed(names: list[str]) -> str:
    return ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")


def _image_paths(folder: Path) -> list[Path]:
    if not folder.exists():
        raise DreamsculptError(f"The reference folder {folder} does not exist. Pass --references with "
                               "a folder of square PNG or JPG images of your object.")
    if not folder.is_dir():
        raise DreamsculptError(f"{folder} is a file, not a folder. Pass --references with the folder "
                               "that holds your PNG or JPG images.")
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        raise DreamsculptError(f"Cannot list the reference folder {folder} ({exc.strerror or exc}). "
                               "Check that you may read it.") from exc
    paths = [p for p in entries if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
    if not paths:
        raise DreamsculptError(f"The reference folder {folder} has no images. Put square images of "
                               f"your object there, with one of the extensions {', '.join(IMAGE_EXTENSIONS)} "
                               "(any case).")
    return paths


#: What PIL raises for a file it cannot decode.
IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def open_rgba(path: Path) -> np.ndarray:
    """[H, W, 4] float32 straight RGBA in [0, 1], JPEG EXIF orientation applied. Raises one of
    IMAGE_ERRORS when the file cannot be decoded."""
    with Image.open(path) as opened:
        img = ImageOps.exif_transpose(opened)
        img.load()
        return _as_rgba(img)


def _read_image(path: Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    """-> ([3, H, W] float in [0, 1] composited over white, its alpha [1, H, W] when it has
    transparency, else None)."""
    try:
        rgba = open_rgba(path)
    except IMAGE_ERRORS as exc:
        raise DreamsculptError(f"Cannot decode the image {path.name} in {path.parent} ({exc}). "
                               "Re-save it as PNG or JPEG, or remove it from the folder.") from exc
    height, width = rgba.shape[:2]
    if height != width:
        raise DreamsculptError(f"The reference image {path.name} is {width}x{height} pixels; reference "
                               "images must be square. Crop it to a square with the object centred.")
    rgba = torch.from_numpy(rgba).permute(2, 0, 1)
    rgb, alpha = rgba[:3], rgba[3:]
    return rgb * alpha + (1.0 - alpha), alpha if bool((alpha < 1.0).any()) else None


#: Plain background: 90% of the border within this (largest channel difference) of its median.
_PLAIN_BORDER = 0.04
#: ... and a mask is derived only when that median is at least this bright in every channel.
_NEAR_WHITE = 0.9
#: Regions of the background colour enclosed by the object and at least this share of the
#: image are background too. Missing one is worse than taking a white highlight for a hole:
#: under random backgrounds it asks for white density there (slivers of a ring's hole seen
#: from 30 degrees are ~15 px of 4096; at 1/200 they stayed object and the hole closed).
_MIN_ENCLOSED = 0.0005


def _plain_white_background(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[3, H, W] without transparency -> (the image with its background painted exactly white,
    the object's mask [1, H, W]), or (the image, None) when the border is not one near-white
    colour."""
    frame = torch.cat([image[:, 0], image[:, -1], image[:, :, 0], image[:, :, -1]], -1)
    colour = frame.median(-1).values
    spread = (frame - colour[:, None]).abs().amax(0)
    if colour.min() < _NEAR_WHITE or float(torch.quantile(spread, 0.9)) > _PLAIN_BORDER:
        return image, None
    mask = plain_background_mask(image, colour, tolerance=_PLAIN_BORDER, min_enclosed=_MIN_ENCLOSED)[None]
    # Over white: m * object + (1 - m) * white = image + (1 - m)(1 - background colour); the
    # background itself exactly white (its noise is no part of the object).
    over_white = (image + (1.0 - mask) * (1.0 - colour[:, None, None])).clamp(0, 1)
    return torch.where(mask > 0, over_white, torch.ones_like(image)), mask


def _as_rgba(img: Image.Image) -> np.ndarray:
    """Any PIL mode -> [H, W, 4] float32 in [0, 1]."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L"):  # 16-bit greyscale PNG
        grey = np.asarray(img, dtype=np.float32) / 65535.0
        return np.stack([grey, grey, grey, np.ones_like(grey)], -1).clip(0.0, 1.0)
    transparent = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    img = img.convert("RGBA" if transparent else "RGB")
    array = np.asarray(img, dtype=np.float32) / 255.0
    if not transparent:
        array = np.concatenate([array, np.ones_like(array[..., :1])], -1)
    return array


def _border_median(image: torch.Tensor) -> torch.Tensor:
    """[3, H, W] -> [3] median colour of the one-pixel frame around the image."""
    frame = torch.cat([image[:, 0], image[:, -1], image[:, :, 0], image[:, :, -1]], -1)
    return frame.median(-1).values


def _resize(image: torch.Tensor, size: int) -> torch.Tensor:
    """[3, H, H] -> [3, size, size]: area filter when shrinking, bilinear when enlarging."""
    if image.shape[-1] == size:
        return image
    if image.shape[-1] > size:
        out = F.interpolate(image[None], size=(size, size), mode="area")
    else:
        out = F.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False)
    return out[0].clamp(0.0, 1.0)


def _read_poses(folder: Path, names: list[str]) -> tuple[torch.Tensor | None, ...]:
    """-> (azimuth_deg, elevation_deg, distance, fov_deg), [N] each, or four Nones."""
    path = folder / POSES_FILE
    if not path.exists():
        return (None, None, None, None)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DreamsculptError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}, column "
                               f"{exc.colno}. Fix it, or delete it to use the images without poses.") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DreamsculptError(f"Cannot read {path} ({exc}). Fix it, or delete it to use the images "
                               "without poses.") from exc
    if not isinstance(data, dict):
        raise DreamsculptError(f"{path} must hold one JSON object mapping image file names to "
                               '{"azimuth_deg": ..., "elevation_deg": ..., "distance": ..., "fov_deg": ...}.')
    missing = [name for name in names if name not in data]
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise DreamsculptError(f"{path} has no entry for {shown}. Give every image a pose, or delete "
                               f"{POSES_FILE} to use the images without poses.")
    rows = [_pose_entry(path, name, data[name]) for name in names]
    return tuple(torch.tensor(column, dtype=torch.float32) for column in zip(*rows))


def _pose_entry(path: Path, name: str, entry) -> tuple[float, float, float, float]:
    if not isinstance(entry, dict):
        raise DreamsculptError(f'In {path}, the entry for {name} must be an object like '
                               '{"azimuth_deg": 30, "elevation_deg": 10, "distance": 3.0, "fov_deg": 40}.')
    defaults = {"distance": DEFAULT_DISTANCE, "fov_deg": DEFAULT_FOV_DEG}
    values = []
    for key in POSE_KEYS:
        value = entry.get(key, defaults.get(key))
        if value is None:
            raise DreamsculptError(f'In {path}, the entry for {name} has no "{key}". Add it (degrees; '
                                   "see the conventions in the documentation of poses.json).")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise DreamsculptError(f'In {path}, "{key}" of {name} is {json.dumps(value)}; it must be a '
                                   "finite number.")
        values.append(float(value))
    azimuth, elevation, distance, fov = values
    if not -90.0 <= elevation <= 90.0 or distance <= 0.0 or not 0.0 < fov < 180.0:
        raise DreamsculptError(f"In {path}, the pose of {name} is out of range: elevation_deg must be in "
                               "[-90, 90], distance positive and fov_deg in (0, 180).")
    return azimuth, elevation, distance, fov


def save_image_folder(folder: str | Path, images: torch.Tensor, names: list[str],
                          poses: dict[str, torch.Tensor] | None = None) -> Path:
    """Write images [N, 3 or 4, H, W] in [0, 1] as 8-bit PNGs (RGBA when 4 channels, alpha not
    premultiplied) and, when given, poses {key in POSE_KEYS: [N]} as poses.json. Files of the
    same names are overwritten. Returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pixels = (images.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for name, array in zip(names, pixels):
        Image.fromarray(np.ascontiguousarray(array), "RGBA" if array.shape[-1] == 4 else "RGB").save(folder / name)
    if poses is not None:
        table = {name: {key: round(float(poses[key][i]), 6) for key in POSE_KEYS}
                 for i, name in enumerate(names)}
        (folder / POSES_FILE).write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")
    return folder
