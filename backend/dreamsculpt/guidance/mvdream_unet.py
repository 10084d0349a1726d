"""MVDream's multi-view UNet as diffusers parts, and its original checkpoint's names mapped onto them.

MVDream (Shi et al. 2023) is Stable Diffusion 2.1-base fine-tuned to denoise the 4 views of one
object together. Against SD's UNet it changes two things, both expressible in diffusers:

* the time embedding also gets each view's camera: its 4x4 camera-to-world matrix flattened to
  16 numbers, through a linear-SiLU-linear MLP (`camera_embed`) whose output is added to the
  time embedding. diffusers' `class_embed_type="projection"` is exactly that MLP
  (a `TimestepEmbedding` named `class_embedding`), fed with `class_labels` [B*V, 16];
* every transformer block's self-attention (attn1) runs over the tokens of all V views of an
  object at once ([B*V, L, C] -> [B, V*L, C]); cross-attention to the text (attn2) stays per
  view. That is the attention processor below, installed on every attn1.

The original checkpoint (`sd-v2.1-base-4view.pt`) stores the UNet under LDM/openaimodel names
(`input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight`, `camera_embed.0.weight`, ...).
`read_layout` reads the architecture off its tensor shapes, `diffusers_config` turns that into a
`UNet2DConditionModel` config and `ldm_to_diffusers` gives every tensor its diffusers name. diffusers is
imported inside the functions so importing this module stays cheap.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

#: Views MVDream denoises together (its released models are all 4-view).
MVDREAM_VIEWS = 4
#: The weights cannot tell the number of attention heads, so it follows MVDream's two configs:
#: sd-v2-base (linear proj_in/out) has 64-channel heads (num_head_channels 64: C / 64 heads at C
#: channels), sd-v1 (1x1 conv proj_in/out) has 8 heads at every level (num_heads 8).
HEAD_CHANNELS = 64
SD1_HEADS = 8
#: The UNet's latent size: MVDream was trained at 256 px (config image_size 32, VAE factor 8).
MVDREAM_SAMPLE_SIZE = 32

#: ResBlock sub-module names: LDM -> diffusers ResnetBlock2D.
_RESNET_NAMES = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
                 "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}


class MultiViewAttnProcessor:
    """Self-attention over the tokens of `views` consecutive images together.

    hidden_states [N, L, C] with N = B * views (the views of one object contiguous) are joined
    to [B, views * L, C], attended with scaled dot-product attention (diffusers' own
    processor), and split back to [N, L, C]. Only for self-attention: there is no context."""

    def __init__(self, views: int = MVDREAM_VIEWS):
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.views = views
        self.inner = AttnProcessor2_0()

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 *args, **kwargs) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("multi-view attention is self-attention only, without a mask")
        count, length, channels = hidden_states.shape
        if count % self.views:
            raise ValueError(f"a batch of {count} images is not whole groups of {self.views} views")
        joined = hidden_states.reshape(count // self.views, self.views * length, channels)
        out = self.inner(attn, joined, None, None, temb)
        return out.reshape(count, length, channels)


def install_multiview_attention(unet, views: int = MVDREAM_VIEWS) -> None:
    """Every transformer block's self-attention (attn1) attends across `views` views; the rest
    (cross-attention) gets diffusers' plain scaled dot-product processor."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    processors = {name: MultiViewAttnProcessor(views) if name.endswith("attn1.processor") else AttnProcessor2_0()
                  for name in unet.attn_processors}
    unet.set_attn_processor(processors)


def is_multiview_unet(config) -> bool:
    """True for a UNet2DConditionModel config with MVDream's camera input (a 16-number projection
    class embedding)."""
    return (config.get("class_embed_type") == "projection"
            and config.get("projection_class_embeddings_input_dim") == 16)


@dataclass(frozen=True)
class UNetLayout:
    """The architecture of an LDM multi-view UNet, as its weights show it. Levels run from the
    full-resolution one down; `attention[l]` says whether level l has transformer blocks."""

    in_channels: int
    out_channels: int
    channels: tuple[int, ...]      # per level (SD 2.1: 320, 640, 1280, 1280)
    layers: int                    # ResBlocks per level on the way down (up: layers + 1)
    attention: tuple[bool, ...]
    depth: int                     # transformer blocks per attention
    linear: bool                   # proj_in / proj_out are Linear (SD 2.x), not 1x1 convs
    context_dim: int               # text embedding width (1024 for OpenCLIP ViT-H)
    camera_dim: int                # 16: a flattened 4x4 matrix
    time_dim: int                  # time embedding width (4 x channels[0])


def _indices(state: dict, prefix: str) -> set[int]:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return {int(m.group(1)) for key in state if (m := pattern.match(key))}


def read_layout(state: dict) -> UNetLayout:
    """The layout of an LDM UNet state dict (keys `input_blocks.*`, `camera_embed.*`, ... without
    the `model.diffusion_model.` prefix). KeyError names the first tensor it lacks."""
    blocks = _indices(state, "input_blocks.")
    if not blocks:
        raise KeyError("input_blocks.0.0.weight")
    downsamplers = sorted(i for i in blocks if f"input_blocks.{i}.0.op.weight" in state)
    levels = len(downsamplers) + 1
    layers = (len(blocks) - 1 - len(downsamplers)) // levels
    firsts = [1 + level * (layers + 1) for level in range(levels)]  # first ResBlock of each level
    channels = tuple(state[f"input_blocks.{i}.0.out_layers.3.weight"].shape[0] for i in firsts)
    attention = tuple(f"input_blocks.{i}.1.proj_in.weight" in state for i in firsts)
    mid = "middle_block.1."
    return UNetLayout(
        in_channels=state["input_blocks.0.0.weight"].shape[1],
        out_channels=state["out.2.weight"].shape[0],
        channels=channels, layers=layers, attention=attention,
        depth=len(_indices(state, mid + "transformer_blocks.")),
        linear=state[mid + "proj_in.weight"].ndim == 2,
        context_dim=state[mid + "transformer_blocks.0.attn2.to_k.weight"].shape[1],
        camera_dim=state["camera_embed.0.weight"].shape[1],
        time_dim=state["time_embed.0.weight"].shape[0])


def diffusers_config(layout: UNetLayout, sample_size: int = MVDREAM_SAMPLE_SIZE) -> dict:
    """A UNet2DConditionModel config for `layout`: SD 2.1-base's structure (GroupNorm 32, eps
    1e-5, cos-first sinusoidal time embedding) with the camera as a projection class embedding."""
    down = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in layout.attention]
    up = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(layout.attention)]
    return {
        "sample_size": sample_size, "in_channels": layout.in_channels, "out_channels": layout.out_channels,
        "layers_per_block": layout.layers, "block_out_channels": list(layout.channels),
        "down_block_types": down, "up_block_types": up, "mid_block_type": "UNetMidBlock2DCrossAttn",
        # diffusers' historical misnomer: attention_head_dim holds the number of heads.
        "attention_head_dim": [max(1, c // HEAD_CHANNELS) if layout.linear else SD1_HEADS
                               for c in layout.channels],
        "cross_attention_dim": layout.context_dim, "use_linear_projection": layout.linear,
        "transformer_layers_per_block": layout.depth, "flip_sin_to_cos": True, "freq_shift": 0,
        "norm_num_groups": 32, "norm_eps": 1e-5, "act_fn": "silu", "upcast_attention": False,
        "class_embed_type": "projection", "projection_class_embeddings_input_dim": layout.camera_dim,
        "time_embedding_dim": None if layout.time_dim == 4 * layout.channels[0] else layout.time_dim,
    }


def _module_table(layout: UNetLayout) -> dict[str, tuple[str, bool]]:
    """LDM module path -> (diffusers module path, is a ResBlock). The down path has `layers`
    ResBlocks (+ transformer) per level and a downsampler between levels; the up path runs the
    levels backwards with layers + 1 ResBlocks each and an upsampler after each but the last."""
    table = {"time_embed.0": ("time_embedding.linear_1", False), "time_embed.2": ("time_embedding.linear_2", False),
             "camera_embed.0": ("class_embedding.linear_1", False),
             "camera_embed.2": ("class_embedding.linear_2", False),
             "input_blocks.0.0": ("conv_in", False), "out.0": ("conv_norm_out", False), "out.2": ("conv_out", False),
             "middle_block.0": ("mid_block.resnets.0", True), "middle_block.1": ("mid_block.attentions.0", False),
             "middle_block.2": ("mid_block.resnets.1", True)}
    levels, index = len(layout.channels), 1
    for level in range(levels):
        for i in range(layout.layers):
            table[f"input_blocks.{index}.0"] = (f"down_blocks.{level}.resnets.{i}", True)
            if layout.attention[level]:
                table[f"input_blocks.{index}.1"] = (f"down_blocks.{level}.attentions.{i}", False)
            index += 1
        if level < levels - 1:
            table[f"input_blocks.{index}.0.op"] = (f"down_blocks.{level}.downsamplers.0.conv", False)
            index += 1
    index = 0
    for up, level in enumerate(reversed(range(levels))):
        for i in range(layout.layers + 1):
            table[f"output_blocks.{index}.0"] = (f"up_blocks.{up}.resnets.{i}", True)
            after = 1
            if layout.attention[level]:
                table[f"output_blocks.{index}.1"] = (f"up_blocks.{up}.attentions.{i}", False)
                after = 2
            if level > 0 and i == layout.layers:
                table[f"output_blocks.{index}.{after}.conv"] = (f"up_blocks.{up}.upsamplers.0.conv", False)
            index += 1
    return table


def ldm_to_diffusers(keys, layout: UNetLayout) -> tuple[dict[str, str], list[str]]:
    """Map LDM UNet tensor names to diffusers names. Returns ({LDM name: diffusers name}, the
    names nothing maps). Transformer internals (attn1/attn2 to_q/k/v/out, ff.net, norm1-3,
    proj_in/out) carry the same names in both; ResBlocks' parts are renamed."""
    table = _module_table(layout)
    names, unknown = {}, []
    for key in keys:
        parts, found = key.split("."), None
        for cut in range(len(parts) - 1, 0, -1):
            found = table.get(".".join(parts[:cut]))
            if found is not None:
                break
        if found is None:
            unknown.append(key)
            continue
        target, is_resnet = found
        rest = ".".join(parts[cut:])
        if is_resnet:
            module, param = rest.rsplit(".", 1)
            if module not in _RESNET_NAMES:
                unknown.append(key)
                continue
            rest = f"{_RESNET_NAMES[module]}.{param}"
        names[key] = f"{target}.{rest}"
    return names, unknown
