"""Zero-1-to-3 (Zero123, Zero123-XL, Stable Zero123): novel views and latent SDS from one image.

Zero123 is Stable Diffusion 1.x fine-tuned on Objaverse renders to draw an object from a
camera given relative to the camera of one input image. Assembled here from diffusers parts:

* UNet2DConditionModel with 8 input channels: 4 noisy latents + 4 latents of the input image
  ("c_concat": the VAE posterior *mode* of the image in [-1, 1], NOT multiplied by the VAE
  scaling factor -- zero123 was trained that way, see `encode_first_stage(x).mode()` in
  cvlab-columbia/zero123 `gradio_new.py` and threestudio `zero123_guidance.py`).
* CLIPVisionModelWithProjection: the image embedding (OpenAI ViT-L/14, 768-d), and the camera
  projection `cc_projection` (Linear(768 + 4 -> 768)) over [embedding, 4-d camera]: the
  UNet's only cross-attention token ("c_crossattn", [B, 1, 768]).
* Classifier-free guidance: the unconditional branch gets a zero token (after the projection)
  and zero concat latents (zero123 `gradio_new.py`; threestudio `get_cond`).

Weights come from a hub id (Hugging Face cache first, then the network), a diffusers folder
in the layout of the converted repos (model_index.json; the projection in `cc_projection/`
with keys `projection.*` as in kxic/zero123-xl and diffusers' community `pipeline_zero1to3`,
or in `clip_camera_projection/` with keys `proj.*` as in ashawkey/zero123-xl-diffusers and
bennyguo/zero123-xl-diffusers), or one original checkpoint (zero123-xl.ckpt,
stable_zero123.ckpt) converted with diffusers' own LDM converters.

The frozen model (`Zero123Components`) is in `zero123_parts.py`, loading it (hub id, converted
folders, one original checkpoint) in `zero123_loading.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..cameras import Cameras, angle_between_views
from ..config import GuidanceConfig
from ..devices import resolve_device, resolve_dtype
from ..errors import CancelledError
from .base import GuidanceOutput, chosen_background, make_schedule
from .zero123_parts import VARIANTS, Zero123Components, resize_square, resolve_variant

DEFAULT_GUIDANCE_SCALE = 3.0   # zero123's sampling default; SDS setups use 3-5
#: Zero123 renders objects scaled to a unit bounding box (half-extent 0.5, zero123's
#: objaverse-rendering `normalize_scene`); our canonical object fills [-1, 1]^3.
DISTANCE_SCALE = 0.5

# --------------------------------------------------------------------------- camera embedding

def camera_embedding(conditioning: Cameras, targets: Cameras, variant: str = "zero123",
                     distance_scale: float = DISTANCE_SCALE) -> torch.Tensor:
    """The 4-d relative camera a Zero123 UNet is conditioned on, [B, 4] float32.

    conditioning: the camera(s) of the input image; targets: the cameras to draw. Either may
    have length 1 (broadcast). Angles in degrees in our orbit convention (cameras.py: azimuth
    from +X towards +Y, elevation above the XY plane, world +Z up).

    Zero123 / Zero123-XL, from the training data (zero123 `ldm/data/simple.py`, `get_T`):
    camera centres in Blender's Z-up world, polar theta = atan2(|xy|, z) = 90 deg - elevation,
    azimuth = atan2(y, x), radius z, and

        T = [theta_t - theta_c, sin(az_t - az_c), cos(az_t - az_c), z_t - z_c]

    Their world and azimuth are ours (Blender, Z up, from +X towards +Y, counter-clockwise
    seen from above), so the azimuth difference keeps its sign: Δaz = az_target - az_input,
    and Δpolar = elevation_input - elevation_target (radians). Cross-check: zero123's demo
    says a positive azimuth moves the camera to the right; from our front camera (azimuth
    -90, on -Y) image-right is +X, and increasing azimuth moves the camera towards +X
    (azimuth 0). The distance term is in zero123's object units (objects scaled to a unit
    box; ours fill [-1, 1]^3), hence `distance_scale` 0.5.

    Stable Zero123 (threestudio `stable_zero123_guidance.py`, `get_cond`; the same in
    DreamGaussian's `zero123_utils.py`, whose elevation is negated): the same first three
    terms, and instead of Δdistance the input view's own polar angle, deg2rad(90 - el_input).
    """
    el_c, az_c, d_c = conditioning.elevation_deg, conditioning.azimuth_deg, conditioning.distance
    el_t, az_t, d_t = targets.elevation_deg, targets.azimuth_deg, targets.distance
    d_polar = torch.deg2rad(el_c - el_t)
    d_azimuth = torch.deg2rad(az_t - az_c)
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got '{variant}'")
    if variant == "stable_zero123":
        last = torch.deg2rad(90.0 - el_c)
    else:
        last = distance_scale * (d_t - d_c)
    d_polar, d_azimuth, last = torch.broadcast_tensors(d_polar, d_azimuth, last)
    return torch.stack([d_polar, torch.sin(d_azimuth), torch.cos(d_azimuth), last], -1).float()



# --------------------------------------------------------------------------- SDS guidance

def _check_reference(rgb: torch.Tensor, camera: Cameras) -> None:
    if rgb.ndim != 3 or rgb.shape[0] != 3:
        raise ValueError(f"reference_rgb must be [3, S, S] in [0, 1], got {tuple(rgb.shape)}")
    if len(camera) != 1:
        raise ValueError(f"reference_camera must hold one camera, got {len(camera)}")


class Zero123Guidance:
    """Latent SDS with Zero123: renders from novel cameras are scored against the reference
    image, conditioned on each camera relative to the reference camera."""

    def __init__(self, config: GuidanceConfig, components: Zero123Components | None,
                 reference_rgb: torch.Tensor, reference_camera: Cameras):
        """reference_rgb: [3, S, S] in [0, 1] composited over white; reference_camera: the
        orbit camera (azimuth, elevation, distance) it was seen from, length 1. Without
        components, config.zero123_model is loaded on config.device."""
        _check_reference(reference_rgb, reference_camera)
        if components is None:
            from .zero123_loading import load_zero123_components

            device = resolve_device(config.device)
            components = load_zero123_components(config.zero123_model, device,
                                                 resolve_dtype(config.fp16, device),
                                                 config.zero123_variant)
        self.parts = components
        self.device = components.device
        self.variant = (components.variant if config.zero123_variant == "auto"
                        else resolve_variant(components.source, config.zero123_variant))
        self.background = chosen_background(config.background, "white")
        self.scale = DEFAULT_GUIDANCE_SCALE if config.guidance_scale is None else config.guidance_scale
        self.schedule = make_schedule(config, components.alphas_cumprod)
        self.reference_camera = reference_camera.to("cpu")
        self.clip, self.concat = components.encode_views(reference_rgb[None])  # [1,1,P], [1,4,h,w]

    def describe(self) -> str:
        size, dtype = self.parts.native_size, str(self.parts.unet.dtype).replace("torch.", "")
        return (f"Zero123 '{self.parts.source or 'preloaded'}' ({self.variant}, {size} px, "
                f"{dtype}, {self.device}), guidance scale {self.scale:g}")

    def grad(self, images: torch.Tensor, cameras: Cameras, progress: float,
             generator: torch.Generator, backgrounds: torch.Tensor | None = None) -> GuidanceOutput:
        """images: [B, 3, H, W] renders in [0, 1] over white (`backgrounds` is not used: the
        reference picture is over white), seen from `cameras`. Returns
        d(SDS loss)/d(images), [B, 3, H, W]: w(t) (eps_cfg - eps), w = 1 - alpha_bar, taken
        as d(loss)/d(latents) and pulled back through the VAE encoder and the resize."""
        parts = self.parts
        images_in = images.detach().requires_grad_(True)   # the caller's graph stays untouched
        with torch.enable_grad():
            x = resize_square(images_in.to(self.device, torch.float32), parts.native_size)
            posterior = parts.vae.encode(x * 2.0 - 1.0).latent_dist
            latents = posterior.mean * parts.vae.config.scaling_factor   # [B, 4, h, w]
        batch, steps_total = images.shape[0], parts.alphas_cumprod.shape[0]
        t = self.schedule.sample(batch, progress, generator)
        steps = (t * (steps_total - 1)).round().long().to(self.device)
        noise = torch.randn(latents.shape, generator=generator, device=generator.device)
        noise = noise.to(self.device)
        ab = parts.alphas_cumprod[steps].view(-1, 1, 1, 1)
        noisy = ab.sqrt() * latents.detach() + (1.0 - ab).sqrt() * noise
        poses = camera_embedding(self.reference_camera, cameras.to("cpu"), self.variant)
        poses = poses.to(self.device)
        hidden = parts.project(self.clip.expand(batch, -1, -1), poses)[None]
        concat = self.concat.expand(batch, -1, -1, -1)[None]
        out = parts.guided_output(noisy, steps, hidden, concat, self.scale)
        g = (1.0 - ab) * (parts.to_epsilon(out, noisy, steps) - noise)
        (image_grad,) = torch.autograd.grad(latents, images_in, grad_outputs=g)
        return GuidanceOutput(grad=image_grad.detach().to(images.dtype),
                              loss=float(g.pow(2).mean()),
                              t=steps.float().cpu() / (steps_total - 1))


# --------------------------------------------------------------------------- novel views

@dataclass
class _Progress:
    total: int
    on_step: Callable[[int, int], None] | None
    should_cancel: Callable[[], bool] | None
    done: int = 0

    def check(self) -> None:
        if self.should_cancel is not None and self.should_cancel():
            raise CancelledError("Novel-view sampling was cancelled.")

    def advance(self, views: int) -> None:
        self.done += views
        if self.on_step is not None:
            self.on_step(self.done, self.total)


def _denoise(parts: Zero123Components, latents: torch.Tensor, hidden: torch.Tensor,
             concat: torch.Tensor, steps: int, scale: float, progress: _Progress) -> torch.Tensor:
    """DDIM (eta 0, deterministic) from noise `latents` [B, 4, h, w] with conditioning tokens
    hidden [M, B, 1, D] and concat [M, B, 4, h, w]; returns the final latents."""
    from diffusers import DDIMScheduler

    # clip_sample off: clipping x0 to [-1, 1] is for pixels, not for latents.
    scheduler = DDIMScheduler.from_config(parts.scheduler_config, clip_sample=False)
    scheduler.set_timesteps(steps, device=latents.device)
    latents = latents * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        progress.check()
        timesteps = t.to(latents.device).long().expand(latents.shape[0])
        out = parts.guided_output(latents, timesteps, hidden, concat, scale)
        latents = scheduler.step(out, t, latents).prev_sample
        progress.advance(latents.shape[0])
    return latents


@torch.no_grad()
def sample_novel_views(components: Zero123Components, reference_rgb: torch.Tensor,
                       reference_camera: Cameras, targets: Cameras, *, steps: int = 50,
                       guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
                       generator: torch.Generator | None = None, autoregressive: bool = False,
                       neighbours: int = 2, on_step: Callable[[int, int], None] | None = None,
                       should_cancel: Callable[[], bool] | None = None) -> torch.Tensor:
    """K novel views of the reference object: [K, 3, S, S] in [0, 1], S = native_size.

    reference_rgb: [3, H, W] in [0, 1] over white, seen from reference_camera (length 1);
    targets: the K cameras to draw. DDIM with `steps` steps and classifier-free guidance.
    Batched over the K views, or with `autoregressive` (GeNVS-style) one at a time in order
    of increasing angle from the reference, each conditioned on the reference plus the
    `neighbours` nearest views already made (each with its own relative camera; their
    conditional predictions are averaged before guidance). on_step(done, total) runs after
    every denoising step, counting view-steps (total = K * steps; a batched step counts K);
    should_cancel() is checked before every step and raises CancelledError. The starting
    noise of view k is the same in both modes, so a seeded generator gives the same images
    run after run."""
    _check_reference(reference_rgb, reference_camera)
    parts, count = components, len(targets)
    reference_camera, targets = reference_camera.to("cpu"), targets.to("cpu")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    shape = (count, parts.unet.config.out_channels, parts.latent_size, parts.latent_size)
    noise = torch.randn(shape, generator=generator, device=generator.device).to(parts.device)
    progress = _Progress(count * steps, on_step, should_cancel)
    ref_clip, ref_concat = parts.encode_views(reference_rgb[None])
    if count == 0:
        return torch.zeros(0, 3, parts.native_size, parts.native_size, device=parts.device)
    if not autoregressive:
        poses = camera_embedding(reference_camera, targets, parts.variant).to(parts.device)
        hidden = parts.project(ref_clip.expand(count, -1, -1), poses)[None]
        concat = ref_concat.expand(count, -1, -1, -1)[None]
        return parts.decode(_denoise(parts, noise, hidden, concat, steps, guidance_scale, progress))

    from_reference = angle_between_views(reference_camera.azimuth_deg, reference_camera.elevation_deg,
                                         targets.azimuth_deg, targets.elevation_deg)
    order = torch.argsort(from_reference, stable=True).tolist()
    images: dict[int, torch.Tensor] = {}
    encoded: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for k in order:
        target = targets[k]
        made = list(images)
        nearest = []
        if made and neighbours > 0:
            angles = angle_between_views(target.azimuth_deg, target.elevation_deg,
                                         targets.azimuth_deg[made], targets.elevation_deg[made])
            nearest = [made[i] for i in torch.argsort(angles, stable=True)[:neighbours].tolist()]
        cams = [reference_camera] + [targets[j] for j in nearest]
        clips = torch.cat([ref_clip] + [encoded[j][0] for j in nearest])        # [M, 1, P]
        concat = torch.cat([ref_concat] + [encoded[j][1] for j in nearest])      # [M, 4, h, w]
        poses = torch.cat([camera_embedding(cam, target, parts.variant) for cam in cams])
        hidden = parts.project(clips, poses.to(parts.device))[:, None]          # [M, 1, 1, D]
        latents = _denoise(parts, noise[k:k + 1], hidden, concat[:, None], steps,
                           guidance_scale, progress)
        images[k] = parts.decode(latents)
        encoded[k] = parts.encode_views(images[k])
    return torch.cat([images[k] for k in range(count)])
