"""A tiny random Zero123 built offline from configs (as tiny_sd.py does for Stable Diffusion),
saved in the layout of the converted hub repos, and the same weights as one original
zero123 (LatentDiffusion) checkpoint, so every loading path can be tested without downloads.

Native image size: VAE with 2 blocks (downsamples by 2) x UNet sample_size 32 = 64 pixels;
CLIP sees 32 pixels. The CLIP normalisation saved in feature_extractor/ is 0.5 / 0.5 (not
CLIP's), so a test can tell that the folder's value is the one used.

The checkpoint writer inverts diffusers' LDM -> diffusers conversion; the tests check the
round trip (the loader converts it back with diffusers' own converters) weight by weight.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_MEAN = (0.5, 0.5, 0.5)
TINY_STD = (0.5, 0.5, 0.5)

#: The projection subfolder, class and weight prefix of each converted-repo layout.
LAYOUTS = {
    "cc_projection": ("pipeline_zero1to3", "CCProjection", "projection."),   # kxic/zero123-xl
    "clip_camera_projection": ("zero123", "CLIPCameraProjection", "proj."),  # ashawkey, bennyguo
}


def tiny_zero123_components(seed: int = 0) -> dict:
    """unet, vae, image_encoder, cc_projection (a torch Linear) and scheduler, random but
    deterministic for a seed."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    # Attention on the 16x16 level only, 2 heads: a 6x cheaper UNet than attention at 32x32
    # (the tests run it ~100 times), and the upsampler-after-attention LDM layout is covered.
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=8,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
        attention_head_dim=2)
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    torch.manual_seed(seed)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        image_size=32, patch_size=4, projection_dim=32))
    torch.manual_seed(seed)
    cc_projection = torch.nn.Linear(32 + 4, 32)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return {"unet": unet, "vae": vae, "image_encoder": image_encoder,
            "cc_projection": cc_projection, "scheduler": scheduler}


def build_tiny_zero123(path: str | Path, seed: int = 0, layout: str = "cc_projection") -> str:
    """Save a tiny random Zero123 as a diffusers folder at `path`, with the camera projection
    in `layout` (a key of LAYOUTS); returns the path."""
    import diffusers
    from safetensors.torch import save_file

    folder = Path(path)
    parts = tiny_zero123_components(seed)
    for name in ("unet", "vae", "image_encoder", "scheduler"):
        parts[name].save_pretrained(str(folder / name))
    module, cls, prefix = LAYOUTS[layout]
    projection = parts["cc_projection"]
    (folder / layout).mkdir(parents=True)
    config = ({"in_channel": projection.in_features, "out_channel": projection.out_features}
              if layout == "cc_projection" else
              {"embedding_dim": projection.out_features, "additional_embeddings": 4})
    _write_json(folder / layout / "config.json", {"_class_name": cls, **config})
    save_file({prefix + k: v.contiguous() for k, v in projection.state_dict().items()},
              str(folder / layout / "diffusion_pytorch_model.safetensors"))
    _write_json(folder / "feature_extractor" / "preprocessor_config.json", {
        "image_processor_type": "CLIPImageProcessor", "crop_size": {"height": 32, "width": 32},
        "size": {"shortest_edge": 32}, "do_resize": True, "do_center_crop": True,
        "do_normalize": True, "image_mean": list(TINY_MEAN), "image_std": list(TINY_STD),
        "resample": 3})
    _write_json(folder / "model_index.json", {
        "_class_name": "Zero1to3StableDiffusionPipeline" if layout == "cc_projection"
        else "Zero123Pipeline",
        "_diffusers_version": diffusers.__version__,
        layout: [module, cls],
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "safety_checker": [None, None], "requires_safety_checker": False})
    return str(folder)


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


# --------------------------------------------------------------------------- LDM checkpoint

def write_ldm_checkpoint(folder: str | Path, target: str | Path) -> Path:
    """The tiny folder's weights as one original zero123 checkpoint at `target`
    (.safetensors, or .ckpt holding {"state_dict": ...} as Lightning saves it)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import load_file, save_file
    from transformers import CLIPVisionModelWithProjection

    unet = UNet2DConditionModel.from_pretrained(str(folder), subfolder="unet")
    vae = AutoencoderKL.from_pretrained(str(folder), subfolder="vae")
    encoder = CLIPVisionModelWithProjection.from_pretrained(str(folder), subfolder="image_encoder")
    layout = next(name for name in LAYOUTS if (Path(folder) / name).is_dir())
    projection = load_file(str(Path(folder) / layout / "diffusion_pytorch_model.safetensors"))
    state = {}
    state.update({"model.diffusion_model." + k: v for k, v in
                  unet_to_ldm(unet.state_dict(), unet.config).items()})
    state.update({"first_stage_model." + k: v for k, v in
                  vae_to_ldm(vae.state_dict(), vae.config).items()})
    state.update({"cond_stage_model.model.visual." + k: v for k, v in
                  clip_to_openai(encoder.state_dict()).items()})
    state.update({"cc_projection." + k.rsplit(".", 1)[1]: v for k, v in projection.items()})
    # What else a zero123 checkpoint holds (the CLIP text parts it never uses): ignored.
    state["cond_stage_model.model.logit_scale"] = torch.tensor(4.6052)
    state["cond_stage_model.model.positional_embedding"] = torch.zeros(77, 32)
    state = {k: v.detach().clone().contiguous() for k, v in state.items()}
    target = Path(target)
    if target.suffix == ".ckpt":
        torch.save({"state_dict": state, "global_step": 0}, str(target))
    else:
        save_file(state, str(target))
    return target


_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0",
                "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
                "conv_shortcut": "skip_connection"}


def _rename(rest: str, names: dict) -> str:
    module, param = rest.rsplit(".", 1)
    return f"{names.get(module, module)}.{param}"


def unet_to_ldm(state: dict, config) -> dict:
    """diffusers UNet2DConditionModel keys -> openaimodel.UNetModel keys (no prefix)."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    fixed = DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"]
    per = config["layers_per_block"] + 1   # LDM rows per level: the resnets + a resampler
    attn_up = [kind.startswith("CrossAttn") for kind in config["up_block_types"]]
    out = {}
    for key, value in state.items():
        if key in fixed:
            out[fixed[key]] = value
            continue
        parts = key.split(".")
        if parts[0] == "mid_block":
            kind, index, rest = parts[1], int(parts[2]), ".".join(parts[3:])
            if kind == "resnets":   # one row of [resnet, attention, resnet], no sub-index
                out[f"middle_block.{2 * index}.{_rename(rest, _UNET_RESNET)}"] = value
            else:
                out[f"middle_block.1.{rest}"] = value
            continue
        block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
        last = kind in ("downsamplers", "upsamplers")   # the resampler row of the level
        if parts[0] == "down_blocks":
            row = f"input_blocks.{1 + block * per + (per - 1 if last else index)}"
        else:
            row = f"output_blocks.{block * per + (per - 1 if last else index)}"
        if kind == "resnets":
            out[f"{row}.0.{_rename(rest, _UNET_RESNET)}"] = value
        elif kind == "attentions":
            out[f"{row}.1.{rest}"] = value
        elif kind == "downsamplers":
            out[f"{row}.0.op.{rest.split('.', 1)[1]}"] = value
        else:   # upsamplers: after the attention when the level has one
            out[f"{row}.{2 if attn_up[block] else 1}.{rest}"] = value
    return out


_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v",
                  "to_out.0": "proj_out"}


def vae_to_ldm(state: dict, config) -> dict:
    """diffusers AutoencoderKL keys -> ldm AutoencoderKL keys (no prefix)."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    fixed = DIFFUSERS_TO_LDM_MAPPING["vae"]
    levels = len(config["block_out_channels"])
    out = {}
    for key, value in state.items():
        if key in fixed:
            out[fixed[key]] = value
            continue
        side, head, rest = key.split(".", 2)
        if head == "mid_block":
            kind, index, rest = rest.split(".", 2)
            if kind == "resnets":
                out[f"{side}.mid.block_{int(index) + 1}.{_rename(rest, {'conv_shortcut': 'nin_shortcut'})}"] = value
            else:   # 1x1 convolutions in ldm, linear layers in diffusers
                out[f"{side}.mid.attn_1.{_rename(rest, _VAE_ATTENTION)}"] = (
                    value[:, :, None, None] if value.ndim == 2 else value)
            continue
        level, kind, index, rest = rest.split(".", 3)
        level = int(level) if head == "down_blocks" else levels - 1 - int(level)
        name = "down" if head == "down_blocks" else "up"
        if kind == "resnets":
            out[f"{side}.{name}.{level}.block.{index}.{_rename(rest, {'conv_shortcut': 'nin_shortcut'})}"] = value
        else:   # downsamplers.0.conv.* / upsamplers.0.conv.*
            out[f"{side}.{name}.{level}.{name}sample.{rest}"] = value
    return out


_CLIP_BLOCK = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc",
               "mlp.fc2": "mlp.c_proj", "self_attn.out_proj": "attn.out_proj"}


def clip_to_openai(state: dict) -> dict:
    """transformers CLIPVisionModelWithProjection keys -> OpenAI CLIP `visual` keys."""
    emb, vm = "vision_model.embeddings.", "vision_model."
    out = {"class_embedding": state[emb + "class_embedding"],
           "conv1.weight": state[emb + "patch_embedding.weight"],
           "positional_embedding": state[emb + "position_embedding.weight"],
           "proj": state["visual_projection.weight"].t().contiguous()}
    for theirs, ours in (("pre_layrnorm", "ln_pre"), ("post_layernorm", "ln_post")):
        for param in ("weight", "bias"):
            out[f"{ours}.{param}"] = state[f"{vm}{theirs}.{param}"]
    layers = {int(k.split(".")[3]) for k in state if k.startswith(vm + "encoder.layers.")}
    for i in sorted(layers):
        hf, ldm = f"{vm}encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for param in ("weight", "bias"):
            out[f"{ldm}attn.in_proj_{param}"] = torch.cat(
                [state[f"{hf}self_attn.{p}_proj.{param}"] for p in "qkv"])
            for theirs, ours in _CLIP_BLOCK.items():
                out[f"{ldm}{ours}.{param}"] = state[f"{hf}{theirs}.{param}"]
    return out
