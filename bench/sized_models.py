"""Random weights in the real models' architectures, for timing and memory (not part of the
package; the values do not matter to the timings).

* Stable Diffusion 2.1-base: the 865 M-parameter UNet at 64^2 latents (512 px), SD's VAE,
  an OpenCLIP ViT-H-sized text encoder (23 layers of 1024) and SD's noise schedule.
* MVDream (sd-v2.1-base-4view): the same UNet at 32^2 latents (256 px) with its camera
  embedding and cross-view attention, the same VAE and text encoder.

The tokenizer is the tests' tiny byte-level one: its ids fit the text encoder's vocabulary,
and tokenizing is not what is timed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from tiny_sd import tiny_tokenizer  # noqa: E402

#: Stable Diffusion 2.1-base's UNet (stabilityai/stable-diffusion-2-1-base, unet/config.json).
SD21_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20),
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                 cross_attention_dim=1024, use_linear_projection=True)
SD21_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
                block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4)
OPENCLIP_H_TEXT = dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                       num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", projection_dim=512)


def _shared_parts():
    """(vae, text_encoder, tokenizer, scheduler) of SD 2.1-base's size."""
    from diffusers import AutoencoderKL, DDPMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    vae = AutoencoderKL(**SD21_VAE)
    text_encoder = CLIPTextModel(CLIPTextConfig(**OPENCLIP_H_TEXT))
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    return vae, text_encoder, tiny_tokenizer(), scheduler


def sized_sd(device: torch.device, dtype: torch.dtype):
    """SDComponents of Stable Diffusion 2.1-base's size, random, frozen on `device`."""
    from diffusers import UNet2DConditionModel
    from dreamsculpt.guidance.stable_diffusion import _freeze

    vae, text_encoder, tokenizer, scheduler = _shared_parts()
    unet = UNet2DConditionModel(**SD21_UNET)
    parts = _freeze(unet, vae, text_encoder, tokenizer, scheduler, device, dtype)
    parts.source = "random SD-2.1-base-sized"
    return parts


def sized_mvdream(device: torch.device, dtype: torch.dtype):
    """MVDreamComponents of sd-v2.1-base-4view's size, random, frozen on `device` (its multi-view
    attention installed by the loader's own _freeze)."""
    from diffusers import UNet2DConditionModel
    from dreamsculpt.guidance.mvdream_loading import MVDreamComponents, _freeze

    vae, text_encoder, tokenizer, scheduler = _shared_parts()
    unet = UNet2DConditionModel(**dict(SD21_UNET, sample_size=32), class_embed_type="projection",
                                projection_class_embeddings_input_dim=16)
    parts = MVDreamComponents(unet, vae, text_encoder, tokenizer, scheduler.alphas_cumprod.float(),
                              source="random MVDream-sized")
    _freeze(parts, device, dtype)
    return parts
