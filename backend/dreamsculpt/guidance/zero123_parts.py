"""The frozen Zero-1-to-3 model: `Zero123Components` (UNet, VAE, CLIP image encoder, camera
projection) and what it needs to run: encoding views, one guided UNet call, decoding.

Both the SDS guidance and novel-view sampling (zero123.py) and the loaders
(zero123_loading.py) import this module; it imports neither, so loading and using a model
stay one-way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import DreamsculptError

VARIANTS = ("zero123", "stable_zero123")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def resolve_variant(model: str, variant: str = "auto") -> str:
    """"auto": "stable_zero123" when the model name or path mentions both "stable" and
    "zero123" (any case), else "zero123". Raises DreamsculptError for an unknown variant."""
    if variant == "auto":
        name = str(model).lower()
        return "stable_zero123" if "stable" in name and "zero123" in name else "zero123"
    if variant not in VARIANTS:
        raise DreamsculptError(f"Unknown Zero123 variant '{variant}': use auto, "
                               + " or ".join(VARIANTS) + ".")
    return variant


@dataclass
class Zero123Components:
    """The frozen parts. alphas_cumprod: [T] float32 on the UNet's device; scheduler_config:
    the diffusers scheduler config (for DDIM sampling); clip_mean / clip_std: the image
    normalisation of the CLIP encoder; variant: which camera embedding the UNet expects."""

    unet: Any                  # diffusers UNet2DConditionModel, 8 input channels, run dtype
    vae: Any                   # diffusers AutoencoderKL, always float32
    image_encoder: Any         # transformers CLIPVisionModelWithProjection, run dtype
    cc_projection: torch.nn.Linear   # (projection_dim + 4) -> cross_attention_dim
    alphas_cumprod: torch.Tensor
    scheduler_config: dict
    prediction_type: str = "epsilon"
    clip_mean: tuple = CLIP_MEAN
    clip_std: tuple = CLIP_STD
    variant: str = "zero123"
    source: str = ""

    @property
    def device(self) -> torch.device:
        return self.alphas_cumprod.device

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_size(self) -> int:
        return self.unet.config.sample_size

    @property
    def native_size(self) -> int:
        """Side in pixels the UNet was trained at (256 for Zero123)."""
        return self.vae_scale_factor * self.unet.config.sample_size

    @property
    def clip_size(self) -> int:
        """CLIP's input side: the encoder's own (its position embeddings fix it)."""
        return self.image_encoder.config.image_size

    @torch.no_grad()
    def encode_views(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[N, 3, H, W] in [0, 1] over white -> (CLIP embeddings [N, 1, P] in the run dtype,
        concat latents [N, 4, h, w] float32, unscaled posterior mode)."""
        x = resize_square(images.to(self.device, torch.float32), self.native_size, antialias=True)
        # zero123's FrozenCLIPImageEmbedder: bicubic, corners aligned, no antialiasing.
        c = F.interpolate(x, size=(self.clip_size,) * 2, mode="bicubic", align_corners=True)
        mean = torch.tensor(self.clip_mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.clip_std, device=self.device).view(1, 3, 1, 1)
        dtype = next(self.image_encoder.parameters()).dtype
        embeds = self.image_encoder(pixel_values=((c - mean) / std).to(dtype)).image_embeds
        concat = self.vae.encode(x * 2.0 - 1.0).latent_dist.mode()
        return embeds[:, None, :], concat.float()

    def project(self, clip: torch.Tensor, poses: torch.Tensor) -> torch.Tensor:
        """clip [N, 1, P], poses [N, 4] -> the cross-attention token [N, 1, D]."""
        tokens = torch.cat([clip, poses[:, None, :].to(clip)], -1)
        return self.cc_projection(tokens.to(self.cc_projection.weight.dtype))

    @torch.no_grad()
    def guided_output(self, noisy: torch.Tensor, timesteps: torch.Tensor, hidden: torch.Tensor,
                      concat: torch.Tensor, scale: float) -> torch.Tensor:
        """One UNet call with classifier-free guidance over M conditioning views.

        noisy: [B, 4, h, w] latents at integer timesteps [B]; hidden: [M, B, 1, D] tokens;
        concat: [M, B, 4, h, w] latents of the conditioning images. The M conditional
        predictions are averaged, then guided against the unconditional one (zero token,
        zero concat). Returns the model output (epsilon or v), [B, 4, h, w] float32."""
        m, b = hidden.shape[:2]
        dtype = self.unet.dtype
        hidden = torch.cat([torch.zeros_like(hidden[:1]), hidden]).flatten(0, 1)
        concat = torch.cat([torch.zeros_like(concat[:1]), concat]).flatten(0, 1)
        latents = noisy.unsqueeze(0).expand(m + 1, *noisy.shape).flatten(0, 1)
        model_in = torch.cat([latents, concat], 1).to(dtype)
        out = self.unet(model_in, timesteps.repeat(m + 1), encoder_hidden_states=hidden.to(dtype))
        out = out.sample.float().unflatten(0, (m + 1, b))
        uncond, cond = out[0], out[1:].mean(0)
        return uncond + scale * (cond - uncond)

    def to_epsilon(self, output: torch.Tensor, noisy: torch.Tensor,
                   timesteps: torch.Tensor) -> torch.Tensor:
        if self.prediction_type != "v_prediction":
            return output
        ab = self.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
        return ab.sqrt() * output + (1.0 - ab).sqrt() * noisy

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """[N, 4, h, w] scaled latents -> [N, 3, S, S] images in [0, 1], float32."""
        images = self.vae.decode(latents.float() / self.vae.config.scaling_factor).sample
        return (images * 0.5 + 0.5).clamp(0.0, 1.0)



def resize_square(x: torch.Tensor, size: int, antialias: bool = False) -> torch.Tensor:
    """[N, C, H, W] -> [N, C, size, size], bilinear; `antialias` only when shrinking."""
    if x.shape[-2:] == (size, size):
        return x
    shrink = antialias and max(x.shape[-2:]) > size
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=shrink)
