"""The optimisation loop, top to bottom:

    sample cameras -> render -> guidance gradient -> regularisers -> optimiser step

Seeded and deterministic on CPU for a given torch thread count; reports progress, previews, checkpoints; resumes; stops
between steps when cancelled and on the first NaN/Inf.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from .callbacks import Callbacks, Progress
from .cameras import Cameras
from .config import CameraConfig, RunConfig, ShadingConfig, TrainConfig
from .errors import CancelledError, DreamsculptError, NonFiniteError
from .fields import OccupancyGrid, TriplaneField
from .guidance.base import Guidance
from .rendering import SHADING_MODES, Background, render


@dataclass(frozen=True)
class TrainingViews:
    """Where the optimisation's cameras go and how its renders are shaded: what a prior asks of
    the run (a posed image set: its own viewpoints, albedo only), or the config's defaults."""

    camera: CameraConfig
    shading: ShadingConfig

    @staticmethod
    def of(config: RunConfig) -> "TrainingViews":
        return TrainingViews(config.camera, config.shading)


@dataclass
class PictureTarget:
    """A view the field must reproduce (image_to_3d): rgb over white [1, 3, R, R] and mask
    [1, 1, R, R] at R = the render resolution, seen by `camera` (length 1)."""

    camera: Cameras
    rgb: torch.Tensor
    mask: torch.Tensor
    lambda_rgb: float = 1.0
    lambda_mask: float = 1.0


def sample_cameras(config: CameraConfig, batch: int, generator: torch.Generator) -> Cameras:
    """Uniform azimuth, elevation, distance and FOV inside the configured ranges; with anchors,
    most cameras instead sit at a jittered anchor viewpoint. With config.ring = R > 1 each of
    the `batch` cameras brings R - 1 more at 360 / R degrees of azimuth steps from it, sharing
    its elevation, distance and FOV: [batch * R] cameras, grouped by ring."""
    def uniform(lo_hi):
        lo, hi = lo_hi
        return lo + (hi - lo) * torch.rand(batch, generator=generator)
    # Uniform in angle (not in sin(elevation)) keeps the overhead and below-the-object views
    # that the silhouettes need.
    azimuth, elevation = uniform(config.azimuth_deg), uniform(config.elevation_deg)
    if config.anchors:
        anchors = torch.tensor(config.anchors, dtype=torch.float32)
        pick = anchors[torch.randint(len(anchors), (batch,), generator=generator)]
        jitter = (torch.rand((batch, 2), generator=generator) * 2 - 1) * config.anchor_jitter_deg
        use = torch.rand(batch, generator=generator) < config.anchor_probability
        azimuth = torch.where(use, pick[:, 0] + jitter[:, 0], azimuth)
        elevation = torch.where(use, (pick[:, 1] + jitter[:, 1]).clamp(-89.0, 89.0), elevation)
    distance, fov = uniform(config.distance), uniform(config.fov_deg)
    if config.ring > 1:   # multi-view priors: [B * ring] cameras, each group a ring around the object
        turns = torch.arange(config.ring, dtype=torch.float32) * (360.0 / config.ring)
        azimuth = (azimuth[:, None] + turns[None]).reshape(-1)
        elevation, distance, fov = (v.repeat_interleave(config.ring) for v in (elevation, distance, fov))
    return Cameras.from_orbit(azimuth, elevation, distance, fov)


def light_near(cameras: Cameras, generator: torch.Generator) -> torch.Tensor:
    """A random unit light direction [3] within ~45 degrees of the first camera (DreamFusion)."""
    towards_camera = torch.nn.functional.normalize(cameras.position[0], dim=0)
    wobble = 0.7 * torch.randn(3, generator=generator).to(towards_camera.device)
    return torch.nn.functional.normalize(towards_camera + wobble, dim=0)


class Trainer:
    """Owns the field, occupancy grid, background and optimiser of one run."""

    def __init__(self, config: RunConfig, guidance: Guidance, callbacks: Callbacks | None = None,
                 checkpoint_path: Path | None = None, reference: PictureTarget | None = None,
                 views: TrainingViews | None = None):
        self.config, self.guidance = config, guidance
        self.views = views if views is not None else TrainingViews.of(config)
        self.callbacks = callbacks or Callbacks()
        self.checkpoint_path = checkpoint_path
        # The field lives where the prior runs (the reference prior is on the CPU).
        self.device = torch.device(guidance.device)
        torch.manual_seed(config.train.seed)  # module initialisation
        self.field = TriplaneField(config.field).to(self.device)
        self.background = Background(guidance.background).to(self.device)
        self.generator = torch.Generator().manual_seed(config.train.seed)
        r = config.render
        step = 2.0 * math.sqrt(3.0) * config.field.bound / r.samples_per_ray
        self.occupancy = OccupancyGrid(r.occupancy_resolution, config.field.bound, r.occupancy_threshold, step,
                                       self.device)
        t = config.train
        groups = [{"params": [self.field.planes], "lr": t.lr},
                  {"params": self.field.mlp.parameters(), "lr": t.mlp_lr}]
        if self.background.mode == "learned":
            groups.append({"params": self.background.parameters(), "lr": t.mlp_lr})
        self.optimizer = torch.optim.Adam(groups, betas=(0.9, 0.99), eps=1e-15)
        self.reference = None
        if reference is not None:
            self.reference = PictureTarget(reference.camera.to(self.device), reference.rgb.to(self.device),
                                             reference.mask.to(self.device), reference.lambda_rgb, reference.lambda_mask)
        self.step_index = 0
        self.loss_ema = 0.0
        self.timings = {"occupancy": 0.0, "render": 0.0, "guidance": 0.0, "backward": 0.0, "steps": 0}

    def shading_mode(self) -> str:
        s = self.views.shading
        if self.step_index < s.warmup_fraction * self.config.train.steps:
            return "albedo"
        p = torch.tensor([s.p_albedo, s.p_lambertian, s.p_textureless])
        return SHADING_MODES[int(torch.multinomial(p / p.sum(), 1, generator=self.generator))]

    def train_step(self) -> float:
        """One optimisation step; returns the guidance loss."""
        c, t = self.config, self.config.train
        start = time.perf_counter()
        if self.step_index % c.render.occupancy_update_every == 0:
            self.occupancy.update(self.field, self.generator)
        tick = time.perf_counter()
        self.timings["occupancy"] += tick - start
        cameras = sample_cameras(self.views.camera, t.batch_size, self.generator).to(self.device)
        mode = self.shading_mode()
        out = render(self.field, cameras, c.render.resolution, c.render.samples_per_ray, self.occupancy,
                     self.background, mode, light_near(cameras, self.generator), self.views.shading.ambient,
                     self.generator, want_normals=t.lambda_orient > 0 and mode != "albedo")
        tock = time.perf_counter()
        progress = self.step_index / max(t.steps, 1)
        # The colours behind each render (random ones on each step): a prior that knows its
        # images' masks composites them over the same colours.
        guided = self.guidance.grad(out.rgb, cameras, progress, self.generator, backgrounds=out.background)
        tuck = time.perf_counter()
        if not torch.isfinite(guided.grad).all():
            raise NonFiniteError(f"The guidance gradient became NaN/Inf at step {self.step_index}. "
                                 "Try a lower --guidance-scale or learning rate, or another --seed.")
        # Per-pixel mean (not the usual sum) so regulariser weights do not depend on resolution.
        loss = t.guidance_weight * (out.rgb * guided.grad).sum() / out.opacity.numel()
        opacity = out.opacity.clamp(1e-5, 1 - 1e-5)
        entropy = -(opacity * opacity.log() + (1 - opacity) * (1 - opacity).log()).mean()
        loss = loss + t.lambda_entropy * entropy + t.lambda_orient * out.orientation
        if self.reference is not None:
            loss = loss + self.reference_loss()
        if t.lambda_tv:
            loss = loss + t.lambda_tv * self.field.total_variation()
        if t.lambda_sparsity:
            loss = loss + t.lambda_sparsity * out.opacity.mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if not all(torch.isfinite(p.grad).all() for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None):
            raise NonFiniteError(f"Parameter gradients became NaN/Inf at step {self.step_index}. "
                                 "Try a lower learning rate or another --seed.")
        self.optimizer.step()
        done = time.perf_counter()
        for key, dt in (("render", tock - tick), ("guidance", tuck - tock), ("backward", done - tuck)):
            self.timings[key] += dt
        self.timings["steps"] += 1
        self.step_index += 1
        return guided.loss

    def ms_per_step(self) -> dict[str, float]:
        """Mean milliseconds per step of each phase so far (run.json's ms_per_step)."""
        steps = max(self.timings["steps"], 1)
        return {k: round(1e3 * self.timings[k] / steps, 2) for k in ("occupancy", "render", "guidance", "backward")}

    def reference_loss(self) -> torch.Tensor:
        """Magic123 / RealFusion reference-view terms: the render from the reference camera
        (albedo: the picture's own lighting is in its colours) against the picture and its mask."""
        ref, c = self.reference, self.config
        out = render(self.field, ref.camera, c.render.resolution, c.render.samples_per_ray, self.occupancy,
                     self.background if self.background.mode == "white" else Background("white"),
                     "albedo", None, self.views.shading.ambient, self.generator)
        rgb = torch.nn.functional.mse_loss(out.rgb, ref.rgb)
        mask = torch.nn.functional.mse_loss(out.opacity, ref.mask)
        return ref.lambda_rgb * rgb + ref.lambda_mask * mask

    def run(self) -> TriplaneField:
        """Optimise until `config.train.steps`; resumes from `self.step_index`."""
        run_steps(self, self.config.train.steps, self.config.train, "optimising", "step")
        return self.field

    @torch.no_grad()
    def preview_image(self, azimuth: float | None = None, size: int | None = None) -> torch.Tensor:
        """[3, S, S] render of the current field from a camera that turns as the run goes;
        S = `size`, else train.preview_size."""
        az = -90.0 + 360.0 * self.step_index / max(self.config.train.steps, 1) if azimuth is None else azimuth
        cam = Cameras.from_orbit(az, 20.0, sum(self.views.camera.distance) / 2,
                                 sum(self.views.camera.fov_deg) / 2).to(self.device)
        bg = Background("white") if self.background.mode == "random" else self.background
        return render(self.field, cam, size or self.config.train.preview_size, self.config.render.samples_per_ray,
                      self.occupancy, bg).rgb[0].clamp(0, 1).cpu()

    def state_dict(self) -> dict:
        return {"step": self.step_index, "field": self.field.state_dict(),
                "background": self.background.state_dict(), "optimizer": self.optimizer.state_dict(),
                "occupancy": self.occupancy.state_dict(), "generator": self.generator.get_state(),
                "config": self.config.to_dict()}

    def save_checkpoint(self) -> None:
        if self.checkpoint_path is not None:
            save_atomically(self.state_dict(), self.checkpoint_path)

    def load_checkpoint(self, path: Path) -> None:
        state = read_checkpoint(path, self.device)
        saved = RunConfig.from_dict(state["config"])
        if saved.field != self.config.field or saved.render.occupancy_resolution != self.config.render.occupancy_resolution:
            raise DreamsculptError(f"Checkpoint {path} was made with different field settings; "
                                   "resume with the same --preset and options, or start without --resume.")
        self.field.load_state_dict(state["field"])
        self.background.load_state_dict(state["background"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.occupancy.load_state_dict(state["occupancy"])
        self.generator.set_state(state["generator"])
        self.step_index = state["step"]


class Steps(Protocol):
    """What `run_steps` drives: the coarse stage's Trainer and the fine stage's Refiner."""

    step_index: int
    loss_ema: float
    callbacks: Callbacks

    def train_step(self) -> float: ...

    def preview_image(self) -> torch.Tensor: ...

    def save_checkpoint(self) -> None: ...


def run_steps(owner: Steps, total: int, every: TrainConfig, stage: str, step_name: str) -> None:
    """Step `owner` from its step_index to `total`: cancel (after a checkpoint) between steps,
    report progress as `stage`, hand out previews and write checkpoints as `every` says."""
    callbacks = owner.callbacks
    start, first = time.perf_counter(), owner.step_index
    preview_seconds = 0.0
    while owner.step_index < total:
        if callbacks.should_cancel and callbacks.should_cancel():
            owner.save_checkpoint()
            raise CancelledError(f"Cancelled at {step_name} {owner.step_index} of {total}; "
                                 "run again with --resume to continue.")
        loss = owner.train_step()
        owner.loss_ema = loss if owner.step_index == first + 1 else 0.9 * owner.loss_ema + 0.1 * loss
        elapsed = time.perf_counter() - start
        eta = elapsed / (owner.step_index - first) * (total - owner.step_index)
        if callbacks.on_progress:
            callbacks.on_progress(Progress(owner.step_index, total, owner.loss_ema, elapsed, eta, stage))
        # A preview is due every preview_every steps, unless previews already took more than
        # their share of the time (a 128 px render costs ~8 CPU steps); the last always comes.
        due = owner.step_index % every.preview_every == 0 and preview_seconds <= every.preview_budget * elapsed
        if callbacks.on_preview and (due or owner.step_index == total):
            tick = time.perf_counter()
            callbacks.on_preview(owner.step_index, owner.preview_image())
            preview_seconds += time.perf_counter() - tick
        if every.checkpoint_every and owner.step_index % every.checkpoint_every == 0 and owner.step_index < total:
            owner.save_checkpoint()


def save_atomically(state: dict, path: Path) -> None:
    """torch.save through a temporary file: a crash mid-write leaves the previous one intact."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def read_checkpoint(path: Path, device: torch.device) -> dict:
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise DreamsculptError(f"Cannot read checkpoint {path}: {exc}. Start without --resume.") from exc
