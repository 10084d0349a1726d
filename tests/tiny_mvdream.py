"""A tiny random MVDream built offline from configs: a multi-view UNet (camera input as a
16-number projection class embedding) with tiny_sd.py's tokenizer, VAE, text encoder and
schedule. Native image size: VAE x2 times UNet sample_size 32 = 64 pixels.

Also this tiny layout's names in MVDream's original checkpoint (LDM / openaimodel names),
written out by hand from MVDream's MultiViewUNetModel, so that the loader's own mapping
(guidance/mvdream_unet.py) is checked against an independent table.
"""

from __future__ import annotations

from pathlib import Path

import torch
from dreamsculpt.guidance.mvdream_loading import MVDreamComponents, save_mvdream_folder
from tiny_sd import tiny_components

#: Two levels: 32 channels without attention, then 128 with (2 heads of 64, MVDream's head
#: width), 2 ResBlocks each; cross-attention to tiny_sd's 32-wide text embeddings.
TINY_UNET_CONFIG = {
    "block_out_channels": (32, 128), "layers_per_block": 2, "sample_size": 32, "in_channels": 4,
    "out_channels": 4, "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"), "cross_attention_dim": 32,
    "attention_head_dim": (1, 2), "use_linear_projection": True,
    "class_embed_type": "projection", "projection_class_embeddings_input_dim": 16}


def tiny_unet(seed: int = 0):
    """The tiny multi-view UNet, random but deterministic for a seed (no processors installed)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**TINY_UNET_CONFIG)


def tiny_mvdream_parts(seed: int = 0) -> MVDreamComponents:
    """Unfrozen components: the tiny UNet and tiny_sd's other parts for the same seed."""
    sd = tiny_components(seed)
    return MVDreamComponents(tiny_unet(seed), sd["vae"], sd["text_encoder"], sd["tokenizer"],
                             sd["scheduler"].alphas_cumprod.float())


def build_tiny_mvdream(path: str | Path, seed: int = 0) -> str:
    """Save the tiny MVDream as a converted folder at `path`; returns the path."""
    save_mvdream_folder(tiny_mvdream_parts(seed), path)
    return str(path)


# --- the original checkpoint's names for the tiny layout ------------------------------------
# MultiViewUNetModel: input_blocks[0] is the first conv; then per level its ResBlocks (each with
# its SpatialTransformer3D at .1 on attention levels) and a Downsample between levels; the
# middle block is ResBlock, transformer, ResBlock; output_blocks run the levels backwards with
# one more ResBlock each and an Upsample after the last one of every level but the first.
ORIGINAL_MODULES = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
    "class_embedding.linear_1": "camera_embed.0", "class_embedding.linear_2": "camera_embed.2",
    "down_blocks.0.resnets.0": "input_blocks.1.0", "down_blocks.0.resnets.1": "input_blocks.2.0",
    "down_blocks.0.downsamplers.0.conv": "input_blocks.3.0.op",
    "down_blocks.1.resnets.0": "input_blocks.4.0", "down_blocks.1.attentions.0": "input_blocks.4.1",
    "down_blocks.1.resnets.1": "input_blocks.5.0", "down_blocks.1.attentions.1": "input_blocks.5.1",
    "mid_block.resnets.0": "middle_block.0", "mid_block.attentions.0": "middle_block.1",
    "mid_block.resnets.1": "middle_block.2",
    "up_blocks.0.resnets.0": "output_blocks.0.0", "up_blocks.0.attentions.0": "output_blocks.0.1",
    "up_blocks.0.resnets.1": "output_blocks.1.0", "up_blocks.0.attentions.1": "output_blocks.1.1",
    "up_blocks.0.resnets.2": "output_blocks.2.0", "up_blocks.0.attentions.2": "output_blocks.2.1",
    "up_blocks.0.upsamplers.0.conv": "output_blocks.2.2.conv",
    "up_blocks.1.resnets.0": "output_blocks.3.0", "up_blocks.1.resnets.1": "output_blocks.4.0",
    "up_blocks.1.resnets.2": "output_blocks.5.0",
    "conv_norm_out": "out.0", "conv_out": "out.2",
}
#: ResBlock parts: in_layers = (GroupNorm, SiLU, conv), emb_layers = (SiLU, linear),
#: out_layers = (GroupNorm, SiLU, Dropout, conv), skip_connection a 1x1 conv.
ORIGINAL_RESBLOCK = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                     "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def to_original_names(unet_state: dict) -> dict:
    """A tiny diffusers UNet state dict -> the original checkpoint's names (without the
    `model.diffusion_model.` prefix). Transformer internals keep their names."""
    out = {}
    for key, value in unet_state.items():
        module = max((m for m in ORIGINAL_MODULES if key.startswith(m + ".")), key=len)
        rest = key[len(module) + 1:]
        if ".resnets." in module:
            part, param = rest.rsplit(".", 1)
            rest = f"{ORIGINAL_RESBLOCK[part]}.{param}"
        out[f"{ORIGINAL_MODULES[module]}.{rest}"] = value
    return out


def write_original_checkpoint(unet, path: str | Path) -> Path:
    """The tiny UNet saved as MVDream's sd-v2.1-base-4view.pt is laid out: one LDM state dict
    under "state_dict" with the UNet under `model.diffusion_model.`, next to VAE / text encoder
    tensors and schedule buffers the loader must skip (.safetensors: the flat dict)."""
    state = {f"model.diffusion_model.{k}": v.detach().clone().contiguous()
             for k, v in to_original_names(unet.state_dict()).items()}
    state.update({"first_stage_model.decoder.conv_out.bias": torch.zeros(3),
                  "cond_stage_model.model.ln_final.weight": torch.ones(32),
                  "alphas_cumprod": torch.linspace(0.99, 0.01, 1000)})
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({"state_dict": state}, path)
    return path
