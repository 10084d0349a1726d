"""Loading Zero-1-to-3 weights into `Zero123Components`: a hub id (Hugging Face cache first,
then the network), a diffusers folder in the layout of the converted repos (the projection in
`cc_projection/` with keys `projection.*`, as in kxic/zero123-xl and diffusers' community
`pipeline_zero1to3`, or in `clip_camera_projection/` with keys `proj.*`, as in
ashawkey/zero123-xl-diffusers and bennyguo/zero123-xl-diffusers), or one original checkpoint
(zero123-xl.ckpt, stable_zero123.ckpt) converted with diffusers' own LDM converters (and our
mapping of the OpenAI CLIP vision tower, which diffusers lacks). Every failure is a
DreamsculptError that says what to do.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import torch

from ..config import DEFAULT_ZERO123_MODEL
from ..errors import DreamsculptError
from .hub import SINGLE_FILE_SUFFIXES, first_line, load_from_hub, looks_like_path
from .zero123_parts import CLIP_MEAN, CLIP_STD, Zero123Components, resolve_variant

PROJECTION_FOLDERS = ("cc_projection", "clip_camera_projection")
_WHAT_TO_DO = ("Pass a Zero123 diffusers folder or original checkpoint with --model PATH, "
               "or use --prior builtin for offline runs.")

#: The original checkpoints' architecture (zero123 `configs/sd-objaverse-finetune-c_concat-256.yaml`)
#: in diffusers terms, for a single file with no diffusers folder around it.
ZERO123_UNET_CONFIG = {
    "sample_size": 32, "in_channels": 8, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": [320, 640, 1280, 1280], "cross_attention_dim": 768, "attention_head_dim": 8,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3}
ZERO123_VAE_CONFIG = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "block_out_channels": [128, 256, 512, 512], "sample_size": 256, "scaling_factor": 0.18215,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4}
ZERO123_CLIP_CONFIG = {   # OpenAI CLIP ViT-L/14 vision tower + projection
    "hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
    "num_hidden_layers": 24, "image_size": 224, "patch_size": 14, "projection_dim": 768,
    "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
ZERO123_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "clip_sample": False, "set_alpha_to_one": False,
    "steps_offset": 1, "prediction_type": "epsilon"}


def load_zero123_components(model: str = DEFAULT_ZERO123_MODEL, device: torch.device | str = "cpu",
                            dtype: torch.dtype = torch.float32,
                            variant: str = "auto") -> Zero123Components:
    """Load and freeze a Zero123 model: a hub id, a diffusers folder (model_index.json) or one
    original .ckpt/.safetensors file. variant: "auto" (from the name, see resolve_variant),
    "zero123" or "stable_zero123". Raises DreamsculptError saying what to do when it cannot."""
    chosen = resolve_variant(model, variant)
    path = Path(model).expanduser()
    if path.is_dir():
        parts = _load_folder(path, model)
    elif path.is_file():
        parts = _load_single_file(path)
    elif looks_like_path(model):
        raise DreamsculptError(f"Zero123 model path '{model}' does not exist. " + _WHAT_TO_DO)
    else:
        parts = _load_from_hub(model)
    _freeze(parts, torch.device(device), dtype)
    parts.variant, parts.source = chosen, model
    return parts


def _load_folder(path: Path, model: str) -> Zero123Components:
    if not (path / "model_index.json").is_file():
        raise DreamsculptError(f"'{model}' is a folder but not a diffusers Zero123 folder (no "
                               "model_index.json). " + _WHAT_TO_DO)
    try:
        return _load_parts(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise DreamsculptError(f"Could not load the Zero123 folder '{model}' "
                               f"({first_line(exc)}). " + _WHAT_TO_DO) from exc


def _load_from_hub(repo: str) -> Zero123Components:
    return load_from_hub(repo, _load_parts, "Zero123 model",
                         "Download it once with network access, pass a Zero123 diffusers folder or "
                         "original checkpoint with --model PATH, or use --prior builtin for offline runs.")


def _fetch(source: str, filename: str, local_files_only: bool) -> Path | None:
    """A file of a diffusers layout (folder or hub repo), or None when the layout lacks it.
    Failures to reach the hub propagate."""
    if Path(source).is_dir():
        path = Path(source) / filename
        return path if path.is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(source, filename, local_files_only=local_files_only))
    except EntryNotFoundError as exc:
        if isinstance(exc, LocalEntryNotFoundError) and not local_files_only:
            raise   # the network was needed and failed
        return None


def _read_json(source: str, filename: str, local_files_only: bool) -> dict | None:
    path = _fetch(source, filename, local_files_only)
    return None if path is None else json.loads(path.read_text(encoding="utf-8"))


def _load_parts(source: str, local_files_only: bool) -> Zero123Components:
    """All parts of a diffusers-layout Zero123 (folder or hub repo)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPVisionModelWithProjection

    index = _read_json(source, "model_index.json", local_files_only)
    if index is None:
        raise OSError(f"no model_index.json in '{source}'")
    folder = next((name for name in PROJECTION_FOLDERS if name in index), None)
    if folder is None:
        raise DreamsculptError(
            f"'{source}' is not a Zero123 model: its model_index.json names no camera projection "
            f"({' or '.join(PROJECTION_FOLDERS)}). " + _WHAT_TO_DO)
    kw = {"local_files_only": local_files_only}
    unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", **kw)
    vae = AutoencoderKL.from_pretrained(source, subfolder="vae", **kw)
    encoder = CLIPVisionModelWithProjection.from_pretrained(source, subfolder="image_encoder", **kw)
    projection = _load_projection(source, folder, local_files_only)
    scheduler = _read_json(source, "scheduler/scheduler_config.json", local_files_only)
    processor = _read_json(source, "feature_extractor/preprocessor_config.json", local_files_only)
    return _assemble(unet, vae, encoder, projection, scheduler, processor)


def _load_projection(source: str, folder: str, local_files_only: bool) -> torch.nn.Linear:
    names = ["diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"]
    if Path(source).is_dir():   # a variant-only folder (e.g. *.fp16.safetensors)
        names += sorted(p.name for p in (Path(source) / folder).glob("diffusion_pytorch_model.*"))
    for name in names:
        path = _fetch(source, f"{folder}/{name}", local_files_only)
        if path is not None:
            return _linear(_read_weights(path), f"{folder}/{name}")
    raise OSError(f"no weights in {folder}/")


def _read_weights(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def _linear(state: dict, where: str) -> torch.nn.Linear:
    """The camera projection from any of the layouts: `weight`/`bias` (original checkpoint),
    `projection.*` (kxic), `proj.*` (ashawkey, bennyguo)."""
    weights = [k for k, v in state.items() if k.endswith("weight") and v.ndim == 2]
    if len(weights) != 1:
        raise ValueError(f"{where} does not hold one linear layer")
    weight = state[weights[0]].float()
    bias = state.get(weights[0][: -len("weight")] + "bias")
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias.float())
    return layer


def _assemble(unet, vae, encoder, projection, scheduler: dict | None,
              processor: dict | None) -> Zero123Components:
    from diffusers import DDPMScheduler

    if unet.config.in_channels != 8:
        raise ValueError(f"its UNet takes {unet.config.in_channels} input channels, not Zero123's 8")
    expected = (encoder.config.projection_dim + 4, unet.config.cross_attention_dim)
    if (projection.in_features, projection.out_features) != expected:
        raise ValueError(f"its camera projection maps {projection.in_features} -> "
                         f"{projection.out_features}, not {expected[0]} -> {expected[1]}")
    scheduler = {**ZERO123_SCHEDULER_CONFIG, **(scheduler or {})}
    processor = processor or {}
    alphas = DDPMScheduler.from_config(scheduler).alphas_cumprod.float()
    return Zero123Components(
        unet, vae, encoder, projection, alphas, scheduler,
        prediction_type=scheduler.get("prediction_type", "epsilon"),
        clip_mean=tuple(processor.get("image_mean", CLIP_MEAN)),
        clip_std=tuple(processor.get("image_std", CLIP_STD)))


def _freeze(parts: Zero123Components, device: torch.device, dtype: torch.dtype) -> None:
    """Move to the device and freeze. The VAE stays float32 (SDS backpropagates through its
    encoder and SD's VAE overflows in fp16; see stable_diffusion._freeze)."""
    for module, module_dtype in ((parts.unet, dtype), (parts.image_encoder, dtype),
                                 (parts.cc_projection, dtype), (parts.vae, torch.float32)):
        module.requires_grad_(False).eval().to(device)
        if next(module.parameters()).dtype != module_dtype:
            module.to(module_dtype)
    parts.alphas_cumprod = parts.alphas_cumprod.to(device, torch.float32)


# --------------------------------------------------------------------------- one checkpoint

_LDM_PARTS = {"model.diffusion_model.": "UNet", "first_stage_model.": "VAE",
              "cond_stage_model.model.visual.": "CLIP image encoder", "cc_projection.": "camera projection"}


def _load_single_file(path: Path) -> Zero123Components:
    """An original zero123 LatentDiffusion checkpoint: `model.diffusion_model.*` (UNet; EMA
    weights when the file has them, as zero123's loader uses), `first_stage_model.*` (VAE),
    `cond_stage_model.model.visual.*` (OpenAI CLIP vision tower) and `cc_projection.*`.
    Configs come from a diffusers folder holding the file when there is one (as for SD),
    else the known Zero123 architecture; the CLIP config is read off the weights."""
    from diffusers.loaders.single_file_utils import load_single_file_checkpoint

    if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        raise DreamsculptError(f"'{path}' is not a .safetensors or .ckpt file. " + _WHAT_TO_DO)
    try:
        checkpoint = load_single_file_checkpoint(str(path), local_files_only=True)
    except Exception as exc:  # unreadable in any way
        raise DreamsculptError(
            f"Could not read '{path}' as a checkpoint ({first_line(exc)}); .ckpt files are read "
            "as plain tensors only, so a training checkpoint with other objects must be saved "
            "as .safetensors first. " + _WHAT_TO_DO) from exc
    missing = [name for prefix, name in _LDM_PARTS.items()
               if not any(key.startswith(prefix) for key in checkpoint)]
    if missing:
        raise DreamsculptError(f"'{path}' is not an original Zero123 checkpoint (no "
                               f"{', '.join(missing)} weights). " + _WHAT_TO_DO)
    configs = _configs_beside(path)
    try:
        return _convert_checkpoint(checkpoint, configs)
    except (KeyError, ValueError, RuntimeError) as exc:
        where = ("the configs of the diffusers folder holding it do not fit it" if configs else
                 "it is not the standard Zero123 architecture; put it inside a diffusers folder "
                 "with the matching configs (model_index.json, unet/, vae/, image_encoder/)")
        raise DreamsculptError(f"Could not load the checkpoint '{path}': {where} "
                               f"({first_line(exc)}). " + _WHAT_TO_DO) from exc


def _configs_beside(path: Path) -> dict:
    """{part: config dict} of the diffusers folder holding the file; {} when there is none."""
    root = path.parent
    if not (root / "model_index.json").is_file():
        return {}
    files = {"unet": "unet/config.json", "vae": "vae/config.json",
             "image_encoder": "image_encoder/config.json",
             "scheduler": "scheduler/scheduler_config.json",
             "processor": "feature_extractor/preprocessor_config.json"}
    return {part: json.loads((root / name).read_text(encoding="utf-8"))
            for part, name in files.items() if (root / name).is_file()}


def _convert_checkpoint(checkpoint: dict, configs: dict) -> Zero123Components:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    unet_config = configs.get("unet", ZERO123_UNET_CONFIG)
    vae_config = configs.get("vae", ZERO123_VAE_CONFIG)
    unet = _on_meta(lambda: UNet2DConditionModel.from_config(unet_config),
                    convert_ldm_unet_checkpoint(checkpoint, unet_config, extract_ema=True))
    vae = _on_meta(lambda: AutoencoderKL.from_config(vae_config),
                   convert_ldm_vae_checkpoint(checkpoint, vae_config))
    prefix = "cond_stage_model.model.visual."
    visual = {k[len(prefix):]: v for k, v in checkpoint.items() if k.startswith(prefix)}
    clip_config = CLIPVisionConfig.from_dict(configs.get("image_encoder") or _clip_config(visual))
    encoder = _on_meta(lambda: CLIPVisionModelWithProjection(clip_config), openai_clip_to_hf(visual))
    embeddings = encoder.vision_model.embeddings   # its position ids are not in any state dict
    embeddings.register_buffer("position_ids", torch.arange(embeddings.num_positions)[None],
                               persistent=False)
    projection = _linear({k[len("cc_projection."):]: v for k, v in checkpoint.items()
                          if k.startswith("cc_projection.")}, "cc_projection")
    return _assemble(unet, vae, encoder, projection, configs.get("scheduler"),
                     configs.get("processor"))


def _on_meta(build: Callable[[], torch.nn.Module], state: dict) -> torch.nn.Module:
    """Build a model without initialising its weights, then take `state`'s tensors; every
    parameter must be given, and nothing more."""
    with torch.device("meta"):
        model = build()
    expected = set(model.state_dict())
    missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or extra:
        raise ValueError(f"{type(model).__name__}: {len(missing)} weights missing "
                         f"{missing[:2]}, {len(extra)} unexpected {extra[:2]}")
    model.load_state_dict(state, strict=True, assign=True)
    return model


_CLIP_BLOCK = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1",
               "mlp.c_proj": "mlp.fc2", "attn.out_proj": "self_attn.out_proj"}


def openai_clip_to_hf(visual: dict) -> dict:
    """OpenAI CLIP `VisionTransformer` weights (clip.load(...).visual) -> transformers
    CLIPVisionModelWithProjection keys. diffusers converts only CLIP *text* towers, so the
    vision tower is mapped here: the fused attention in_proj splits into q, k, v (in that
    order) and `proj` [width, dim] is the transposed `visual_projection.weight`."""
    out = {"vision_model.embeddings.class_embedding": visual["class_embedding"],
           "vision_model.embeddings.patch_embedding.weight": visual["conv1.weight"],
           "vision_model.embeddings.position_embedding.weight": visual["positional_embedding"],
           "visual_projection.weight": visual["proj"].t().contiguous()}
    for ours, theirs in (("pre_layrnorm", "ln_pre"), ("post_layernorm", "ln_post")):
        for param in ("weight", "bias"):
            out[f"vision_model.{ours}.{param}"] = visual[f"{theirs}.{param}"]
    for key, value in visual.items():
        if not key.startswith("transformer.resblocks."):
            continue
        index, name = key[len("transformer.resblocks."):].split(".", 1)
        layer = f"vision_model.encoder.layers.{index}."
        module, param = name.rsplit(".", 1)
        if module == "attn" and param.startswith("in_proj_"):
            kind = param[len("in_proj_"):]
            for part, chunk in zip("qkv", value.chunk(3, dim=0)):
                out[f"{layer}self_attn.{part}_proj.{kind}"] = chunk.contiguous()
        else:
            out[f"{layer}{_CLIP_BLOCK[module]}.{param}"] = value
    return out


def _clip_config(visual: dict) -> dict:
    """A CLIPVisionConfig dict read off OpenAI vision weights (OpenAI CLIP: 64-d heads,
    QuickGELU, LayerNorm eps 1e-5)."""
    width, _, patch, _ = visual["conv1.weight"].shape
    grid = round(math.sqrt(visual["positional_embedding"].shape[0] - 1))
    layers = 1 + max(int(k.split(".")[2]) for k in visual if k.startswith("transformer.resblocks."))
    return {**ZERO123_CLIP_CONFIG, "hidden_size": width, "patch_size": patch,
            "image_size": grid * patch, "num_hidden_layers": layers,
            "num_attention_heads": max(1, width // 64),
            "intermediate_size": visual["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            "projection_dim": visual["proj"].shape[1]}
