"""Stable Diffusion inpainting as a scene walk's `Inpainter` (diffusers'
StableDiffusionInpaintPipeline, safety checker off).

One `inpaint` call: resize the frame to a multiple of the VAE's scale factor, run the pipeline
once per candidate (each with its own seed drawn from the caller's generator), resize back,
keep the candidate whose seam agrees best with the known pixels, and paste: known pixels
exactly as given, hole pixels from the model.

Models load as Stable Diffusion guidance loads them (guidance/stable_diffusion.py): a hub id,
a local diffusers folder (model_index.json) or one .safetensors/.ckpt file; the UNet must be
an inpainting UNet (9 input channels). diffusers is imported inside the functions so
importing this module stays cheap.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..cameras import Pinhole
from ..config import DEFAULT_INPAINT_MODEL
from ..errors import DreamsculptError, NonFiniteError
from ..guidance.hub import first_line, load_from_hub, looks_like_path

#: Width in pixels (of the caller's frame) of the ring of known pixels around the hole on
#: which candidates are compared.
SEAM_BAND_PX = 4
#: latents + mask + masked-image latents: what an inpainting UNet takes.
INPAINT_UNET_CHANNELS = 9
_WHAT_TO_DO = ("Download it once with network access, pass a diffusers inpainting folder or "
               "one .safetensors/.ckpt inpainting checkpoint with --model PATH, or use "
               "--prior builtin.")

#: on_step(done, total): denoising steps done so far in this `inpaint` call, over all candidates.
StepCallback = Callable[[int, int], None]


def load_inpainter(model: str = DEFAULT_INPAINT_MODEL, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32, steps: int = 30,
                   guidance_scale: float = 7.5, candidates: int = 1,
                   on_step: StepCallback | None = None) -> StableDiffusionInpainter:
    """Load a Stable Diffusion inpainting model (hub id, diffusers folder or one checkpoint
    file) onto `device` in `dtype`. Raises DreamsculptError saying what to do when it cannot."""
    if steps < 1 or candidates < 1:
        raise DreamsculptError(f"Inpainting needs at least one step and one candidate (got "
                               f"{steps} steps, {candidates} candidates).")
    pipe = _load_pipeline(model)
    channels = pipe.unet.config.in_channels
    if channels != INPAINT_UNET_CHANNELS:
        raise DreamsculptError(
            f"'{model}' is not a Stable Diffusion inpainting model: its UNet takes {channels} "
            f"input channels, an inpainting UNet takes {INPAINT_UNET_CHANNELS} (latents, mask, "
            "masked image). Pass an inpainting model such as "
            f"{DEFAULT_INPAINT_MODEL} with --model PATH, or use --prior builtin.")
    pipe = pipe.to(device=torch.device(device), dtype=dtype)
    pipe.set_progress_bar_config(disable=True)  # progress goes through on_step instead
    return StableDiffusionInpainter(pipe, model, steps, guidance_scale, candidates, on_step)


def _load_pipeline(model: str) -> Any:
    """A StableDiffusionInpaintPipeline (not yet checked for a 9-channel UNet)."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise DreamsculptError(
                f"'{model}' is a folder but not a diffusers model folder (no model_index.json). "
                "Pass a diffusers inpainting folder or one .safetensors/.ckpt file with "
                "--model PATH, or use --prior builtin.")
        try:
            return _load_diffusers(str(path), local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure becomes one actionable error
            raise DreamsculptError(
                f"Could not load the diffusers folder '{model}' ({first_line(exc)}). Pass a "
                "complete Stable Diffusion inpainting folder with --model PATH, or use "
                "--prior builtin.") from exc
    if path.is_file():
        return _load_checkpoint(path)
    if looks_like_path(model):
        raise DreamsculptError(
            f"Inpainting model path '{model}' does not exist. Pass an existing diffusers "
            "inpainting folder or .safetensors/.ckpt file with --model PATH, or use "
            "--prior builtin.")
    return load_from_hub(model, _load_diffusers, "Stable Diffusion inpainting model",
                         _WHAT_TO_DO)


def _load_diffusers(source: str, local_files_only: bool) -> Any:
    from diffusers import StableDiffusionInpaintPipeline

    return StableDiffusionInpaintPipeline.from_pretrained(
        source, local_files_only=local_files_only, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)


def _load_checkpoint(path: Path) -> Any:
    """One original-format checkpoint, through the guidance loader's `_load_single_file` (its
    configs come from a surrounding diffusers folder or the Hugging Face cache). That loader
    hands back a DDPM scheduler, which SDS wants; sampling in a few dozen steps wants DDIM."""
    from diffusers import DDIMScheduler, StableDiffusionInpaintPipeline

    from ..guidance.stable_diffusion import _load_single_file

    unet, vae, text_encoder, tokenizer, scheduler = _load_single_file(path)
    return StableDiffusionInpaintPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=DDIMScheduler.from_config(scheduler.config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)


class StableDiffusionInpainter:
    """An `Inpainter` (scenes/models.py) over a loaded StableDiffusionInpaintPipeline.

    With `candidates` > 1 the pipeline runs that many times with different seeds and the
    candidate whose own pixels on a `SEAM_BAND_PX` ring of known pixels around the hole differ
    least from the input is kept (`seam_error`): the model repaints that ring too, and a
    candidate that reproduces it continues the scene across the seam instead of starting a
    new one there. The camera is ignored."""

    def __init__(self, pipe: Any, model: str, steps: int = 30, guidance_scale: float = 7.5,
                 candidates: int = 1, on_step: StepCallback | None = None):
        self.pipe = pipe
        self.model: str | None = model
        self.steps, self.guidance_scale, self.candidates = steps, guidance_scale, candidates
        self.on_step = on_step

    @property
    def description(self) -> str:
        """One line for run.json, with the settings as they are now (a job may change them)."""
        best_of = f", best of {self.candidates} by seam" if self.candidates > 1 else ""
        dtype = str(self.pipe.unet.dtype).replace("torch.", "")
        return (f"Stable Diffusion inpainting ({self.model}; {self.steps} steps, guidance "
                f"{self.guidance_scale:g}{best_of}, {dtype}, {self.pipe.device})")

    def inpaint(self, image: torch.Tensor, hole: torch.Tensor, camera: Pinhole, prompt: str,
                generator: torch.Generator) -> torch.Tensor:
        """`image` [3, H, W] in [0, 1], `hole` [H, W] bool (True: to be made) -> [3, H, W]:
        known pixels exactly as given, hole pixels from the model, in [0, 1]."""
        hole = hole.to(image.device, torch.bool)
        if not hole.any():
            return image.clone()
        found = self.make_candidates(image, hole, prompt, generator)
        errors = [seam_error(c, image, hole) for c in found]
        best = min(range(len(found)), key=lambda i: (math.isnan(errors[i]), errors[i]))
        if not torch.isfinite(found[best]).all():
            raise NonFiniteError(
                "Stable Diffusion inpainting produced NaN or Inf pixels (fp16 overflow?). Run "
                "without --fp16, or with another --seed.")
        return torch.where(hole, found[best], image)

    @torch.no_grad()
    def make_candidates(self, image: torch.Tensor, hole: torch.Tensor, prompt: str,
                        generator: torch.Generator) -> list[torch.Tensor]:
        """`self.candidates` model outputs, each [3, H, W] in [0, 1] on the image's device and
        dtype, before pasting (the known pixels are the model's too). Candidate k is seeded by
        the k-th of `self.candidates` seeds drawn from `generator`, so it does not depend on
        how many candidates are made after it."""
        height, width = image.shape[-2:]
        image_in, mask_in = self._pipeline_inputs(image, hole)
        seeds = torch.randint(0, 2**63 - 1, (self.candidates,), generator=generator,
                              device=generator.device).tolist()
        found = []
        for index, seed in enumerate(seeds):
            # A CPU generator per candidate: the same seed gives the same noise on any device.
            out = self.pipe(
                prompt=prompt, image=image_in, mask_image=mask_in,
                height=image_in.shape[-2], width=image_in.shape[-1],
                num_inference_steps=self.steps, guidance_scale=self.guidance_scale,
                generator=torch.Generator("cpu").manual_seed(seed), output_type="pt",
                callback_on_step_end=self._progress(index)).images  # [1, 3, h, w] in [0, 1]
            out = F.interpolate(out.float(), size=(height, width), mode="bilinear",
                                align_corners=False)
            found.append(out[0].clamp(0.0, 1.0).to(image.device, image.dtype))
        return found

    def _pipeline_inputs(self, image: torch.Tensor,
                         hole: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The frame at the pipeline's size (h, w multiples of the VAE scale factor f):
        image [1, 3, h, w] in [0, 1] and mask [1, 1, h, w] (1: repaint).

        The mask is made whole latent cells (f x f pixels) wherever a cell touches the hole:
        the pipeline shrinks the mask to latent size by nearest sampling, which would leave a
        thin hole out, and the VAE would then paint the masked-out grey there."""
        f = self.pipe.vae_scale_factor
        size = tuple(max(f, round(side / f) * f) for side in image.shape[-2:])
        device = self.pipe.device
        # The hole's values are meaningless (maybe NaN); grey keeps them out of the resize.
        clean = torch.where(hole, 0.5, image.float().clamp(0.0, 1.0)).to(device)
        image_in = F.interpolate(clean[None], size=size, mode="bilinear", align_corners=False)
        cells = (size[0] // f, size[1] // f)
        touched = F.interpolate(hole.float()[None, None].to(device), size=cells, mode="area") > 0
        mask_in = F.interpolate(touched.float(), size=size, mode="nearest")
        return image_in.clamp(0.0, 1.0), mask_in

    def _progress(self, index: int) -> Callable[..., dict]:
        """callback_on_step_end for candidate `index`: reports steps over all candidates."""
        def callback(pipe: Any, step: int, timestep: Any, tensors: dict) -> dict:
            if self.on_step is not None:
                per = pipe.num_timesteps  # steps, or more for second-order schedulers
                self.on_step(index * per + step + 1, self.candidates * per)
            return {}
        return callback


def seam_error(candidate: torch.Tensor, image: torch.Tensor, hole: torch.Tensor,
               band: int = SEAM_BAND_PX) -> float:
    """Mean absolute difference (colour units in [0, 1], over channels and pixels) between a
    candidate [3, H, W] and the input image [3, H, W] on the known pixels within `band`
    pixels (Chebyshev distance) of the hole [H, W]. 0.0 when there is no such pixel."""
    near = F.max_pool2d(hole.float()[None, None], kernel_size=2 * band + 1, stride=1,
                        padding=band)[0, 0] > 0
    ring = near & ~hole
    if not ring.any():
        return 0.0
    diff = (candidate.float() - image.float()).abs()[:, ring]  # [3, N]
    return float(diff.mean())
