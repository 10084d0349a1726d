"""DeepFloyd IF stage I as a 2D prior: Score Distillation in pixel space.

IF-I is a pixel diffusion model at 64 x 64 conditioned on T5 text embeddings, so there is no
VAE: one `grad` call resizes the renders to 64 px, maps them to [-1, 1], noises them at a
sampled time, runs the UNet on every text condition (unconditional, the view-blended prompt,
and Perp-Neg's negatives when asked), combines them (scores.py, prompts.py) and carries
g = w(t) (eps_hat - eps) back through the resize with one autograd.grad. The UNet predicts
epsilon and a learned variance (6 channels); SDS uses only the first 3.

Loading (hub id or diffusers folder, fp16 variant files, the parked T5 encoder) is in
deepfloyd_loading.py; `load_if_components` and `IFComponents` are re-exported here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..cameras import Cameras
from ..config import GuidanceConfig
from ..devices import resolve_device, resolve_dtype
from ..errors import DreamsculptError
from .base import GuidanceOutput, chosen_background, make_schedule
from .deepfloyd_loading import TEXT_TOKENS, IFComponents, load_if_components
from .prompts import ViewPrompts
from .scores import score_gradient, score_of

__all__ = ["DEFAULT_GUIDANCE_SCALE", "DeepFloydGuidance", "IFComponents", "load_if_components"]

#: threestudio's `deep-floyd-guidance` default, which its IF configs keep (dreamfusion-if,
#: dreamfusion-if-perpneg): pixel-space IF is guided far less than latent SD (100). Its plain-CFG
#: branch computes e_c + s (e_c - e_u), an effective 21 in the e_u + s (e_c - e_u) used here.
DEFAULT_GUIDANCE_SCALE = 20.0


class DeepFloydGuidance:
    """Pixel-space SDS (or SJC) with IF stage I, view-dependent T5 prompts and optional
    Perp-Neg. A natural-image model: any background colour will do, so `backgrounds` is not
    used.

    The prompts are encoded once here, with the T5 encoder brought to the run's device for
    the encode and parked on the CPU again after it (IFComponents explains the memory)."""

    def __init__(self, config: GuidanceConfig, device: torch.device | None = None,
                 components: IFComponents | None = None):
        if not config.prompt.strip():
            raise DreamsculptError("DeepFloyd IF guidance needs a text prompt: pass one, "
                                   "or use --prior builtin or --prior references.")
        if components is None:
            device = device if device is not None else resolve_device(config.device)
            dtype = resolve_dtype(config.fp16, device)
            components = load_if_components(config.model, device, dtype)
        self.parts = components
        self.device = components.device
        self.background = chosen_background(config.background, "learned")
        self.scale = (DEFAULT_GUIDANCE_SCALE if config.guidance_scale is None
                      else config.guidance_scale)
        self.schedule = make_schedule(config, components.alphas_cumprod)
        self.score = score_of(config)
        self.prompts = ViewPrompts(self._encode_text, config.prompt, config.negative,
                                   config.view_dependent, config.perp_neg)

    def describe(self) -> str:
        size, dtype = self.parts.native_size, str(self.parts.unet.dtype).replace("torch.", "")
        views = "view-dependent prompts" if self.prompts.view_dependent else "one prompt"
        views += " with Perp-Neg" if self.prompts.perp_neg else ""
        return (f"DeepFloyd IF '{self.parts.source or 'preloaded'}' ({size} px pixel space, "
                f"{dtype}, {self.device}), {self.score.name.upper()}, guidance scale "
                f"{self.scale:g}, {views}")

    @torch.no_grad()
    def _encode_text(self, texts: list[str]) -> torch.Tensor:
        """N texts -> [N, 77, D] T5 hidden states in the UNet's dtype, on its device (D = 4096
        for IF). Lower-cased and stripped as IF's pipeline does (its captions were); padded
        to 77 tokens with the attention mask given to T5, as IF was trained."""
        tok = self.parts.tokenizer
        batch = tok([t.lower().strip() for t in texts], padding="max_length", max_length=TEXT_TOKENS,
                    truncation=True, add_special_tokens=True, return_tensors="pt")
        with self.parts.text_encoder_on(self.device) as encoder:
            hidden = encoder(batch.input_ids.to(self.device),
                             attention_mask=batch.attention_mask.to(self.device))[0]
        return hidden.to(self.parts.unet.dtype)

    def _model_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] -> [B, 3, S, S] in [-1, 1] (S = native_size), differentiable.
        Shrinking averages boxes of pixels ("area"), so every render pixel gets a gradient
        (bilinear at 4x would sample a quarter of them); enlarging is bilinear."""
        size = self.parts.native_size
        x = images.to(self.device, torch.float32)
        if x.shape[-2:] != (size, size):
            shrink = x.shape[-2] >= size and x.shape[-1] >= size
            x = (F.interpolate(x, size=(size, size), mode="area") if shrink else
                 F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False))
        return x * 2.0 - 1.0

    @torch.no_grad()
    def _predict_noise(self, noisy: torch.Tensor, steps: torch.Tensor, cameras: Cameras) -> torch.Tensor:
        """noisy: [N, 3, S, S] pixels at integer steps [N], N = K * B for the B `cameras` (K
        noise draws, draw-major). Returns the guided noise estimate, [N, 3, S, S] float32."""
        unet, batch = self.parts.unet, len(cameras)
        cameras = cameras[torch.arange(batch).repeat(noisy.shape[0] // batch)]
        count = self.prompts.count
        out = unet(noisy.repeat(count, 1, 1, 1).to(unet.dtype), steps.repeat(count),
                   encoder_hidden_states=self.prompts.embeddings(cameras)).sample
        # [eps, variance] per pixel: the learned variance serves sampling, not SDS.
        pred = self.prompts.guide(out[:, :noisy.shape[1]], cameras, self.scale)
        if self.parts.prediction_type == "v_prediction":
            ab = self.parts.alphas_cumprod[steps].view(-1, 1, 1, 1)
            pred = ab.sqrt() * pred + (1.0 - ab).sqrt() * noisy
        return pred

    def grad(self, images: torch.Tensor, cameras: Cameras, progress: float,
             generator: torch.Generator, backgrounds: torch.Tensor | None = None) -> GuidanceOutput:
        """images: [B, 3, H, W] renders in [0, 1]. Returns d(loss)/d(images), [B, 3, H, W].

        The gradient does not flow through the UNet: g (scores.py: SDS's w(t) (eps_hat - eps),
        or SJC's average) is d(loss)/d(pixels at 64 px) and is pulled back through the resize."""
        # A detached leaf: the caller's render graph is never traversed or freed here.
        images_in = images.detach().requires_grad_(True)
        with torch.enable_grad():
            pixels = self._model_pixels(images_in)  # [B, 3, S, S]
        batch, steps_total = images.shape[0], self.parts.alphas_cumprod.shape[0]
        t = self.schedule.sample(batch, progress, generator)  # [B] in [0, 1]
        steps = (t * (steps_total - 1)).round().long().to(self.device)
        g = score_gradient(self.score, pixels, steps, self.parts.alphas_cumprod,
                           lambda noisy, at: self._predict_noise(noisy, at, cameras), generator)
        # non-finite values are left for the loop to catch
        (image_grad,) = torch.autograd.grad(pixels, images_in, grad_outputs=g)
        return GuidanceOutput(grad=image_grad.detach().to(images.dtype),
                              loss=float(g.pow(2).mean()),
                              t=steps.float().cpu() / (steps_total - 1))
