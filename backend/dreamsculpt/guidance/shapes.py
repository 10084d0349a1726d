"""The built-in library of analytic shapes: signed distances, renders and prompt matching.

Every shape is an exact signed distance function (negative inside) in Blender's world frame
(Z up), centred on the origin (the cone's bounding box is centred, not its centroid) and well
inside [-1, 1]^3: the farthest surface point is 0.87 from the origin (the cube's corners).

Reference images are sphere-traced in pure torch with 2x2 supersampling over white. Shading
uses a light fixed in the world, so a view-independent albedo field can reproduce it::

    colour = albedo * (AMBIENT + DIFFUSE * max(0, n . LIGHT_DIR))

Geometry (pixel coverage and coverage-weighted shading) is rendered once per shape and view
(`render_shape`); every colour is then one multiply-add (`ShapeRender.colourise`).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Collection

import torch
import torch.nn.functional as F

from ..cameras import Cameras, generate_rays
from ..errors import DreamsculptError
from .image_sets import ImageSet
from .references import DEFAULT_DISTANCE, DEFAULT_FOV_DEG, save_reference_images

#: World units. Bump LIBRARY_VERSION whenever shapes, shading, views or the renderer change.
SHAPE_DIMENSIONS: dict[str, dict[str, float]] = {
    "cube": {"half_size": 0.5},
    "sphere": {"radius": 0.6},
    "torus": {"major_radius": 0.5, "minor_radius": 0.2},     # lying in the XY plane
    "cone": {"base_radius": 0.55, "height": 1.1},            # axis Z, apex up at z = +0.55
    "cylinder": {"radius": 0.45, "height": 1.1},             # axis Z
}
SHAPES: tuple[str, ...] = tuple(SHAPE_DIMENSIONS)
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.1, 0.1),
    "green": (0.15, 0.65, 0.2),
    "blue": (0.15, 0.3, 0.85),
    "yellow": (0.9, 0.8, 0.1),
    "orange": (0.95, 0.5, 0.1),
    "purple": (0.55, 0.2, 0.75),
    "white": (0.9, 0.9, 0.9),   # not 1.0, so a white object stays visible over white
    "grey": (0.5, 0.5, 0.5),
}
LIGHT_DIR = F.normalize(torch.tensor([0.4, -0.6, 0.7]), dim=0)   # front-right-above
AMBIENT, DIFFUSE = 0.55, 0.45
#: Every shape lies inside this sphere (the cube's corners are at 0.866); rays start on it.
BOUNDING_RADIUS = 0.9
LIBRARY_VERSION = 1
REFERENCE_AZIMUTHS_DEG = tuple(range(0, 360, 30))
REFERENCE_ELEVATIONS_DEG = (-30, -10, 10, 30, 50, 75)


# --- Signed distances ([N, 3] -> [N], exact) -------------------------------------------------

def _box(p: torch.Tensor, half_size: float) -> torch.Tensor:
    q = p.abs() - half_size
    return q.clamp_min(0).norm(dim=-1) + q.amax(-1).clamp_max(0)


def _sphere(p: torch.Tensor, radius: float) -> torch.Tensor:
    return p.norm(dim=-1) - radius


def _torus(p: torch.Tensor, major_radius: float, minor_radius: float) -> torch.Tensor:
    q = torch.stack([p[:, :2].norm(dim=-1) - major_radius, p[:, 2]], -1)
    return q.norm(dim=-1) - minor_radius


def _cylinder(p: torch.Tensor, radius: float, height: float) -> torch.Tensor:
    d = torch.stack([p[:, :2].norm(dim=-1) - radius, p[:, 2].abs() - 0.5 * height], -1)
    return d.amax(-1).clamp_max(0) + d.clamp_min(0).norm(dim=-1)


def _segment_distance(q: torch.Tensor, a: tuple[float, float], b: tuple[float, float]) -> torch.Tensor:
    """Distance from 2D points q [N, 2] to the segment a-b."""
    a_, ba = q.new_tensor(a), q.new_tensor(b) - q.new_tensor(a)
    pa = q - a_
    h = ((pa @ ba) / (ba @ ba)).clamp(0, 1)
    return (pa - h[:, None] * ba).norm(dim=-1)


def _cone(p: torch.Tensor, base_radius: float, height: float) -> torch.Tensor:
    # A solid of revolution: the distance to its profile triangle (0,-h/2), (R,-h/2), (0,h/2)
    # in the (radius, z) half-plane; the axis edge is not surface, so only base and slant count.
    half = 0.5 * height
    q = torch.stack([p[:, :2].norm(dim=-1), p[:, 2]], -1)
    dist = torch.minimum(_segment_distance(q, (0.0, -half), (base_radius, -half)),
                         _segment_distance(q, (base_radius, -half), (0.0, half)))
    inside = (q[:, 1] >= -half) & (q[:, 0] * height <= base_radius * (half - q[:, 1]))
    return torch.where(inside, -dist, dist)


_SDF = {"cube": _box, "sphere": _sphere, "torus": _torus, "cone": _cone, "cylinder": _cylinder}


def _check_shape(name: str) -> None:
    if name not in SHAPE_DIMENSIONS:
        raise DreamsculptError(f"Unknown built-in shape {name!r}. Available shapes: {', '.join(SHAPES)}.")


def shape_sdf(name: str, points: torch.Tensor) -> torch.Tensor:
    """Signed distance (world units, negative inside) of shape `name` at points [N, 3] -> [N]."""
    _check_shape(name)
    return _SDF[name](points.float(), **SHAPE_DIMENSIONS[name])


def shape_occupancy(name: str, points: torch.Tensor) -> torch.Tensor:
    """Ground truth for IoU tests: bool [N], true inside (or on) shape `name`."""
    return shape_sdf(name, points) <= 0


# --- Rendering --------------------------------------------------------------------------------

@dataclass
class ShapeRender:
    """Colour-independent renders of one shape from B views.

    coverage: [B, H, W] fraction of each pixel's subsamples that hit the shape, in [0, 1].
    shaded: [B, H, W] mean over the subsamples of hit * (AMBIENT + DIFFUSE * max(0, n . l)).
    """

    coverage: torch.Tensor
    shaded: torch.Tensor

    def colourise(self, albedo) -> torch.Tensor:
        """Albedo [3] (or a COLOURS name) -> images [B, 3, H, W] over a white background.

        Per subsample the pixel is albedo * shading where hit and 1 where not, so the
        pixel mean is albedo * shaded + (1 - coverage)."""
        albedo = COLOURS[albedo] if isinstance(albedo, str) else albedo
        albedo = torch.as_tensor(albedo, dtype=torch.float32).reshape(1, 3, 1, 1)
        return (albedo * self.shaded[:, None] + (1.0 - self.coverage[:, None])).clamp(0, 1)

    def rgba(self, albedo) -> torch.Tensor:
        """[B, 4, H, W]: straight (not premultiplied) colour with the coverage as alpha."""
        alpha = self.coverage[:, None]
        premultiplied = self.colourise(albedo) - (1.0 - alpha)
        rgb = torch.where(alpha > 0, premultiplied / alpha.clamp_min(1e-6), torch.ones_like(premultiplied))
        return torch.cat([rgb.clamp(0, 1), alpha], 1)


def sphere_trace(sdf, origins: torch.Tensor, directions: torch.Tensor, near: torch.Tensor,
                 far: torch.Tensor, max_steps: int = 256, eps: float = 5e-4,
                 min_step: float = 2e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """March rays [R, 3] from `near` to `far` ([R]) by the signed distance.

    Returns (hit bool [R], t [R] the distance along each ray to the surface where hit).
    Steps are at least `min_step` (world units): rays grazing a surface would otherwise crawl
    along it and run out of steps before reaching what lies behind. An overshoot lands inside
    (negative distance) and counts as a hit at most min_step deep. Rays still marching after
    `max_steps` count as misses.
    """
    hit = torch.zeros_like(near, dtype=torch.bool)
    t_hit = near.clone()
    # Only unfinished rays are marched: their origin, direction, t and far packed in one
    # [R', 8] tensor so dropping finished ones is a single gather; `index` maps them back.
    index = torch.nonzero(near < far).squeeze(-1)
    state = torch.cat([origins, directions, near[:, None], far[:, None]], 1).index_select(0, index)
    for _ in range(max_steps):
        if index.numel() == 0:
            break
        t = state[:, 6]
        dist = sdf(torch.addcmul(state[:, :3], t[:, None], state[:, 3:6]))
        done = dist < eps
        finished = torch.nonzero(done).squeeze(-1)
        hit[index[finished]] = True
        t_hit[index[finished]] = t[finished]
        t += dist.clamp_min(min_step)
        keep = torch.nonzero(~done & (t < state[:, 7])).squeeze(-1)
        if keep.numel() < index.numel():
            index, state = index[keep], state.index_select(0, keep)
    return hit, t_hit


def ray_sphere_intersect(origins: torch.Tensor, directions: torch.Tensor,
                         radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Entry and exit distances [R] of unit rays [R, 3] through the sphere of `radius` at
    the origin; far < near where a ray misses."""
    b = (origins * directions).sum(-1)
    c = origins.square().sum(-1) - radius ** 2
    half = (b * b - c).clamp_min(0).sqrt()
    miss = b * b < c
    return (-b - half).clamp_min(0), torch.where(miss, torch.full_like(b, -1.0), -b + half)


def sdf_normals(sdf, points: torch.Tensor, h: float = 1e-3) -> torch.Tensor:
    """Unit normals [N, 3] from the SDF gradient (tetrahedral central differences)."""
    k = points.new_tensor([[1, -1, -1], [-1, -1, 1], [-1, 1, -1], [1, 1, 1]])
    grad = sum(sdf(points + h * k[i])[:, None] * k[i] for i in range(4))
    return F.normalize(grad, dim=-1)


def render_shape(name: str, cameras: Cameras, resolution: int, supersample: int = 2,
                 max_rays: int = 2 ** 21, scale: float = 1.0,
                 offset: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> ShapeRender:
    """Sphere-trace shape `name` from B cameras at resolution^2 pixels, supersample^2 rays each.
    The shape can be scaled (about its centre) and moved: it is then scale * shape + offset.

    Runs on one intra-op thread (see `_one_thread`).
    """
    _check_shape(name)
    size = resolution * supersample
    views_per_chunk = max(1, max_rays // size ** 2)
    with _one_thread():
        chunks = [_render_chunk(name, cameras[start:start + views_per_chunk], size, scale, offset)
                  for start in range(0, len(cameras), views_per_chunk)]
    hit, shade = (torch.cat(parts) for parts in zip(*chunks))   # [B, 1, size, size] each
    return ShapeRender(F.avg_pool2d(hit, supersample)[:, 0], F.avg_pool2d(hit * shade, supersample)[:, 0])


@contextmanager
def _one_thread():
    """Run torch on one intra-op thread, then restore the process-wide setting.

    The marching loop is hundreds of small ops: on a 2-core machine busy with other
    processes, two torch threads made the library build 10-20x slower (every op waits for a
    descheduled thread), and the loop is too fine-grained for a second thread to gain much
    on an idle one. Note the setting is process-wide while it lasts."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _render_chunk(name: str, cameras: Cameras, size: int, scale: float = 1.0,
                  offset: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (hit, shading factor), each [B, 1, size, size] float; shading is 0 where missed."""
    shift = torch.tensor(offset, dtype=torch.float32)
    sdf = lambda p: shape_sdf(name, (p - shift) / scale) * scale  # noqa: E731
    rays = generate_rays(cameras, size)
    origins, dirs = rays.origins.reshape(-1, 3), rays.directions.reshape(-1, 3)
    # The bounding sphere, in the shape's own frame (rays are moved there; directions keep).
    hit, t = sphere_trace(sdf, origins, dirs,
                          *ray_sphere_intersect(origins - shift, dirs, BOUNDING_RADIUS * scale))
    shade = torch.zeros_like(t)
    normals = sdf_normals(sdf, origins[hit] + t[hit, None] * dirs[hit])
    shade[hit] = AMBIENT + DIFFUSE * (normals @ LIGHT_DIR).clamp_min(0)
    return hit.float().reshape(-1, 1, size, size), shade.reshape(-1, 1, size, size)


def reference_views() -> Cameras:
    """The 72 standard views: azimuth every 30 degrees x elevations -30..75 degrees, distance
    3.0, fov 40 degrees (the middle of the optimisation's camera ranges; every shape fits with
    a margin: a sphere of radius 0.87 spans 34 of the 40 degrees).

    Ordered by elevation, then azimuth: view i has elevation REFERENCE_ELEVATIONS_DEG[i // 12]
    and azimuth REFERENCE_AZIMUTHS_DEG[i % 12]. Elevation stops at 75: straight overhead the
    orbit camera's "up" is ambiguous (see cameras.orbit_c2w)."""
    az, el = torch.meshgrid(torch.tensor(REFERENCE_AZIMUTHS_DEG, dtype=torch.float32),
                            torch.tensor(REFERENCE_ELEVATIONS_DEG, dtype=torch.float32), indexing="xy")
    return Cameras.from_orbit(az.reshape(-1), el.reshape(-1), DEFAULT_DISTANCE, DEFAULT_FOV_DEG)


# --- The library and its cache ------------------------------------------------------------------

def builtin_library(resolution: int, labels: Collection[str] | None = None) -> ImageSet:
    """Every shape x colour x reference view: images [N, 3, resolution, resolution] over white,
    labels like "red cube", poses filled. Ordered by shape, then colour, then view.

    `labels` (e.g. from `match_prompt`) keeps only those sets; the geometry is still cached
    for all shapes. Geometry is rendered once per resolution and cached on disk (see
    `cache_dir`); colouring it costs a multiply-add.
    """
    labels = None if labels is None else set(labels)
    wanted = [[c for c in COLOURS if labels is None or f"{c} {shape}" in labels] for shape in SHAPES]
    count, total = len(REFERENCE_AZIMUTHS_DEG) * len(REFERENCE_ELEVATIONS_DEG), sum(map(len, wanted))
    if not total:
        raise DreamsculptError(f"None of {sorted(labels)} is in the built-in library; its sets are "
                               f"'<colour> <shape>' with shapes {', '.join(SHAPES)} and colours {', '.join(COLOURS)}.")
    with _one_thread():
        coverage, shaded = _library_geometry(resolution)       # [S, V, H, W] each
        images = torch.empty(total, count, 3, resolution, resolution)   # filled in place: no 2x peak
        names, k = [], 0
        for s, colours in enumerate(wanted):
            if colours:
                # albedo * shaded + (1 - coverage) for all colours of shape s at once; no clamp
                # needed: 0 <= shaded <= coverage <= 1 and albedo <= 1.
                albedo = torch.tensor([COLOURS[c] for c in colours])[:, None, :, None, None]
                torch.addcmul((1 - coverage[s])[None, :, None], albedo, shaded[s][None, :, None],
                              out=images[k:k + len(colours)])
                names += [f"{c} {SHAPES[s]}" for c in colours for _ in range(count)]
                k += len(colours)
    views = reference_views()
    tile = lambda t: t.repeat(total)  # noqa: E731
    return ImageSet(images.flatten(0, 1), names, tile(views.azimuth_deg), tile(views.elevation_deg),
                    tile(views.distance), tile(views.fov_deg))


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
                 REFERENCE_AZIMUTHS_DEG, REFERENCE_ELEVATIONS_DEG, DEFAULT_DISTANCE, DEFAULT_FOV_DEG, BOUNDING_RADIUS))
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def _library_geometry(resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (coverage, shaded), each [len(SHAPES), 72, resolution, resolution]."""
    path = cache_dir() / f"builtin-shapes-v{LIBRARY_VERSION}-{resolution}px.pt"
    fingerprint = _fingerprint(resolution)
    expected = (len(SHAPES), len(REFERENCE_AZIMUTHS_DEG) * len(REFERENCE_ELEVATIONS_DEG), resolution, resolution)
    try:
        data = torch.load(path, weights_only=True)
        if data["fingerprint"] == fingerprint and all(data[k].shape == expected for k in ("coverage", "shaded")):
            return data["coverage"].float(), data["shaded"].float()
    except Exception:  # noqa: BLE001 - missing, truncated or foreign file: rebuild it
        pass
    views = reference_views()
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


# --- Prompts ----------------------------------------------------------------------------------

SHAPE_WORDS: dict[str, str] = {
    **dict.fromkeys(("cube", "box", "block", "dice"), "cube"),
    **dict.fromkeys(("sphere", "ball", "orb", "globe"), "sphere"),
    **dict.fromkeys(("torus", "tori", "donut", "doughnut", "ring"), "torus"),
    "cone": "cone",
    **dict.fromkeys(("cylinder", "tube", "pillar", "column"), "cylinder"),
}
#: Words that name a shape only when no other shape word is there ("can you make a cube").
WEAK_SHAPE_WORDS = {"can": "cylinder"}
COLOUR_WORDS: dict[str, str] = {
    **{c: c for c in COLOURS}, "gray": "grey", "crimson": "red", "scarlet": "red", "violet": "purple",
}
#: Common colours the library lacks: named in a prompt they are an error, not "any colour".
OTHER_COLOUR_WORDS = {"black", "brown", "pink", "cyan", "magenta", "teal", "turquoise", "gold", "golden",
                      "silver", "beige", "navy", "maroon", "lime", "indigo"}
_BACKGROUND_WORDS = {"background", "backdrop"}


def _lookup(word: str, table: dict[str, str]) -> str | None:
    """The entry for a word or its plural ("boxes" -> "box", "balls" -> "ball")."""
    for stem in (word, word[:-2] if word.endswith("es") else None, word[:-1] if word.endswith("s") else None):
        if stem and stem in table:
            return table[stem]
    return None


def match_prompt(prompt: str, library_labels: list[str]) -> list[str]:
    """The distinct labels ("<colour> <shape>") of `library_labels` that `prompt` names.

    One shape must be named (synonyms count: box, ball, donut, tube...). A colour narrows the
    match to that colour; without one every colour of the shape matches. Colours followed by
    "background" are ignored. Raises DreamsculptError listing what is available otherwise.
    """
    available = {}
    for label in dict.fromkeys(library_labels):
        colour, _, shape = label.rpartition(" ")
        available.setdefault(shape, []).append((colour, label))
    hint = (f"Available shapes: {', '.join(available)}; colours: "
            f"{', '.join(dict.fromkeys(c for pairs in available.values() for c, _ in pairs))}. "
            'Try "a red cube", or use --prior references --references DIR for your own images.')
    words = re.findall(r"[a-z]+", prompt.lower())
    shapes = list(dict.fromkeys(s for w in words if (s := _lookup(w, SHAPE_WORDS))))
    if not shapes:
        shapes = list(dict.fromkeys(s for w in words if (s := _lookup(w, WEAK_SHAPE_WORDS))))
    object_words = [w for w, nxt in zip(words, words[1:] + [""]) if nxt not in _BACKGROUND_WORDS]
    colours = list(dict.fromkeys(c for w in object_words if (c := COLOUR_WORDS.get(w))))
    others = [w for w in object_words if w in OTHER_COLOUR_WORDS]
    if not prompt.strip():
        raise DreamsculptError(f"The built-in prior needs a prompt naming a shape. {hint}")
    if not shapes or shapes[0] not in available:
        raise DreamsculptError(f"No built-in shape matches {prompt!r}. {hint}")
    if len(shapes) > 1:
        raise DreamsculptError(f"The prompt {prompt!r} names {len(shapes)} shapes ({', '.join(shapes)}); the "
                               "built-in prior makes one object. Name one shape.")
    if others and not colours:
        raise DreamsculptError(f"The built-in library has no {others[0]} shapes. {hint}")
    if len(colours) > 1:
        raise DreamsculptError(f"The prompt {prompt!r} names {len(colours)} colours ({', '.join(colours)}); "
                               "built-in shapes have one colour. Name one colour, or none for any.")
    matched = [label for colour, label in available[shapes[0]] if not colours or colour == colours[0]]
    if not matched:
        raise DreamsculptError(f"The built-in library has no {colours[0]} {shapes[0]}. Colours of the "
                               f"{shapes[0]}: {', '.join(c for c, _ in available[shapes[0]])}.")
    return matched


# --- A reference folder, as a user would supply one -------------------------------------------

def write_reference_folder(shape: str, colour: str, folder: str | Path, resolution: int = 64,
                           views: Cameras | None = None, with_poses: bool = True, alpha: bool = False) -> Path:
    """Render a turntable of `colour` `shape` as view_000.png, view_001.png, ... plus poses.json
    (unless with_poses is False) into `folder` (created). views default to reference_views().
    alpha=True writes RGBA with the coverage as alpha instead of a white background.
    Returns the folder."""
    if colour not in COLOURS:
        raise DreamsculptError(f"Unknown colour {colour!r}. Available colours: {', '.join(COLOURS)}.")
    views = reference_views() if views is None else views
    render = render_shape(shape, views, resolution)
    images = render.rgba(colour) if alpha else render.colourise(colour)
    names = [f"view_{i:03d}.png" for i in range(len(views))]
    poses = None
    if with_poses:
        poses = {"azimuth_deg": views.azimuth_deg, "elevation_deg": views.elevation_deg,
                 "distance": views.distance, "fov_deg": views.fov_deg}
    return save_reference_images(folder, images, names, poses)
