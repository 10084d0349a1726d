"""One reference image and the camera that took it -> a square view in the canonical frame.

The image kinds (image_to_3d, novel_views) reconstruct or imagine the object in a canonical
frame: world axes (Blender's, Z up), the object at the origin inside [-1, 1]^3. This module
gets the reference view there, exactly, whatever camera took the picture:

1. The object's mask is the image's alpha, or, for an opaque image, what differs from a plain
   background. No object, an object cut by the frame, or a busy background is an error.
2. A *virtual camera* shares the real camera's centre, looks through the centre of the
   object's silhouette with world +Z up, and is zoomed so the object fills `fill` of a square
   frame. Two pinhole cameras with one centre differ by a rotation, so the virtual image is an
   exact resampling (a homography) of the real one, whatever the lens, shift or roll.
3. The virtual camera is an orbit camera of the canonical frame (azimuth, elevation, distance
   chosen so the object's half-extent is about HALF_EXTENT units), and
   `placement` (canonical -> world: a uniform scale and a translation, no rotation) maps the
   canonical reconstruction back so that, seen from the real camera, it lines up with the
   picture. One image cannot tell size from distance: `depth` (camera to object centre, world
   units) fixes the scale; without it one canonical unit is one world unit.

Real cameras are Blender's (`CameraSpec`); without one an orbit camera (azimuth, elevation,
field of view of the longer side) is assumed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from .cameras import Cameras, orbit_c2w
from .config import ImageConfig
from .errors import DreamsculptError
from .image_sets import plain_background_mask

MIN_SIDE, MAX_SIDE = 32, 4096          # accepted image sizes, pixels
MIN_OBJECT_PIXELS = 64                 # fewer mask pixels than this: "no object"
HALF_EXTENT = 0.6                      # canonical half-size the object's silhouette is scaled to
MIN_DISTANCE = 2.2                     # the canonical camera stays outside the [-1, 1]^3 box ...
MAX_HALF_ANGLE_TAN = 0.43              # ... so wider objects (> ~23 degrees half-angle) are refused
NOMINAL_DISTANCE = 3.0                 # orbit camera of an image without camera data
SENSOR_FITS = ("AUTO", "HORIZONTAL", "VERTICAL")


@dataclass
class RealCamera:
    """A pinhole camera of a W x H image: c2w [4, 4] (orthonormal, OpenGL frame), focal length
    and principal point in pixels (principal point measured from the top-left corner)."""

    c2w: torch.Tensor
    focal: float
    cx: float
    cy: float
    width: int
    height: int


@dataclass
class PictureView:
    """The reference in the canonical frame.

    rgba: [4, S, S] straight colour and mask, resampled into the virtual camera.
    camera: the canonical orbit camera of that view (length 1).
    placement: [4, 4] canonical -> world. world_c2w: [4, 4] the virtual camera in the world.
    """

    rgba: torch.Tensor
    camera: Cameras
    placement: torch.Tensor
    world_c2w: torch.Tensor
    source: str = ""

    @property
    def rgb(self) -> torch.Tensor:
        """[3, S, S] composited over white (what the white-background priors compare with)."""
        alpha = self.rgba[3:]
        return self.rgba[:3] * alpha + (1.0 - alpha)

    @property
    def mask(self) -> torch.Tensor:
        return self.rgba[3:]

    def resized(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(rgb over white [3, s, s], mask [1, s, s]) at `size` pixels, area-filtered."""
        premultiplied = torch.cat([self.rgba[:3] * self.rgba[3:], self.rgba[3:]])[None]
        if premultiplied.shape[-1] != size:
            mode = "area" if size < premultiplied.shape[-1] else "bilinear"
            premultiplied = F.interpolate(premultiplied, size=(size, size), mode=mode)
        colour, alpha = premultiplied[0, :3], premultiplied[0, 3:].clamp(0, 1)
        return (colour + (1.0 - alpha)).clamp(0, 1), alpha

    def to_world(self, c2w: torch.Tensor) -> torch.Tensor:
        """Canonical camera-to-world matrices [..., 4, 4] -> Blender camera matrices in the world
        (rotation kept, position mapped by the placement)."""
        out = c2w.clone()
        out[..., :3, 3] = c2w[..., :3, 3] * self.placement[0, 0] + self.placement[:3, 3]
        return out


# --- Reading -----------------------------------------------------------------------------------

def read_image(path: str | Path) -> tuple[torch.Tensor, bool]:
    """-> ([4, H, W] float straight RGBA in [0, 1], whether the file has transparency)."""
    from .image_folders import IMAGE_ERRORS, open_rgba

    path = Path(path)
    if not path.is_file():
        raise DreamsculptError(f"The image {path} does not exist. Pass a PNG, JPG or WebP file.")
    try:
        rgba = open_rgba(path)
    except IMAGE_ERRORS as exc:
        raise DreamsculptError(f"Cannot read {path.name} as an image ({exc}). Pass a PNG, JPG or WebP "
                               "file (a render with a transparent background works best).") from exc
    height, width = rgba.shape[:2]
    if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
        raise DreamsculptError(f"The image {path.name} is {width}x{height} pixels; use one between "
                               f"{MIN_SIDE} and {MAX_SIDE} pixels a side.")
    rgba = torch.from_numpy(rgba).permute(2, 0, 1).contiguous()
    return rgba, bool((rgba[3] < 1.0).any())


def object_mask(rgba: torch.Tensor, has_alpha: bool, name: str = "the image") -> torch.Tensor:
    """[4, H, W] -> soft mask [H, W] in [0, 1] of the object; raises when there is none.

    With transparency the alpha is the mask. An opaque image needs a plain background: the
    one-pixel frame must be one colour (within 8%), and the object is what differs from it."""
    rgb = rgba[:3]
    if has_alpha:
        mask = rgba[3]
    else:
        frame = torch.cat([rgb[:, 0], rgb[:, -1], rgb[:, :, 0], rgb[:, :, -1]], 1)   # [3, P]
        background = frame.median(1).values
        spread = (frame - background[:, None]).abs().amax(0)
        if torch.quantile(spread, 0.9) > 0.08:
            raise DreamsculptError(
                f"{name} has no transparency and no plain background, so the object cannot be told "
                "apart from it. Render with a transparent film (Render Properties > Film > "
                "Transparent) and save as PNG with alpha, or remove the background first.")
        distance = (rgb - background[:, None, None]).abs().amax(0)
        mask = ((distance - 0.04) / 0.08).clamp(0, 1)
    solid = mask > 0.5
    count = int(solid.sum())
    if count < MIN_OBJECT_PIXELS:
        what = "its alpha is empty" if has_alpha else "nothing differs from the background"
        raise DreamsculptError(f"No object found in {name}: {what}. Frame an object in the camera view "
                               "(and make sure it is visible to renders), or pick another image.")
    if count > 0.9 * solid.numel():
        raise DreamsculptError(f"The object fills {100 * count / solid.numel():.0f}% of {name}, leaving no "
                               "background to tell its outline. Zoom out so the whole object is inside "
                               "the frame with some space around it.")
    border = torch.cat([solid[0], solid[-1], solid[:, 0], solid[:, -1]])
    if border.float().mean() > 0.02:
        raise DreamsculptError(
            f"The object is cut off by the edge of {name} ({int(border.sum())} border pixels belong to it). "
            "Frame the whole object with a margin; hide ground planes and backdrops from the render "
            "(Object Properties > Visibility) so only the object is left.")
    return mask


def camera_from_spec(spec: dict, width: int, height: int) -> RealCamera:
    """A Blender camera (see CameraSpec) seeing a width x height image -> RealCamera."""
    try:
        matrix = torch.tensor(spec["matrix_world"], dtype=torch.float64)
        lens = float(spec["lens"])
        sensor_width = float(spec.get("sensor_width", 36.0))
        sensor_height = float(spec.get("sensor_height", 24.0))
        fit = str(spec.get("sensor_fit", "AUTO")).upper()
        shift_x, shift_y = float(spec.get("shift_x", 0.0)), float(spec.get("shift_y", 0.0))
    except (KeyError, TypeError, ValueError) as exc:
        raise DreamsculptError(f"The camera data is incomplete or malformed ({exc}); it needs matrix_world "
                               "(4x4), lens, sensor_width, sensor_height, sensor_fit, shift_x, shift_y.") from exc
    if matrix.shape != (4, 4) or not torch.isfinite(matrix).all():
        raise DreamsculptError("The camera's matrix_world must be a 4x4 matrix of finite numbers.")
    if lens <= 0 or sensor_width <= 0 or sensor_height <= 0 or fit not in SENSOR_FITS:
        raise DreamsculptError(f"The camera's lens and sensor size must be positive and sensor_fit one of "
                               f"{', '.join(SENSOR_FITS)}.")
    rotation = matrix[:3, :3]
    scale = rotation.norm(dim=0)
    if (scale < 1e-9).any():
        raise DreamsculptError("The camera's matrix_world is degenerate (a zero scale); reset the camera's scale.")
    # Blender keeps the object scale in matrix_world; the camera frame is its rotation only.
    u, _, vh = torch.linalg.svd(rotation / scale)
    rotation = u @ vh
    if torch.det(rotation) < 0:
        raise DreamsculptError("The camera's matrix_world is mirrored (a negative scale); reset the camera's scale.")
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, :3], c2w[:3, 3] = rotation, matrix[:3, 3]
    if fit == "AUTO":
        fit = "HORIZONTAL" if width >= height else "VERTICAL"
        sensor = sensor_width
    else:
        sensor = sensor_width if fit == "HORIZONTAL" else sensor_height
    side = width if fit == "HORIZONTAL" else height
    focal = lens / sensor * side
    # Shift moves the frame across the sensor in units of the fitted side.
    cx, cy = 0.5 * width - shift_x * side, 0.5 * height + shift_y * side
    return RealCamera(c2w.float(), focal, cx, cy, width, height)


def orbit_camera(azimuth_deg: float, elevation_deg: float, fov_deg: float, width: int, height: int) -> RealCamera:
    """The camera assumed for an image without camera data: an orbit camera looking at the
    origin, `fov_deg` across the image's longer side."""
    if not 1.0 <= fov_deg <= 170.0:
        raise DreamsculptError(f"The field of view must be between 1 and 170 degrees (got {fov_deg:g}).")
    if not -89.0 <= elevation_deg <= 89.0:
        raise DreamsculptError(f"The elevation must be between -89 and 89 degrees (got {elevation_deg:g}).")
    c2w = orbit_c2w(torch.tensor([float(azimuth_deg)]), torch.tensor([float(elevation_deg)]),
                    torch.tensor([NOMINAL_DISTANCE]))[0]
    focal = 0.5 * max(width, height) / math.tan(math.radians(fov_deg) / 2)
    return RealCamera(c2w, focal, 0.5 * width, 0.5 * height, width, height)


# --- The virtual camera --------------------------------------------------------------------------

def _pixel_directions(camera: RealCamera, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """World directions [N, 3] (unit) through pixel centres (rows, cols)."""
    x = (cols + 0.5 - camera.cx) / camera.focal
    y = -(rows + 0.5 - camera.cy) / camera.focal
    d = torch.stack([x, y, -torch.ones_like(x)], -1)
    return F.normalize(d @ camera.c2w[:3, :3].T, dim=-1)


def _look_rotation(axis: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """The orbit camera looking along `axis` (unit, world): (rotation [3, 3], azimuth, elevation)."""
    back = -axis
    elevation = math.degrees(math.asin(float(back[2].clamp(-1, 1))))
    azimuth = math.degrees(math.atan2(float(back[1]), float(back[0])))
    rotation = orbit_c2w(torch.tensor([azimuth]), torch.tensor([elevation]), torch.tensor([1.0]))[0, :3, :3]
    return rotation, azimuth, elevation


def picture_view(config: ImageConfig, path: str | Path | None = None) -> PictureView:
    """Read `config.path` (or `path`) and bring it into the canonical frame (see the module doc)."""
    path = Path(path or config.path)
    rgba, has_alpha = read_image(path)
    name = path.name
    mask = object_mask(rgba, has_alpha, name)
    rgba = torch.cat([rgba[:3], mask[None]])      # an opaque picture's mask becomes its alpha
    _, height, width = rgba.shape
    if config.camera:
        real = camera_from_spec(config.camera, width, height)
    else:
        real = orbit_camera(config.azimuth_deg, config.elevation_deg, config.fov_deg, width, height)

    rows, cols = torch.nonzero(mask > 0.5, as_tuple=True)
    directions = _pixel_directions(real, rows.float(), cols.float())
    # The axis through the centre of the silhouette's extent (not its centroid, so the frame
    # is balanced): a few fixed-point rounds of "look at the middle of the tangent-plane box".
    axis = F.normalize(directions.mean(0), dim=0)
    for _ in range(4):
        rotation, _, _ = _look_rotation(axis)
        local = directions @ rotation                      # camera frame of the virtual view
        if (local[:, 2] > -1e-3).any():
            raise DreamsculptError(f"The object in {name} spans more than a half-space of view; move the "
                                   "camera back so it sees the whole object in front of it.")
        tangent = local[:, :2] / -local[:, 2:]
        centre = 0.5 * (tangent.amin(0) + tangent.amax(0))
        axis = F.normalize(rotation @ torch.cat([centre, -torch.ones(1)]), dim=0)
    rotation, azimuth, elevation = _look_rotation(axis)
    local = directions @ rotation
    tangent = local[:, :2] / -local[:, 2:]
    half = float(tangent.abs().amax())            # the silhouette's half-extent, tangent units
    if half > MAX_HALF_ANGLE_TAN:
        raise DreamsculptError(
            f"The object in {name} spans {2 * math.degrees(math.atan(half)):.0f} degrees of the view: too close to "
            "the camera for a single-image reconstruction. Move the camera back (or use a longer lens).")
    fov = 2 * math.degrees(math.atan(half / config.fill))
    distance = max(HALF_EXTENT / half, MIN_DISTANCE)

    size = config.size
    resampled = _resample(rgba, real, rotation, fov, size)
    camera = Cameras.from_orbit(azimuth, elevation, distance, fov)
    scale = 1.0 if config.depth is None else float(config.depth) / distance
    if config.depth is not None and not (math.isfinite(config.depth) and config.depth > 0):
        raise DreamsculptError(f"depth must be a positive distance in world units (got {config.depth}).")
    centre = real.c2w[:3, 3] + axis * distance * scale
    placement = torch.eye(4)
    placement[:3, :3] *= scale
    placement[:3, 3] = centre
    world = torch.eye(4)
    world[:3, :3], world[:3, 3] = rotation, real.c2w[:3, 3]
    return PictureView(resampled, camera, placement, world, str(path))


def _resample(rgba: torch.Tensor, real: RealCamera, rotation: torch.Tensor, fov_deg: float,
              size: int) -> torch.Tensor:
    """The square virtual view [4, size, size] (straight RGBA) of the real image: each virtual
    pixel's ray is projected into the real camera. Supersampled (up to 4x4) when the virtual
    pixel covers several real ones, then area-filtered; outside the picture is transparent."""
    focal_v = 0.5 * size / math.tan(math.radians(fov_deg) / 2)
    factor = int(min(4, max(1, math.ceil(real.focal / focal_v))))
    n = size * factor
    ij = (torch.arange(n, dtype=torch.float32) + 0.5) / factor
    rows, cols = torch.meshgrid(ij, ij, indexing="ij")
    d = torch.stack([(cols - 0.5 * size) / focal_v, -(rows - 0.5 * size) / focal_v, -torch.ones_like(cols)], -1)
    d_real = d @ (real.c2w[:3, :3].T @ rotation).T          # virtual camera frame -> real camera frame
    ahead = -d_real[..., 2]
    u = real.cx + real.focal * d_real[..., 0] / ahead.clamp_min(1e-6)
    v = real.cy - real.focal * d_real[..., 1] / ahead.clamp_min(1e-6)
    grid = torch.stack([u / real.width * 2 - 1, v / real.height * 2 - 1], -1)
    grid = torch.where((ahead > 1e-6)[..., None], grid, torch.full_like(grid, 4.0))
    premultiplied = torch.cat([rgba[:3] * rgba[3:], rgba[3:]])[None]
    out = F.grid_sample(premultiplied, grid[None], mode="bilinear", padding_mode="zeros", align_corners=False)
    if factor > 1:
        out = F.avg_pool2d(out, factor)
    colour, alpha = out[0, :3], out[0, 3:].clamp(0, 1)
    straight = torch.where(alpha > 1e-4, colour / alpha.clamp_min(1e-4), torch.ones_like(colour))
    return torch.cat([straight.clamp(0, 1), alpha])


def alpha_over_white(rgb: torch.Tensor, tolerance: float = 0.04, soft: float = 0.08) -> torch.Tensor:
    """[3, S, S] a view drawn over white -> [4, S, S] with an alpha: the background is the
    near-white region that touches the frame (so white parts inside the object stay opaque),
    with a soft edge over the next `soft` of distance from white."""
    alpha = plain_background_mask(rgb, torch.ones(3), tolerance, soft)
    return straight_rgba(rgb, alpha[None])


def straight_rgba(over_white: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Colour composited over white [3, S, S] and its alpha [1, S, S] -> straight RGBA [4, S, S]
    (what PNG stores): the colour is un-composited where the alpha allows."""
    colour = (over_white - (1.0 - alpha)) / alpha.clamp_min(1e-3)
    colour = torch.where(alpha > 1e-3, colour, over_white).clamp(0, 1)
    return torch.cat([colour, alpha])


def save_rgba(image: torch.Tensor, path: Path) -> None:
    """[4, S, S] (or [3, S, S]) float in [0, 1] -> PNG."""
    array = (image.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()
    Image.fromarray(array, "RGBA" if image.shape[0] == 4 else "RGB").save(path)
