"""The fine stage (Magic3D's coarse -> fine): the coarse field's surface made explicit and
optimised as a mesh, top to bottom:

    coarse field -> signed distances on a tetrahedral band around its surface (DMTet)
    each step: extract the mesh -> rasterize at a higher resolution -> albedo from a copy of
    the coarse field at the surface points, shaded as the coarse stage shades -> antialias
    over the background -> the same guidance -> + normal consistency + area (+ Laplacian) -> step

The volume render blurs a surface over the shell its density rises through, so the coarse
mesh inherits the triplane's streaks and soft, foggy thin parts; here every pixel sees one
surface point, at three times the coarse render's resolution, and the prior judges the silhouette
through `rasterizer.antialias`.
"""

from __future__ import annotations

import copy
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial import cKDTree

from .callbacks import Callbacks
from .cameras import Cameras, generate_rays
from .config import CameraConfig
from .dmtet import DMTet, TetGrid, TriangleMesh
from .errors import DreamsculptError, NonFiniteError
from .mesh import Surface, auto_threshold, surface_at
from .optimize import (
    Trainer,
    light_near,
    read_checkpoint,
    run_steps,
    sample_cameras,
    save_atomically,
)
from .rasterizer import antialias, rasterize, to_screen
from .rendering import SHADING_MODES, Background, shade

#: The refinement's checkpoint in a mesh kind's output folder, beside the field's.
CHECKPOINT = "refine.pt"


def initial_surface(trainer: Trainer) -> tuple[DMTet, float]:
    """The DMTet of the trained field's surface, and the density level it was taken at.

    Signs come from the field's cleaned solid (the coarse mesh's own rule, mesh.clean_solid)
    at the grid's nodes; distances from the nodes to a marching-cubes surface at twice the
    grid's resolution, so the starting surface keeps the coarse one's sub-cell position."""
    c = trainer.config
    n, bound = c.refine.grid_resolution, c.field.bound
    threshold = c.mesh.threshold if c.mesh.threshold is not None else auto_threshold(trainer.field, trainer.occupancy)
    fine, solid = surface_at(trainer.field, 2 * n + 1, threshold, c.mesh.min_component_fraction)
    inside = solid[::2, ::2, ::2] > threshold                                   # [(n + 1)^3] nodes
    cell = 2.0 * bound / n
    # Keep the cubes with a corner within `band` cells of the surface (a distance transform
    # of the node signs finds them; the exact distances come after, for those nodes only).
    steps = np.where(inside, ndimage.distance_transform_edt(inside), ndimage.distance_transform_edt(~inside))
    near = steps <= c.refine.band
    keep = np.zeros((n,) * 3, dtype=bool)
    for dx, dy, dz in np.ndindex(2, 2, 2):
        keep |= near[dx:n + dx, dy:n + dy, dz:n + dz]
    if not keep.any():
        raise DreamsculptError("The field has no surface to refine. Try more --steps or another --seed.")
    grid = TetGrid.around(keep, bound)
    distance, _ = cKDTree(fine.vertices).query(grid.positions.numpy())
    sign = np.where(inside.reshape(-1)[grid.nodes.numpy()], -1.0, 1.0)
    sdf = torch.from_numpy(sign * np.maximum(distance, 1e-4 * cell)).float()
    # Nodes the surface cannot reach in the band keep their sign (DMTet.frozen).
    frozen = sdf.abs() >= (c.refine.band - 1) * cell
    return DMTet(grid, sdf, frozen), threshold


class Refiner:
    """Owns the surface, the texture field (a copy of the coarse one: its checkpoint stays the
    coarse field's), the optimiser and the step count of a refinement."""

    def __init__(self, trainer: Trainer, guidance=None, callbacks: Callbacks | None = None,
                 checkpoint_path: Path | None = None):
        self.config, self.views = trainer.config, trainer.views
        self.camera = at_references(self.views.camera)
        self.guidance = guidance if guidance is not None else trainer.guidance
        self.callbacks = callbacks or Callbacks()
        self.checkpoint_path = checkpoint_path
        self.device = trainer.device
        self.coarse_steps = trainer.step_index
        r = self.config.refine
        self.resolution = self.config.refine_resolution
        self.reference = trainer.reference
        surface, self.threshold = initial_surface(trainer)
        self.surface = surface.to(self.device)
        self.field = copy.deepcopy(trainer.field)
        self.background = Background(trainer.background.mode).to(self.device)
        self.background.load_state_dict(trainer.background.state_dict())
        self.generator = torch.Generator().manual_seed(self.config.train.seed + 1)
        groups = [{"params": [self.surface.sdf], "lr": r.lr_sdf},
                  {"params": [*self.surface.levels], "lr": r.lr_levels},
                  {"params": [self.surface.deform], "lr": r.lr_deform},
                  {"params": [self.field.planes], "lr": r.lr_texture},
                  {"params": self.field.mlp.parameters(), "lr": 0.2 * r.lr_texture}]
        if self.background.mode == "learned":
            groups.append({"params": self.background.parameters(), "lr": 0.2 * r.lr_texture})
        self.optimizer = torch.optim.Adam(groups, betas=(0.9, 0.99), eps=1e-15)
        self.base_lrs = [g["lr"] for g in groups]
        self.step_index, self.loss_ema = 0, 0.0
        # The regularisers' scales: the starting surface's edges (see normal_consistency) and area.
        start = self.surface.mesh()
        self.edge_count = int(1.5 * len(start.faces))
        self.start_area = float(surface_area(start).detach())
        self.timings = {"extract": 0.0, "render": 0.0, "guidance": 0.0, "backward": 0.0, "steps": 0}

    # --- Rendering --------------------------------------------------------------------------

    def render(self, mesh: TriangleMesh, cameras: Cameras, size: int, mode: str = "albedo",
               light: torch.Tensor | None = None, background: Background | None = None,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(rgb [B, 3, S, S] over the background, opacity [B, 1, S, S], the solid background
        colours [B, 3] or None) of `mesh` textured by the field's albedo."""
        topology = mesh.topology
        screen = to_screen(mesh.vertices, cameras, size)
        raster = rasterize(screen, mesh.faces)
        # The texture follows the surface; the surface answers to the silhouettes and the
        # regularisers only (a colour lookup moving with the geometry would pull it by the
        # texture's errors).
        normals = torch.nn.functional.normalize(raster.interpolate(mesh.vertex_normals()), dim=-1)
        points = raster.interpolate(mesh.vertices).detach()
        albedo = self.field.albedo_through(points, normals.detach()) if len(points) else points
        colour = shade(albedo, normals, light, mode, self.views.shading.ambient)
        background = background or self.background
        solid = background.solid(len(cameras), generator, colour.device)
        if solid is None:
            behind = background(generate_rays(cameras, size).directions, generator)
        else:
            behind = solid[:, None, None].expand(-1, size, size, -1)
        fill = torch.cat([behind, torch.zeros_like(behind[..., :1])], -1)
        image = raster.image(torch.cat([colour, torch.ones_like(colour[:, :1])], -1), fill)
        image = antialias(image, raster, screen, topology).permute(0, 3, 1, 2)
        return image[:, :3], image[:, 3:], solid

    def shading_mode(self) -> str:
        s = self.views.shading
        p = torch.tensor([s.p_albedo, s.p_lambertian, s.p_textureless])
        return SHADING_MODES[int(torch.multinomial(p / p.sum(), 1, generator=self.generator))]

    # --- Optimisation -----------------------------------------------------------------------

    def learning_rate_factor(self) -> float:
        """1 until refine.lr_decay_from of the steps, then falling geometrically to
        refine.lr_decay_to at the last step. The sub-linear normal term is, like an L1 penalty,
        steepest at zero bend: at a fixed rate Adam keeps flat faces trembling about flat (on
        the order of its step), and a falling rate lets them settle."""
        r = self.config.refine
        done = self.step_index / max(r.steps, 1)
        if done <= r.lr_decay_from or r.lr_decay_from >= 1.0:
            return 1.0
        return r.lr_decay_to ** min((done - r.lr_decay_from) / (1.0 - r.lr_decay_from), 1.0)

    def train_step(self) -> float:
        c, r = self.config, self.config.refine
        start = time.perf_counter()
        factor = self.learning_rate_factor()
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor
        mesh = self.surface.mesh()
        if len(mesh.faces) == 0:
            raise DreamsculptError(f"The surface vanished at refinement step {self.step_index}. "
                                   "Try fewer --refine steps or another --seed.")
        tick = time.perf_counter()
        cameras = sample_cameras(self.camera, c.train.batch_size, self.generator).to(self.device)
        mode = self.shading_mode()
        rgb, opacity, solid = self.render(mesh, cameras, self.resolution, mode, light_near(cameras, self.generator),
                                          generator=self.generator)
        tock = time.perf_counter()
        guided = self.guidance.grad(rgb, cameras, 1.0, self.generator, backgrounds=solid)
        tuck = time.perf_counter()
        if not torch.isfinite(guided.grad).all():
            raise NonFiniteError(f"The guidance gradient became NaN/Inf at refinement step {self.step_index}. "
                                 "Try a lower --guidance-scale, fewer --refine steps or another --seed.")
        loss = c.train.guidance_weight * (rgb * guided.grad).sum() / opacity.numel()
        loss = loss + r.lambda_normal * normal_consistency(mesh, self.edge_count)
        loss = loss + r.lambda_area * surface_area(mesh) / self.start_area
        if r.lambda_laplacian:
            loss = loss + r.lambda_laplacian * laplacian(mesh, self.surface.grid.cell)
        if self.reference is not None:
            loss = loss + self.reference_loss(mesh)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if not all(torch.isfinite(p.grad).all() for g in self.optimizer.param_groups for p in g["params"]
                   if p.grad is not None):
            raise NonFiniteError(f"Parameter gradients became NaN/Inf at refinement step {self.step_index}. "
                                 "Try fewer --refine steps or another --seed.")
        self.optimizer.step()
        done = time.perf_counter()
        for key, dt in (("extract", tick - start), ("render", tock - tick), ("guidance", tuck - tock),
                        ("backward", done - tuck)):
            self.timings[key] += dt
        self.timings["steps"] += 1
        self.step_index += 1
        return guided.loss

    def reference_loss(self, mesh: TriangleMesh) -> torch.Tensor:
        """The coarse stage's reference-view terms (image_to_3d), on the mesh's render from the
        picture's camera at the picture's resolution."""
        ref = self.reference
        rgb, opacity, _ = self.render(mesh, ref.camera, ref.rgb.shape[-1], background=Background("white"))
        return (ref.lambda_rgb * torch.nn.functional.mse_loss(rgb, ref.rgb)
                + ref.lambda_mask * torch.nn.functional.mse_loss(opacity, ref.mask))

    def run(self) -> Surface:
        """Refine until `config.refine.steps` (from `self.step_index`); the closed surface.

        With deterministic algorithms (the CPU's index_add and scatter otherwise sum in a varying
        order): two runs of one field came out 0.0017 apart in the signed distances after 20
        steps, and the cube's flat share a point apart after 800; now a seed gives one surface,
        as the coarse stage does, for about 8% more time."""
        with deterministic():
            run_steps(self, self.config.refine.steps, self.config.train, "refining", "refinement step")
        return self.result()

    @torch.no_grad()
    def result(self) -> Surface:
        """The refined surface as one closed solid (small floating pieces dropped)."""
        mesh = self.surface.mesh()
        surface = Surface(mesh.vertices.cpu().numpy().astype(np.float32), mesh.faces.cpu().numpy()).cleaned()
        return surface.without_small_parts(self.config.mesh.min_component_fraction)

    def ms_per_step(self) -> dict[str, float]:
        steps = max(self.timings["steps"], 1)
        return {k: round(1e3 * self.timings[k] / steps, 2) for k in ("extract", "render", "guidance", "backward")}

    # --- Pictures ---------------------------------------------------------------------------

    @torch.no_grad()
    def views_of(self, azimuths, elevation: float = 20.0, size: int | None = None) -> torch.Tensor:
        """[K, 3, S, S] albedo renders of the current surface over white (or the learned backdrop)."""
        camera = self.views.camera
        cams = Cameras.from_orbit(torch.as_tensor(azimuths, dtype=torch.float32), elevation,
                                  sum(camera.distance) / 2, sum(camera.fov_deg) / 2).to(self.device)
        background = Background("white") if self.background.mode == "random" else self.background
        mesh = self.surface.mesh()
        return torch.cat([self.render(mesh, cams[i], size or self.resolution, background=background)[0]
                          for i in range(len(cams))]).clamp(0, 1).cpu()

    def pictures(self, azimuths) -> np.ndarray:
        """[K, S, S, 3] uint8 views (preview.Pictures) at the refinement's resolution."""
        views = self.views_of(azimuths, size=max(self.resolution, 96))
        return (views.permute(0, 2, 3, 1) * 255).round().byte().numpy()

    def preview_image(self) -> torch.Tensor:
        """[3, S, S] from a camera that turns as the refinement goes (train.preview_size)."""
        az = -90.0 + 360.0 * self.step_index / max(self.config.refine.steps, 1)
        return self.views_of([az], size=self.config.train.preview_size)[0]

    # --- Checkpoints ------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"step": self.step_index, "coarse_steps": self.coarse_steps, "surface": self.surface.state_dict(),
                "field": self.field.state_dict(), "background": self.background.state_dict(),
                "optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(),
                "refine": self.config.to_dict()["refine"]}

    def save_checkpoint(self) -> None:
        if self.checkpoint_path is not None:
            save_atomically(self.state_dict(), self.checkpoint_path)

    def load_checkpoint(self, path: Path) -> bool:
        """Continue from `path` when it belongs to this coarse field and these refinement
        settings (steps aside); False (and a fresh start) otherwise."""
        state = read_checkpoint(path, self.device)
        settings = {k: v for k, v in state["refine"].items() if k != "steps"}
        ours = {k: v for k, v in self.config.to_dict()["refine"].items() if k != "steps"}
        if state["coarse_steps"] != self.coarse_steps or settings != ours:
            return False
        if state["surface"]["sdf"].shape != self.surface.sdf.shape:
            return False
        self.surface.load_state_dict(state["surface"])
        self.field.load_state_dict(state["field"])
        self.background.load_state_dict(state["background"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.step_index = state["step"]
        return True


@contextmanager
def deterministic():
    """torch's deterministic algorithms while it lasts (a process-wide setting, put back after)."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def at_references(camera: CameraConfig) -> CameraConfig:
    """The fine stage's cameras: for a posed image set (its viewpoints are the anchors), exactly
    where its pictures were taken. At the fine stage's low noise the closed-form denoiser
    answers with the nearest picture, so a render from between two of them was compared with a
    picture from elsewhere and its outline pulled the wrong way (the built-in cube at 200
    steps: IoU 0.961 -> 0.935 from the coarse stage's jittered and free cameras, -> 0.964 here).
    Priors without poses (Stable Diffusion, Zero123) keep the coarse stage's cameras."""
    if not camera.anchors:
        return camera
    return replace(camera, anchor_probability=1.0, anchor_jitter_deg=0.0)


def normal_consistency(mesh: TriangleMesh, per: int | None = None, eps: float = 1e-4) -> torch.Tensor:
    """The summed bend between the normals of faces sharing an edge, (1 - cos)^(1/4) (about the
    square root of the angle), over `per` (default: the number of such edges).

    Sub-linear in the angle, so one sharp edge costs less than the same turn spread over many:
    a quadratic 1 - cos rounded the cube towards a ball (its faces bulged as its edges sank),
    and a linear sqrt(1 - cos) cost a rounded edge or a pillowed face about the same as a flat
    face with a sharp edge, and left them so. `eps` keeps the gradient finite at zero bend (an
    angle of about 0.8 degrees). Flat faces also need `surface_area`: the built-in cube had 77%
    of its area within 5 degrees of an axis after 200 steps with the linear term, 79% with this
    one, 91% after 800; with the area term too, 94.4% after 800 (bench/bench_refine.py;
    runs of one field differ by about a point: the CPU backward is not deterministic)."""
    normals = mesh.face_normals()
    pairs = mesh.topology.face_pairs
    bend = (1.0 - (normals[pairs[:, 0]] * normals[pairs[:, 1]]).sum(-1)).clamp_min(0.0)
    return ((bend + eps) ** 0.25 - eps ** 0.25).sum() / (per or max(len(pairs), 1))


def surface_area(mesh: TriangleMesh) -> torch.Tensor:
    """The mesh's area. Minimised against the silhouettes, it flattens what they do not see: a
    surface seen from finitely many perspective cameras may bulge between its outlines (the
    visual hull of the built-in library's 72 views rises 0.023 over the middle of each side of
    the unit cube, 0.003 over its top and bottom: where the coarse stage left the sides), and
    the least area that keeps the outlines spans them flat.

    It also pulls curved surfaces in between their outlines, by as much as its weight allows
    against the guidance (refine.lambda_area): at 0.05 the cube was flat after 500 steps but
    the torus's IoU fell from 0.95 to 0.84 and went on falling; at 0.015 the torus settles about
    0.004 inside its true surface and the cube has 94.4% of its area within 5 degrees of an
    axis after 800 steps."""
    v = mesh.vertices[mesh.faces]
    return torch.linalg.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1).norm(dim=-1).sum() / 2


def laplacian(mesh: TriangleMesh, cell: float) -> torch.Tensor:
    """Mean squared offset of each vertex from the mean of its neighbours, in cells^2."""
    edges = mesh.topology.edges
    v = mesh.vertices
    total = torch.zeros_like(v).index_add(0, edges[:, 0], v[edges[:, 1]]).index_add(0, edges[:, 1], v[edges[:, 0]])
    degree = torch.zeros(len(v), device=v.device).index_add(0, edges.reshape(-1), torch.ones(edges.numel(), device=v.device))
    offset = total / degree.clamp_min(1)[:, None] - v
    return offset.square().sum(-1).mean() / (cell * cell)

