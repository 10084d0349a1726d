"""Loading MVDream into `MVDreamComponents`: a converted diffusers folder, the original single
checkpoint, or a hub id (Hugging Face cache first, then the network).

* A converted folder has Stable Diffusion's layout (model_index.json, unet/ vae/ text_encoder/
  tokenizer/ scheduler/) and a UNet whose config has MVDream's camera input (a 16-number
  projection class embedding); `save_mvdream_folder` writes one from loaded components.
* The original checkpoint (`sd-v2.1-base-4view.pt`, also .safetensors/.ckpt) is an LDM state
  dict, possibly under "state_dict". Only its UNet (`model.diffusion_model.*`) is read: its keys
  are mapped here (mvdream_unet.py) and the UNet config is read off its tensor shapes. The VAE and
  text encoder in the file are SD 2.1-base's own (frozen while MVDream was trained), so they,
  the tokenizer and the noise schedule come from `base` through `load_sd_components` (a hub id
  or a local SD folder, which works offline).
* A hub id (default MVDream/MVDream) holds either a converted folder or the original file.

The multi-view attention processors are installed on every load. diffusers, transformers and
huggingface_hub are imported inside the functions so importing this module stays cheap.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import DEFAULT_MVDREAM_MODEL, DEFAULT_SD_MODEL
from ..errors import DreamsculptError
from .hub import first_line, load_from_hub, looks_like_path
from .mvdream_unet import (
    MVDREAM_VIEWS,
    diffusers_config,
    install_multiview_attention,
    is_multiview_unet,
    ldm_to_diffusers,
    read_layout,
)
from .stable_diffusion import SDComponents, load_sd_components

#: The original release's checkpoint in the MVDream/MVDream hub repo (SD 2.1-base, 4 views).
MVDREAM_FILE = "sd-v2.1-base-4view.pt"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors")
_UNET_PREFIX = "model.diffusion_model."
#: MVDream's noise schedule (its sd-v2-base.yaml: linear_start 0.00085, linear_end 0.012 in
#: LDM's "linear", i.e. linear in sqrt(beta) = diffusers' scaled_linear; eps prediction).
MVDREAM_SCHEDULER_CONFIG = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                            "beta_schedule": "scaled_linear", "prediction_type": "epsilon", "clip_sample": False}
_WHAT_TO_DO = ("Pass MVDream's original checkpoint (sd-v2.1-base-4view.pt) or a converted MVDream folder "
               "with --model PATH, or use --prior sd or --prior builtin.")
_HUB_WHAT_TO_DO = ("Download it once with network access, pass a local copy (sd-v2.1-base-4view.pt or a converted "
                   "MVDream folder) with --model PATH, or use --prior sd or --prior builtin.")


@dataclass
class MVDreamComponents(SDComponents):
    """Stable Diffusion's frozen parts with a multi-view UNet (its processors installed);
    views: images denoised together (the UNet's batch is whole groups of them). native_size:
    256 for MVDream."""

    views: int = MVDREAM_VIEWS


def load_mvdream_components(model: str = DEFAULT_MVDREAM_MODEL, device: torch.device | str = "cpu",
                            dtype: torch.dtype = torch.float32, base: str = DEFAULT_SD_MODEL) -> MVDreamComponents:
    """Load and freeze MVDream: a converted diffusers folder, the original checkpoint file (its
    VAE, text encoder and schedule from the Stable Diffusion model `base`) or a hub id. Raises
    DreamsculptError saying what to do when it cannot."""
    path = Path(model).expanduser()
    if path.is_dir():
        parts = _load_folder(path, model)
    elif path.is_file():
        parts = load_checkpoint(path, base)
    elif looks_like_path(model) or model.lower().endswith(CHECKPOINT_SUFFIXES):
        raise DreamsculptError(f"MVDream model path '{model}' does not exist. " + _WHAT_TO_DO)
    else:
        parts = load_from_hub(model, lambda repo, local: _load_hub_parts(repo, local, base), "MVDream model",
                              _HUB_WHAT_TO_DO)
    _freeze(parts, torch.device(device), dtype)
    parts.source = model
    return parts


def _load_folder(path: Path, model: str) -> MVDreamComponents:
    if not (path / "model_index.json").is_file():
        raise DreamsculptError(f"'{model}' is a folder but not a converted MVDream folder (no model_index.json). "
                               + _WHAT_TO_DO)
    try:
        return _load_diffusers_parts(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise DreamsculptError(f"Could not load the MVDream folder '{model}' ({first_line(exc)}). "
                               + _WHAT_TO_DO) from exc


def _load_diffusers_parts(source: str, local_files_only: bool) -> MVDreamComponents:
    """All parts of a converted MVDream folder or hub repo (SD's layout, a multi-view UNet)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    kw = {"local_files_only": local_files_only}
    config = UNet2DConditionModel.load_config(source, subfolder="unet", **kw)
    if not is_multiview_unet(config):
        raise DreamsculptError(
            f"'{source}' is a diffusers model but not MVDream: its UNet takes no camera (no 16-number "
            "'projection' class embedding), so it is most likely plain Stable Diffusion (use --prior sd). "
            + _WHAT_TO_DO)
    scheduler = DDPMScheduler.from_pretrained(source, subfolder="scheduler", **kw)
    return MVDreamComponents(
        UNet2DConditionModel.from_pretrained(source, subfolder="unet", **kw),
        AutoencoderKL.from_pretrained(source, subfolder="vae", **kw),
        CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **kw),
        CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **kw),
        scheduler.alphas_cumprod.float(), scheduler.config.get("prediction_type", "epsilon"))


def _load_hub_parts(repo: str, local_files_only: bool, base: str) -> MVDreamComponents:
    """A hub repo in the converted layout (it has model_index.json), else its original file."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        hf_hub_download(repo, "model_index.json", local_files_only=local_files_only)
    except EntryNotFoundError as exc:
        if isinstance(exc, LocalEntryNotFoundError) and not local_files_only:
            raise   # the network was needed and failed
    else:
        return _load_diffusers_parts(repo, local_files_only)
    return load_checkpoint(Path(hf_hub_download(repo, MVDREAM_FILE, local_files_only=local_files_only)), base)


def _freeze(parts: MVDreamComponents, device: torch.device, dtype: torch.dtype) -> None:
    """Move to the device, freeze, install the multi-view attention. The VAE stays float32 (SDS
    backpropagates through its encoder and SD's VAE overflows in fp16; see stable_diffusion)."""
    for module, module_dtype in ((parts.unet, dtype), (parts.text_encoder, dtype), (parts.vae, torch.float32)):
        module.requires_grad_(False).eval().to(device)
        if module.dtype != module_dtype:  # cast only when needed (diffusers warns on casts)
            module.to(module_dtype)
    parts.alphas_cumprod = parts.alphas_cumprod.to(device, torch.float32)
    install_multiview_attention(parts.unet, parts.views)


# --------------------------------------------------------------------------- one checkpoint

def load_checkpoint(path: Path, base: str = DEFAULT_SD_MODEL) -> MVDreamComponents:
    """MVDream's original checkpoint: its UNet mapped to diffusers, the rest from SD `base`
    (loaded on the CPU in float32; `_freeze` moves everything)."""
    unet = unet_from_state(read_unet_state(path), path)
    try:
        sd = load_sd_components(base, "cpu", torch.float32)
    except DreamsculptError as exc:
        raise DreamsculptError(
            f"MVDream's checkpoint '{path.name}' holds its UNet only; its VAE, text encoder and noise schedule "
            f"are Stable Diffusion 2.1-base's, which could not be loaded: {exc}") from exc
    width = sd.text_encoder.config.hidden_size
    if width != unet.config.cross_attention_dim:   # e.g. sd-v1.5-4view.pt (768) on SD 2.1-base (1024)
        raise DreamsculptError(
            f"'{path.name}' takes {unet.config.cross_attention_dim}-wide text embeddings but the base model "
            f"'{base}' gives {width}: it was trained on another Stable Diffusion than that base. Use MVDream's "
            f"{MVDREAM_FILE} (SD 2.1-base). " + _WHAT_TO_DO)
    return MVDreamComponents(unet, sd.vae, sd.text_encoder, sd.tokenizer, sd.alphas_cumprod, sd.prediction_type)


def read_unet_state(path: Path) -> dict[str, torch.Tensor]:
    """The UNet tensors of an LDM checkpoint, without the `model.diffusion_model.` prefix (a bare
    UNet state dict is taken as it is). Only the UNet's tensors of a .safetensors are read."""
    if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise DreamsculptError(f"'{path}' is not a {'/'.join(CHECKPOINT_SUFFIXES)} checkpoint. " + _WHAT_TO_DO)
    try:
        state = _read_tensors(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise DreamsculptError(
            f"Could not read '{path}' as a checkpoint ({first_line(exc)}); it is read as plain tensors only "
            "(torch.load weights_only), so a training checkpoint holding other objects must be saved as "
            ".safetensors first. " + _WHAT_TO_DO) from exc
    unet = {k[len(_UNET_PREFIX):]: v for k, v in state.items() if k.startswith(_UNET_PREFIX)}
    if not unet and any(k.startswith("input_blocks.") for k in state):
        unet = state
    if not unet:
        some = ", ".join(sorted(state)[:3]) or "none"
        raise DreamsculptError(f"'{path}' holds no MVDream UNet weights: no '{_UNET_PREFIX}*' keys (it has "
                               f"{some}, ...). Expected MVDream's original {MVDREAM_FILE}. " + _WHAT_TO_DO)
    return unet


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as file:
            keys = list(file.keys())
            wanted = [k for k in keys if k.startswith(_UNET_PREFIX)] or keys
            return {k: file.get_tensor(k) for k in wanted}
    try:  # memory-mapped: the 5 GB original file is not read whole into memory
        raw = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:   # a legacy (non-zip) file cannot be mapped
        raw = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict):
        raise ValueError(f"it holds a {type(raw).__name__}, not a state dict")
    return {k: v for k, v in raw.items() if isinstance(v, torch.Tensor)}


def unet_from_state(state: dict[str, torch.Tensor], path: Path):
    """A diffusers UNet2DConditionModel holding the LDM UNet `state` (every tensor used, every
    weight given). DreamsculptError naming a few keys when they do not fit."""
    from diffusers import UNet2DConditionModel

    try:
        layout = read_layout(state)
    except KeyError as exc:
        camera = "camera_embed" in str(exc)
        raise DreamsculptError(
            f"'{path}' is not an MVDream checkpoint: its UNet has no {exc} tensor"
            + (" (no camera input: a plain Stable Diffusion checkpoint? Use --prior sd for it)" if camera else "")
            + f". Expected MVDream's original {MVDREAM_FILE}. " + _WHAT_TO_DO) from exc
    names, unknown = ldm_to_diffusers(state, layout)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(diffusers_config(layout))
    expected = set(unet.state_dict())
    missing = sorted(expected - set(names.values()))
    extra = sorted(unknown + [old for old, new in names.items() if new not in expected])
    if missing or extra:
        raise DreamsculptError(
            f"'{path}' does not fit MVDream's UNet: {len(extra)} unknown tensors {extra[:3]}, {len(missing)} missing "
            f"(diffusers names) {missing[:3]}. Expected MVDream's original {MVDREAM_FILE} (SD 2.1-base, 4 views). " + _WHAT_TO_DO)
    try:
        unet.load_state_dict({new: state[old] for old, new in names.items()}, strict=True, assign=True)
    except RuntimeError as exc:   # a tensor of the wrong shape
        raise DreamsculptError(f"'{path}' does not fit MVDream's UNet ({first_line(exc)}). " + _WHAT_TO_DO) from exc
    return unet


# --------------------------------------------------------------------------- converted folder

def save_mvdream_folder(parts: MVDreamComponents, path: str | Path) -> Path:
    """Write `parts` as a converted MVDream folder (SD's diffusers layout, a multi-view UNet)
    that `load_mvdream_components(path)` loads offline; e.g. once from the original checkpoint.
    Returns the folder."""
    import diffusers
    from diffusers import DDPMScheduler

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("unet", "vae", "text_encoder", "tokenizer"):
        getattr(parts, name).save_pretrained(str(folder / name))
    _schedule(parts.alphas_cumprod.cpu(), parts.prediction_type, DDPMScheduler).save_pretrained(str(folder / "scheduler"))
    index = {"_class_name": "MVDreamPipeline", "_diffusers_version": diffusers.__version__,
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "scheduler": ["diffusers", "DDPMScheduler"]}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    return folder


def _schedule(alphas_cumprod: torch.Tensor, prediction_type: str, scheduler_class):
    """A scheduler with these noise levels: MVDream's own config when they are its, else the
    betas that give them."""
    config = {**MVDREAM_SCHEDULER_CONFIG, "prediction_type": prediction_type}
    scheduler = scheduler_class(**config)
    if scheduler.alphas_cumprod.shape == alphas_cumprod.shape and torch.allclose(
            scheduler.alphas_cumprod.float(), alphas_cumprod.float(), rtol=1e-5, atol=1e-7):
        return scheduler
    a = alphas_cumprod.double()
    betas = 1.0 - a / torch.cat([a.new_ones(1), a[:-1]])
    return scheduler_class(**{**config, "num_train_timesteps": len(a), "trained_betas": betas.tolist()})
