"""Stable Diffusion as a 2D prior: latent Score Distillation Sampling.

One `grad` call, top to bottom: resize the renders to the UNet's native size, encode them
with the VAE (keeping the graph), add noise at a sampled timestep, run the UNet once on
[unconditional, conditional], combine by classifier-free guidance, and carry
w(t) * (eps_cfg - eps) from latent space back to image space with one autograd.grad.

Models come from a hub id (Hugging Face cache first, then the network), a local diffusers
folder (model_index.json) or one .safetensors/.ckpt file. diffusers and transformers are
imported inside the loaders so importing this module stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..cameras import Cameras
from ..config import DEFAULT_SD_MODEL, GuidanceConfig
from ..devices import resolve_device, resolve_dtype
from ..errors import DreamsculptError
from .base import GuidanceOutput, chosen_background, make_schedule
from .hub import (
    SINGLE_FILE_SUFFIXES,
    first_line,
    is_offline_error,
    load_from_hub,
    looks_like_path,
)
from .prompts import ViewPrompts
from .scores import score_gradient, score_of

DEFAULT_GUIDANCE_SCALE = 100.0  # DreamFusion's value: SDS needs far more than sampling's 7.5
_WHAT_TO_DO = ("Download it once with network access, pass a local copy with --model PATH, "
               "or use the offline reference prior with --prior builtin.")


@dataclass
class SDComponents:
    """The frozen parts SDS needs. alphas_cumprod: [T] float32 on the UNet's device
    (T = 1000 training steps); prediction_type: "epsilon" or "v_prediction"."""

    unet: Any                 # diffusers UNet2DConditionModel, in the run's dtype
    vae: Any                  # diffusers AutoencoderKL, always float32 (see _freeze)
    text_encoder: Any         # transformers CLIPTextModel
    tokenizer: Any            # transformers CLIPTokenizer
    alphas_cumprod: torch.Tensor
    prediction_type: str = "epsilon"
    source: str = ""          # what --model named, for messages

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def native_size(self) -> int:
        """Side in pixels the UNet was trained at (512 for SD 2.1-base)."""
        return self.vae_scale_factor * self.unet.config.sample_size

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """N prompts -> [N, L, D] CLIP hidden states in the UNet's dtype, on its device
        (L = tokenizer.model_max_length)."""
        tok = self.tokenizer
        ids = tok(prompts, padding="max_length", max_length=tok.model_max_length,
                  truncation=True, return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self.alphas_cumprod.device))[0].to(self.unet.dtype)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] -> [B, 4, h, w] scaled latents (differentiable), where
        h = w = unet.config.sample_size: resized to the native size, VAE posterior mean."""
        size = self.native_size
        x = images.to(self.alphas_cumprod.device, torch.float32)
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        posterior = self.vae.encode(x * 2.0 - 1.0).latent_dist
        return posterior.mean * self.vae.config.scaling_factor


def load_sd_components(model: str = DEFAULT_SD_MODEL, device: torch.device | str = "cpu",
                       dtype: torch.dtype = torch.float32) -> SDComponents:
    """Load and freeze a Stable Diffusion model: a hub id, a local diffusers folder or one
    .safetensors/.ckpt file. Raises DreamsculptError saying what to do when it cannot."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise DreamsculptError(
                f"'{model}' is a folder but not a diffusers Stable Diffusion folder (no "
                "model_index.json). Pass a diffusers folder or one .safetensors/.ckpt file "
                "with --model PATH, or use --prior builtin.")
        try:
            parts = _load_parts(str(path), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise DreamsculptError(
                f"Could not load the diffusers folder '{model}' ({first_line(exc)}). Pass a "
                "complete Stable Diffusion folder with --model PATH, or use --prior builtin."
            ) from exc
    elif path.is_file():
        parts = _load_single_file(path)
    elif looks_like_path(model):
        raise DreamsculptError(
            f"Stable Diffusion model path '{model}' does not exist. Pass an existing diffusers "
            "folder or .safetensors/.ckpt file with --model PATH, or use --prior builtin.")
    else:
        parts = _load_from_hub(model)
    if parts[0].config.get("class_embed_type") == "projection":   # the UNet takes a camera
        raise DreamsculptError(f"'{model}' is a multi-view (MVDream) model, not Stable Diffusion: use it with "
                               "--prior mvdream.")
    components = _freeze(*parts, device=torch.device(device), dtype=dtype)
    components.source = model
    return components


def _load_parts(source: str, local_files_only: bool) -> tuple:
    """(unet, vae, text_encoder, tokenizer, scheduler) from a diffusers layout (folder or hub)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    kw = {"local_files_only": local_files_only}
    return (UNet2DConditionModel.from_pretrained(source, subfolder="unet", **kw),
            AutoencoderKL.from_pretrained(source, subfolder="vae", **kw),
            CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **kw),
            CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **kw),
            DDPMScheduler.from_pretrained(source, subfolder="scheduler", **kw))


def _load_from_hub(repo: str) -> tuple:
    return load_from_hub(repo, _load_parts, "Stable Diffusion model", _WHAT_TO_DO)


def _load_single_file(path: Path) -> tuple:
    """One original-format checkpoint through diffusers' from_single_file.

    The weights are local, but diffusers also needs the diffusers-format configs of the
    matching model: a diffusers folder holding the file (as the official SD repos do) is used
    as that config; otherwise diffusers infers a hub repo from the weights and reads its
    configs from the Hugging Face cache, downloading them (small JSON files) when missing.
    Inference cannot tell SD 2.1-base (512 px, epsilon) from SD 2.1 (768 px, v-prediction):
    both map to the latter, which is why a surrounding diffusers folder takes precedence.
    """
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        raise DreamsculptError(
            f"'{path}' is not a .safetensors or .ckpt file. Pass a diffusers folder or one "
            "checkpoint file with --model PATH, or use --prior builtin.")
    config = str(path.parent) if (path.parent / "model_index.json").is_file() else None
    try:
        pipe = StableDiffusionPipeline.from_single_file(
            str(path), config=config, local_files_only=True, safety_checker=None,
            feature_extractor=None, requires_safety_checker=False)
    except Exception as exc:  # noqa: BLE001
        if is_offline_error(exc):
            raise DreamsculptError(
                f"Could not load the checkpoint '{path}': diffusers needs the configuration "
                "files of the matching Stable Diffusion model, they are not in the Hugging Face "
                "cache and the model hub is unreachable. Run once with network access, put the "
                "file inside a diffusers folder of the same model (one with model_index.json), "
                "pass a diffusers folder with --model PATH, or use --prior builtin.") from exc
        raise DreamsculptError(
            f"Could not load '{path}' as a Stable Diffusion checkpoint ({first_line(exc)}). "
            "Pass a Stable Diffusion 1.x/2.x checkpoint or diffusers folder with --model PATH, "
            "or use --prior builtin.") from exc
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    return pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, scheduler


def _freeze(unet, vae, text_encoder, tokenizer, scheduler, device: torch.device,
            dtype: torch.dtype) -> SDComponents:
    """Move to the device, freeze every weight. The VAE stays float32 even when the UNet is
    fp16: SDS backpropagates through its encoder, and SD's VAE overflows in fp16 (NaN
    latents and gradients at 512 px); it is small, so fp32 costs little."""
    for module, module_dtype in ((unet, dtype), (text_encoder, dtype), (vae, torch.float32)):
        module.requires_grad_(False).eval().to(device)
        if module.dtype != module_dtype:  # cast only when needed (diffusers warns on casts)
            module.to(module_dtype)
    alphas = scheduler.alphas_cumprod.to(device, torch.float32)
    return SDComponents(unet, vae, text_encoder, tokenizer, alphas,
                        scheduler.config.get("prediction_type", "epsilon"))


class StableDiffusionGuidance:
    """Latent SDS with classifier-free guidance and view-dependent prompts. A natural-image
    model: any background colour is fine, so `backgrounds` is not needed in `grad`."""

    def __init__(self, config: GuidanceConfig, device: torch.device | None = None,
                 components: SDComponents | None = None):
        if not config.prompt.strip():
            raise DreamsculptError("Stable Diffusion guidance needs a text prompt: pass one, "
                                   "or use --prior builtin or --prior references.")
        if components is None:
            device = device if device is not None else resolve_device(config.device)
            dtype = resolve_dtype(config.fp16, device)
            components = load_sd_components(config.model, device, dtype)
        self.parts = components
        self.device = components.alphas_cumprod.device
        self.background = chosen_background(config.background, "learned")
        self.scale = (DEFAULT_GUIDANCE_SCALE if config.guidance_scale is None
                      else config.guidance_scale)
        self.schedule = make_schedule(config, components.alphas_cumprod)
        self.score = score_of(config)
        self.prompts = ViewPrompts(components.encode_text, config.prompt, config.negative, config.view_dependent,
                                   config.perp_neg)

    def describe(self) -> str:
        size, dtype = self.parts.native_size, str(self.parts.unet.dtype).replace("torch.", "")
        views = "view-dependent prompts" if self.prompts.view_dependent else "one prompt"
        views += " with Perp-Neg" if self.prompts.perp_neg else ""
        return (f"Stable Diffusion '{self.parts.source or 'preloaded'}' ({size} px, {dtype}, "
                f"{self.device}), {self.score.name.upper()}, guidance scale {self.scale:g}, {views}")

    @torch.no_grad()
    def _predict_noise(self, noisy: torch.Tensor, steps: torch.Tensor, cameras: Cameras) -> torch.Tensor:
        """noisy: [N, 4, h, w] latents at integer steps [N], N = K * B for the B `cameras`
        (K noise draws, draw-major). Returns the guided noise estimate, [N, 4, h, w] float32."""
        unet, batch = self.parts.unet, len(cameras)
        cameras = cameras[torch.arange(batch).repeat(noisy.shape[0] // batch)]
        count = self.prompts.count
        out = unet(noisy.repeat(count, 1, 1, 1).to(unet.dtype), steps.repeat(count),
                   encoder_hidden_states=self.prompts.embeddings(cameras)).sample
        pred = self.prompts.guide(out, cameras, self.scale)
        if self.parts.prediction_type == "v_prediction":  # SD 2.x 768 models predict v
            ab = self.parts.alphas_cumprod[steps].view(-1, 1, 1, 1)
            pred = ab.sqrt() * pred + (1.0 - ab).sqrt() * noisy
        return pred

    def grad(self, images: torch.Tensor, cameras: Cameras, progress: float,
             generator: torch.Generator, backgrounds: torch.Tensor | None = None) -> GuidanceOutput:
        """images: [B, 3, H, W] renders in [0, 1]. Returns d(loss)/d(images), [B, 3, H, W].

        The gradient does not flow through the UNet: g (scores.py: SDS's w(t) (eps_cfg - eps),
        or SJC's average) is taken as d(loss)/d(latents) and pulled back through the VAE
        encoder and the resize."""
        # A detached leaf: the caller's render graph is never traversed or freed here.
        images_in = images.detach().requires_grad_(True)
        with torch.enable_grad():
            latents = self.parts.encode_images(images_in)  # [B, 4, h, w]
        batch, steps_total = images.shape[0], self.parts.alphas_cumprod.shape[0]
        t = self.schedule.sample(batch, progress, generator)  # [B] in [0, 1]
        steps = (t * (steps_total - 1)).round().long().to(self.device)
        g = score_gradient(self.score, latents, steps, self.parts.alphas_cumprod,
                           lambda noisy, at: self._predict_noise(noisy, at, cameras), generator)
        # non-finite values are left for the loop to catch
        (image_grad,) = torch.autograd.grad(latents, images_in, grad_outputs=g)
        return GuidanceOutput(grad=image_grad.detach().to(images.dtype),
                              loss=float(g.pow(2).mean()),
                              t=steps.float().cpu() / (steps_total - 1))
