"""Cameras around the object, in Blender's world frame.

Conventions (shared by the engine, `poses.json` and the Blender add-on):

* World axes are Blender's: +Z is up. The object lives inside [-1, 1]^3.
* An orbit camera is given by azimuth (degrees, measured from +X towards +Y), elevation
  (degrees above the XY plane; negative looks from below), distance from the origin and a
  field of view (degrees, for the square image). It always looks at the origin, with world +Z
  projecting upwards in the image.
* Camera-to-world matrices use Blender's / OpenGL's camera frame: the camera looks down its
  local -Z, local +Y is image-up and local +X is image-right.
* Pixel (0, 0) is the top-left corner of the image; rows grow downwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Cameras:
    """A batch of B square pinhole cameras.

    c2w: [B, 4, 4] camera-to-world. fov_deg: [B] full field of view, degrees.
    azimuth_deg, elevation_deg, distance: [B] the orbit parameters (kept for view-dependent
    prompts and view-conditioned priors).
    """

    c2w: torch.Tensor
    fov_deg: torch.Tensor
    azimuth_deg: torch.Tensor
    elevation_deg: torch.Tensor
    distance: torch.Tensor

    def __len__(self) -> int:
        return self.c2w.shape[0]

    @property
    def position(self) -> torch.Tensor:
        """[B, 3] camera centres in world space."""
        return self.c2w[:, :3, 3]

    def to(self, device: torch.device | str) -> "Cameras":
        return Cameras(*(t.to(device) for t in (self.c2w, self.fov_deg, self.azimuth_deg,
                                                  self.elevation_deg, self.distance)))

    def __getitem__(self, index) -> "Cameras":
        pick = lambda t: t[index].reshape(-1, *t.shape[1:])  # noqa: E731
        return Cameras(pick(self.c2w), pick(self.fov_deg), pick(self.azimuth_deg),
                       pick(self.elevation_deg), pick(self.distance))

    @staticmethod
    def from_orbit(azimuth_deg, elevation_deg, distance, fov_deg) -> "Cameras":
        """Orbit cameras looking at the origin. Each argument: a float or a [B] tensor."""
        az, el, dist, fov = torch.broadcast_tensors(*(torch.as_tensor(v, dtype=torch.float32).reshape(-1)
                                                      for v in (azimuth_deg, elevation_deg, distance, fov_deg)))
        return Cameras(orbit_c2w(az, el, dist), fov.clone(), az.clone(), el.clone(), dist.clone())


@dataclass
class Pinhole:
    """A batch of B pinhole cameras of one width x height image size (a Blender camera as it
    renders: any aspect, lens shift as an off-centre principal point).

    c2w: [B, 4, 4] camera-to-world (rotation orthonormal). focal: [B] pixels. centre: [B, 2]
    the principal point (column, row) in pixels from the top-left corner.
    """

    c2w: torch.Tensor
    focal: torch.Tensor
    centre: torch.Tensor
    width: int
    height: int

    def __len__(self) -> int:
        return self.c2w.shape[0]

    @property
    def position(self) -> torch.Tensor:
        """[B, 3] camera centres in world space."""
        return self.c2w[:, :3, 3]

    @property
    def forward(self) -> torch.Tensor:
        """[B, 3] unit viewing directions (the camera's -Z)."""
        return -self.c2w[:, :3, 2]

    def to(self, device: torch.device | str) -> "Pinhole":
        return Pinhole(self.c2w.to(device), self.focal.to(device), self.centre.to(device), self.width, self.height)

    def __getitem__(self, index) -> "Pinhole":
        pick = lambda t: t[index].reshape(-1, *t.shape[1:])  # noqa: E731
        return Pinhole(pick(self.c2w), pick(self.focal), pick(self.centre), self.width, self.height)

    def project(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """World points [N, 3] -> (pixels [B, N, 2] as (column, row), depth [B, N] along the
        viewing axis, positive in front)."""
        rotation, position = self.c2w[:, :3, :3], self.c2w[:, :3, 3]
        cam = torch.einsum("bji,bnj->bni", rotation, points[None] - position[:, None])   # R^T (p - t)
        depth = -cam[..., 2]
        focal = self.focal[:, None]
        col = cam[..., 0] / depth * focal + self.centre[:, None, 0]
        row = -cam[..., 1] / depth * focal + self.centre[:, None, 1]
        return torch.stack([col, row], -1), depth

    def unproject(self, depth: torch.Tensor) -> torch.Tensor:
        """View depths [B, H, W] (along the viewing axis) -> world points [B, H, W, 3] at the
        pixel centres."""
        rows, cols = torch.meshgrid(torch.arange(self.height, dtype=depth.dtype, device=depth.device),
                                    torch.arange(self.width, dtype=depth.dtype, device=depth.device), indexing="ij")
        focal = self.focal[:, None, None]
        x = (cols + 0.5 - self.centre[:, None, None, 0]) / focal
        y = -(rows + 0.5 - self.centre[:, None, None, 1]) / focal
        local = torch.stack([x, y, -torch.ones_like(x)], -1) * depth[..., None]
        return torch.einsum("bij,bhwj->bhwi", self.c2w[:, :3, :3], local) + self.position[:, None, None]


@dataclass
class Rays:
    """Rays of a batch of images. origins, directions: [..., 3]; directions are unit length."""

    origins: torch.Tensor
    directions: torch.Tensor


def orbit_c2w(azimuth_deg: torch.Tensor, elevation_deg: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
    """[B] angles in degrees and distances -> [B, 4, 4] camera-to-world looking at the origin."""
    az = torch.deg2rad(azimuth_deg)
    el = torch.deg2rad(elevation_deg)
    centre = torch.stack([torch.cos(el) * torch.cos(az), torch.cos(el) * torch.sin(az), torch.sin(el)], -1)
    centre = centre * distance[:, None]
    back = torch.nn.functional.normalize(centre, dim=-1)  # camera +Z points away from the target
    world_up = torch.tensor([0.0, 0.0, 1.0], device=back.device).expand_as(back)
    right = torch.linalg.cross(world_up, back, dim=-1)
    # Straight above or below, "up" is ambiguous: use world +Y there so right is well defined.
    degenerate = right.norm(dim=-1, keepdim=True) < 1e-6
    right = torch.where(degenerate, torch.linalg.cross(torch.tensor([0.0, 1.0, 0.0]).expand_as(back), back, dim=-1), right)
    right = torch.nn.functional.normalize(right, dim=-1)
    up = torch.linalg.cross(back, right, dim=-1)
    c2w = torch.zeros(az.shape[0], 4, 4, device=back.device)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = right, up, back, centre
    c2w[:, 3, 3] = 1.0
    return c2w


def focal_pixels(fov_deg: torch.Tensor, size: int) -> torch.Tensor:
    """Focal length in pixels of a square image `size` pixels wide with full FOV `fov_deg`."""
    return 0.5 * size / torch.tan(0.5 * torch.deg2rad(fov_deg))


def generate_rays(cameras: Cameras, size: int, jitter: torch.Generator | None = None) -> Rays:
    """Rays through pixel centres (or jittered inside each pixel when a generator is given).

    Returns Rays with origins and directions of shape [B, size, size, 3].
    """
    device = cameras.c2w.device
    ij = torch.arange(size, dtype=torch.float32, device=device)
    rows, cols = torch.meshgrid(ij, ij, indexing="ij")
    offset = 0.5
    if jitter is not None:
        offset = torch.rand((len(cameras), size, size), generator=jitter).to(device)
    focal = focal_pixels(cameras.fov_deg, size)[:, None, None]
    x = (cols + offset - 0.5 * size) / focal
    y_offset = offset if jitter is None else torch.rand((len(cameras), size, size), generator=jitter).to(device)
    y = -(rows + y_offset - 0.5 * size) / focal
    dirs_cam = torch.stack([x, y, -torch.ones_like(x)], dim=-1)  # [B, H, W, 3]
    dirs = torch.einsum("bij,bhwj->bhwi", cameras.c2w[:, :3, :3], dirs_cam)
    dirs = torch.nn.functional.normalize(dirs, dim=-1)
    origins = cameras.position[:, None, None, :].expand_as(dirs)
    return Rays(origins, dirs)


def project(points: torch.Tensor, cameras: Cameras, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Project world points into the images.

    points: [N, 3]. Returns (pixels [B, N, 2] as (column, row) in pixel units, depth [B, N]
    along the viewing axis; positive in front of the camera).
    """
    w2c = torch.linalg.inv(cameras.c2w)
    homog = torch.cat([points, torch.ones_like(points[:, :1])], -1)
    cam = torch.einsum("bij,nj->bni", w2c, homog)[..., :3]
    depth = -cam[..., 2]
    focal = focal_pixels(cameras.fov_deg, size)[:, None]
    col = cam[..., 0] / depth * focal + 0.5 * size
    row = -cam[..., 1] / depth * focal + 0.5 * size
    return torch.stack([col, row], -1), depth


def angle_between_views(azimuth_a, elevation_a, azimuth_b, elevation_b) -> torch.Tensor:
    """Great-circle angle (radians) between viewing directions; broadcasts like torch ops."""
    def unit(az, el):
        az, el = torch.deg2rad(torch.as_tensor(az, dtype=torch.float32)), torch.deg2rad(torch.as_tensor(el, dtype=torch.float32))
        return torch.stack([torch.cos(el) * torch.cos(az), torch.cos(el) * torch.sin(az), torch.sin(el)], -1)
    cos = (unit(azimuth_a, elevation_a) * unit(azimuth_b, elevation_b)).sum(-1)
    return torch.arccos(cos.clamp(-1.0, 1.0))


def ray_box_intersect(rays: Rays, bound: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Entry and exit distances of rays through the box [-bound, bound]^3.

    Returns (near, far), each shaped like origins[..., 0]; far <= near where a ray misses.
    """
    inv = 1.0 / torch.where(rays.directions.abs() < 1e-9, torch.full_like(rays.directions, 1e-9), rays.directions)
    t0 = (-bound - rays.origins) * inv
    t1 = (bound - rays.origins) * inv
    near = torch.minimum(t0, t1).amax(-1).clamp_min(0.0)
    far = torch.maximum(t0, t1).amin(-1)
    return near, far
