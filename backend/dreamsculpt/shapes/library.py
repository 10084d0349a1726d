"""The built-in library: every shape in every colour from 72 known views, an `ImageSet`
the closed-form prior is the exact denoiser of. Renders are cached on disk per resolution.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import Collection

import torch

from ..cameras import Cameras
from ..errors import DreamsculptError
from ..image_folders import DEFAULT_DISTANCE, DEFAULT_FOV_DEG, save_image_folder
from ..image_sets import ImageSet
from .geometry import BOUNDING_RADIUS, COLOURS, SHAPE_DIMENSIONS, SHAPES
from .tracing import AMBIENT, DIFFUSE, LIGHT_DIR, one_thread, render_shape

LIBRARY_VERSION = 1
LIBRARY_AZIMUTHS_DEG = tuple(range(0, 360, 30))
LIBRARY_ELEVATIONS_DEG = (-30, -10, 10, 30, 50, 75)


def library_cameras() -> Cameras:
    """The 72 standard views: azimuth every 30 degrees x elevations -30..75 degrees, distance
    3.0, fov 40 degrees (the middle of the optimisation's camera ranges; every shape fits with
    a margin: a sphere of radius 0.87 spans 34 of the 40 degrees).

    Ordered by elevation, then azimuth: view i has elevation LIBRARY_ELEVATIONS_DEG[i // 12]
    and azimuth LIBRARY_AZIMUTHS_DEG[i % 12]. Elevation stops at 75: straight overhead the
    orbit camera's "up" is ambiguous (see cameras.orbit_c2w)."""
    az, el = torch.meshgrid(torch.tensor(LIBRARY_AZIMUTHS_DEG, dtype=torch.float32),
                            torch.tensor(LIBRARY_ELEVATIONS_DEG, dtype=torch.float32), indexing="xy")
    return Cameras.from_orbit(az.reshape(-1), el.reshape(-1), DEFAULT_DISTANCE, DEFAULT_FOV_DEG)


# --- The library and its cache ------------------------------------------------------------------

def builtin_library(resolution: int, labels: Collection[str] | None = None) -> ImageSet:
    """Every shape x colour x reference view: images [N, 3, resolution, resolution] over white,
    labels like "red cube", poses and masks (the coverage) filled. Ordered by shape, then
    colour, then view.

    `labels` (e.g. from `match_prompt`) keeps only those sets; the geometry is still cached
    for all shapes. Geometry is rendered once per resolution and cached on disk (see
    `cache_dir`); colouring it costs a multiply-add.
    """
    labels = None if labels is None else set(labels)
    wanted = [[c for c in COLOURS if labels is None or f"{c} {shape}" in labels] for shape in SHAPES]
    count, total = len(LIBRARY_AZIMUTHS_DEG) * len(LIBRARY_ELEVATIONS_DEG), sum(map(len, wanted))
    if not total:
        raise DreamsculptError(f"None of {sorted(labels)} is in the built-in library; its sets are "
                               f"'<colour> <shape>' with shapes {', '.join(SHAPES)} and colours {', '.join(COLOURS)}.")
    with one_thread():
        coverage, shaded = _library_geometry(resolution)       # [S, V, H, W] each
        images = torch.empty(total, count, 3, resolution, resolution)   # filled in place: no 2x peak
        masks = torch.empty(total, count, 1, resolution, resolution)
        names, k = [], 0
        for s, colours in enumerate(wanted):
            if colours:
                # albedo * shaded + (1 - coverage) for all colours of shape s at once; no clamp
                # needed: 0 <= shaded <= coverage <= 1 and albedo <= 1.
                albedo = torch.tensor([COLOURS[c] for c in colours])[:, None, :, None, None]
                torch.addcmul((1 - coverage[s])[None, :, None], albedo, shaded[s][None, :, None],
                              out=images[k:k + len(colours)])
                masks[k:k + len(colours)] = coverage[s][None, :, None]
                names += [f"{c} {SHAPES[s]}" for c in colours for _ in range(count)]
                k += len(colours)
    views = library_cameras()
    tile = lambda t: t.repeat(total)  # noqa: E731
    return ImageSet(images.flatten(0, 1), names, tile(views.azimuth_deg), tile(views.elevation_deg),
                    tile(views.distance), tile(views.fov_deg), masks.flatten(0, 1))


def cache_dir() -> Path:
    """$DREAMSCULPT_CACHE_DIR, else $XDG_CACHE_HOME/dreamsculpt, else ~/.cache/dreamsculpt."""
    if os.environ.get("DREAMSCULPT_CACHE_DIR"):
        return Path(os.environ["DREAMSCULPT_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "dreamsculpt"


def _fingerprint(resolution: int) -> str:
    # Everything the renders depend on, so a stale file is never used even if nobody bumps
    # LIBRARY_VERSION after an edit.
    spec = repr((LIBRARY_VERSION, resolution, SHAPE_DIMENSIONS, AMBIENT, DIFFUSE, LIGHT_DIR.tolist(),
                 LIBRARY_AZIMUTHS_DEG, LIBRARY_ELEVATIONS_DEG, DEFAULT_DISTANCE, DEFAULT_FOV_DEG, BOUNDING_RADIUS))
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def _library_geometry(resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (coverage, shaded), each [len(SHAPES), 72, resolution, resolution]."""
    path = cache_dir() / f"builtin-shapes-v{LIBRARY_VERSION}-{resolution}px.pt"
    fingerprint = _fingerprint(resolution)
    expected = (len(SHAPES), len(LIBRARY_AZIMUTHS_DEG) * len(LIBRARY_ELEVATIONS_DEG), resolution, resolution)
    try:
        data = torch.load(path, weights_only=True)
        if data["fingerprint"] == fingerprint and all(data[k].shape == expected for k in ("coverage", "shaded")):
            return data["coverage"].float(), data["shaded"].float()
    except Exception:  # noqa: BLE001 - missing, truncated or foreign file: rebuild it
        pass
    views = library_cameras()
    renders = [render_shape(shape, views, resolution) for shape in SHAPES]
    # Stored as float16 (error < 1/2000); the fresh result goes through the same rounding so a
    # cache hit and a miss give identical images.
    coverage = torch.stack([r.coverage for r in renders]).half()
    shaded = torch.stack([r.shaded for r in renders]).half()
    _atomic_save({"fingerprint": fingerprint, "coverage": coverage, "shaded": shaded}, path)
    return coverage.float(), shaded.float()


def _atomic_save(data: dict, path: Path) -> None:
    """Write to a temporary file beside `path`, then rename over it (readers never see half a
    file). A cache that cannot be written only costs a re-render next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(data, f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        warnings.warn(f"Could not cache the built-in shapes in {path.parent} ({exc}); they will be "
                      "rendered again next time. Set DREAMSCULPT_CACHE_DIR to a writable folder.")


# --- A posed image folder, as a user would supply one -------------------------------------------

def write_shape_folder(shape: str, colour: str, folder: str | Path, resolution: int = 64,
                           views: Cameras | None = None, with_poses: bool = True, alpha: bool = False) -> Path:
    """Render a turntable of `colour` `shape` as view_000.png, view_001.png, ... plus poses.json
    (unless with_poses is False) into `folder` (created). views default to library_cameras().
    alpha=True writes RGBA with the coverage as alpha instead of a white background.
    Returns the folder."""
    if colour not in COLOURS:
        raise DreamsculptError(f"Unknown colour {colour!r}. Available colours: {', '.join(COLOURS)}.")
    views = library_cameras() if views is None else views
    render = render_shape(shape, views, resolution)
    images = render.rgba(colour) if alpha else render.colourise(colour)
    names = [f"view_{i:03d}.png" for i in range(len(views))]
    poses = None
    if with_poses:
        poses = {"azimuth_deg": views.azimuth_deg, "elevation_deg": views.elevation_deg,
                 "distance": views.distance, "fov_deg": views.fov_deg}
    return save_image_folder(folder, images, names, poses)
