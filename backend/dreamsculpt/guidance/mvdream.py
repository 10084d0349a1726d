"""MVDream as a 2D prior: multi-view latent Score Distillation Sampling.

MVDream (Shi et al. 2023) denoises the 4 views of one object together, each told its camera,
so a face cannot appear on every side (the Janus problem): the views see each other through
the UNet's self-attention. The renders therefore arrive in groups of 4 cameras 90 degrees of
azimuth apart (CameraConfig.ring = 4: [cam0 view0..3, cam1 view0..3, ...]).

One `grad` call, top to bottom: resize the renders to 256 px, encode them with the VAE
(keeping the graph), draw one diffusion time per group of views (as MVDream was trained) and
independent noise per view, run the UNet on [unconditional, conditional] with each view's
camera, combine by classifier-free guidance, and pull the score's gradient (scores.py) back
to the renders with one autograd.grad. The text has no view suffixes: the camera says the view.
"""

from __future__ import annotations

import torch

from ..cameras import Cameras
from ..config import GuidanceConfig
from ..devices import resolve_device, resolve_dtype
from ..errors import DreamsculptError
from .base import GuidanceOutput, chosen_background, make_schedule
from .mvdream_loading import MVDreamComponents, load_mvdream_components
from .prompts import ViewPrompts
from .scores import score_gradient, score_of

#: MVDream's own SDS guidance scale: guidance_scale 50 in its threestudio config
#: (configs/mvdream-sd21.yaml of MVDream-threestudio), half of DreamFusion's 100 for SD.
DEFAULT_GUIDANCE_SCALE = 50.0


def mvdream_cameras(cameras: Cameras) -> torch.Tensor:
    """Our cameras -> MVDream's camera input, [B, 16].

    MVDream's camera is a camera-to-world matrix in a Z-up world (Blender's) with the OpenGL
    camera frame (+X image right, +Y image up, looking down -Z): its camera_utils builds it in a
    Y-up world and left-multiplies the Y-up -> Z-up flip, and threestudio passes its own c2w
    (also Z up, OpenGL frame) unchanged. Ours (cameras.py) are already in that convention, so
    the matrix is kept as it is; only the camera centre is scaled onto the unit sphere (MVDream's
    "rotation" condition: distance and field of view are not inputs) and the 4x4 is flattened
    row by row (R00 R01 R02 t0 R10 ... 0 0 0 1).

    Hand case: Blender's Front camera (our azimuth -90, elevation 0), at any distance, gives
    [[1, 0, 0, 0], [0, 0, -1, -1], [0, 1, 0, 0], [0, 0, 0, 1]], which is MVDream's
    get_camera(1, elevation=0, azimuth_start=0) (MVDream's azimuth is ours + 90 degrees)."""
    c2w = cameras.c2w.float().clone()                              # [B, 4, 4]
    centre = c2w[:, :3, 3]
    c2w[:, :3, 3] = centre / (centre.norm(dim=1, keepdim=True) + 1e-8)
    return c2w.reshape(-1, 16)


class MVDreamGuidance:
    """Multi-view latent SDS with classifier-free guidance. A natural-image model: any
    background colour is fine, so `backgrounds` is not needed in `grad`."""

    def __init__(self, config: GuidanceConfig, device: torch.device | None = None,
                 components: MVDreamComponents | None = None):
        if not config.prompt.strip():
            raise DreamsculptError("MVDream guidance needs a text prompt: pass one, or use --prior builtin "
                                   "or --prior references.")
        if config.perp_neg:
            raise DreamsculptError("Perp-Neg is for single-view priors (its negatives are view prompts); MVDream "
                                   "is told each view by its camera. Leave --perp-neg off with --prior mvdream.")
        if components is None:
            device = device if device is not None else resolve_device(config.device)
            dtype = resolve_dtype(config.fp16, device)
            components = load_mvdream_components(config.model, device, dtype)
        self.parts = components
        self.device = components.alphas_cumprod.device
        self.background = chosen_background(config.background, "learned")
        self.scale = DEFAULT_GUIDANCE_SCALE if config.guidance_scale is None else config.guidance_scale
        self.schedule = make_schedule(config, components.alphas_cumprod)
        self.score = score_of(config)
        # No view suffixes and no Perp-Neg: the camera input tells each view apart.
        self.prompts = ViewPrompts(components.encode_text, config.prompt, config.negative, view_dependent=False,
                                   perp_neg=False)

    def describe(self) -> str:
        p = self.parts
        dtype = str(p.unet.dtype).replace("torch.", "")
        return (f"MVDream '{p.source or 'preloaded'}' ({p.native_size} px, {p.views} views, {dtype}, "
                f"{self.device}), {self.score.name.upper()}, guidance scale {self.scale:g}")

    @torch.no_grad()
    def _predict_noise(self, noisy: torch.Tensor, steps: torch.Tensor, cameras: Cameras,
                       camera_input: torch.Tensor) -> torch.Tensor:
        """noisy: [N, 4, h, w] latents at integer steps [N], N = K * B for the B `cameras` (K noise
        draws, draw-major, so each group of views stays contiguous); camera_input: [B, 16].
        Returns the guided noise estimate, [N, 4, h, w] float32."""
        unet, batch, count = self.parts.unet, len(cameras), self.prompts.count
        index = torch.arange(batch).repeat(noisy.shape[0] // batch)
        cameras, camera_input = cameras[index], camera_input[index.to(camera_input.device)]
        out = unet(noisy.repeat(count, 1, 1, 1).to(unet.dtype), steps.repeat(count),
                   encoder_hidden_states=self.prompts.embeddings(cameras),
                   class_labels=camera_input.repeat(count, 1)).sample
        pred = self.prompts.guide(out, cameras, self.scale)
        if self.parts.prediction_type == "v_prediction":
            ab = self.parts.alphas_cumprod[steps].view(-1, 1, 1, 1)
            pred = ab.sqrt() * pred + (1.0 - ab).sqrt() * noisy
        return pred

    def _check_batch(self, images: torch.Tensor, cameras: Cameras) -> None:
        views, batch = self.parts.views, images.shape[0]
        if len(cameras) != batch:
            raise DreamsculptError(f"MVDream got {batch} renders but {len(cameras)} cameras.")
        if batch == 0 or batch % views:
            raise DreamsculptError(
                f"MVDream denoises {views} views of the object together, so renders come in groups of {views} "
                f"cameras {360 // views} degrees of azimuth apart, but it got {batch}. Sample the training cameras "
                f"with a ring of {views} (CameraConfig.ring = {views}).")

    def grad(self, images: torch.Tensor, cameras: Cameras, progress: float,
             generator: torch.Generator, backgrounds: torch.Tensor | None = None) -> GuidanceOutput:
        """images: [B, 3, H, W] renders in [0, 1], B a multiple of 4 (groups of views); cameras:
        the B cameras in the same order. Returns d(loss)/d(images), [B, 3, H, W].

        The gradient does not flow through the UNet: g (scores.py) is taken as d(loss)/d(latents)
        and pulled back through the VAE encoder and the resize."""
        self._check_batch(images, cameras)
        images_in = images.detach().requires_grad_(True)  # the caller's render graph is left alone
        with torch.enable_grad():
            latents = self.parts.encode_images(images_in)  # [B, 4, h, w]
        batch, views, steps_total = images.shape[0], self.parts.views, self.parts.alphas_cumprod.shape[0]
        t = self.schedule.sample(batch // views, progress, generator).repeat_interleave(views)  # [B]
        steps = (t * (steps_total - 1)).round().long().to(self.device)
        camera_input = mvdream_cameras(cameras).to(self.device, self.parts.unet.dtype)
        g = score_gradient(self.score, latents, steps, self.parts.alphas_cumprod,
                           lambda noisy, at: self._predict_noise(noisy, at, cameras, camera_input), generator)
        # non-finite values are left for the loop to catch
        (image_grad,) = torch.autograd.grad(latents, images_in, grad_outputs=g)
        return GuidanceOutput(grad=image_grad.detach().to(images.dtype), loss=float(g.pow(2).mean()),
                              t=steps.float().cpu() / (steps_total - 1))
