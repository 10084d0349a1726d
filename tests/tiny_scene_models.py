"""Tiny random models of a scene walk's two kinds, built offline from configs and saved as the
folders users pass (--model, --depth-model): an SD inpainting pipeline and a Depth Anything."""

from __future__ import annotations

import torch
from tiny_sd import tiny_components


def build_tiny_inpainting(path, seed: int = 0) -> str:
    """tiny_sd.py's pipeline with an inpainting UNet (9 input channels: latents, mask,
    masked-image latents), saved as a diffusers folder. Native size 64 px (VAE factor 2)."""
    from diffusers import StableDiffusionInpaintPipeline, UNet2DConditionModel

    parts = tiny_components(seed)
    torch.manual_seed(seed)
    parts["unet"] = UNet2DConditionModel.from_config({**parts["unet"].config, "in_channels": 9})
    pipe = StableDiffusionInpaintPipeline(**parts, safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)
    pipe.save_pretrained(str(path))
    return str(path)



def build_tiny_depth_anything(path, kind: str) -> str:
    """A tiny random Depth Anything ("relative" or "metric", max depth 20 m) with a DPT image
    processor that resizes to about 32 px, saved as a transformers folder."""
    from transformers import (
        DepthAnythingConfig,
        DepthAnythingForDepthEstimation,
        Dinov2Config,
        DPTImageProcessor,
    )

    # reshape_hidden_states=False: Depth Anything reshapes the backbone's tokens itself.
    # initializer_range 0.3 rather than 0.02, so the random depth maps are not flat.
    backbone = Dinov2Config(image_size=32, patch_size=16, hidden_size=4, num_hidden_layers=2,
                            num_attention_heads=2, intermediate_size=8, out_indices=[1, 2],
                            reshape_hidden_states=False, initializer_range=0.3)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=4,
                                 patch_size=16, neck_hidden_sizes=[2, 2], fusion_hidden_size=6,
                                 depth_estimation_type=kind, max_depth=20,
                                 initializer_range=0.3)
    torch.manual_seed(0)
    DepthAnythingForDepthEstimation(config).save_pretrained(str(path))
    # DPTImageProcessor is Depth Anything's (transformers 5 falls back to its PIL backend
    # without torchvision); about 32 px, sides a multiple of the 16 px patch.
    processor = DPTImageProcessor(size={"height": 32, "width": 32}, keep_aspect_ratio=True,
                                  ensure_multiple_of=16)
    processor.save_pretrained(str(path))
    return str(path)
