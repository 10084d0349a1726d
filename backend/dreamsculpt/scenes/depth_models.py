"""Monocular depth through transformers as a scene walk's `DepthEstimator`.

Any model that `AutoModelForDepthEstimation` loads and whose output this module knows how to
read: Depth Anything (V1/V2, relative or metric), DPT, Depth Pro, ZoeDepth and GLPN. A hub id
(Hugging Face cache first, then the network) or a local folder (config.json, the image
processor's preprocessor_config.json and the weights); transformers is imported inside the
functions so importing this module stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..cameras import Pinhole
from ..config import DEFAULT_DEPTH_MODEL
from ..errors import DreamsculptError
from ..guidance.hub import first_line, load_from_hub, looks_like_path

#: Metric depths are clamped to at least this (metres) before inverting, so a zero depth
#: (Depth Anything's sigmoid head can reach it) gives a large finite disparity, not Inf.
MIN_DEPTH_M = 1e-3
#: model_type -> what `predicted_depth` is. "metric": depth in metres; "disparity": inverse
#: depth up to an unknown scale and shift (Depth Pro's is 1 / depth scaled by the unknown
#: focal length). Depth Anything says which in its config (see `_output_kind`).
_OUTPUT_KINDS = {"dpt": "disparity", "depth_pro": "disparity", "zoedepth": "metric",
                 "glpn": "metric", "depth_anything": "disparity"}
_WHAT_TO_DO = ("Download it once with network access, pass a local transformers depth model "
               "folder with --depth-model PATH, or use --prior builtin.")


def load_depth_model(model: str = DEFAULT_DEPTH_MODEL,
                     device: torch.device | str = "cpu") -> TransformersDepth:
    """Load a transformers depth-estimation model and its image processor (hub id or local
    folder), frozen, in float32 on `device`. Raises DreamsculptError saying what to do."""
    path = Path(model).expanduser()
    if path.is_file():
        raise DreamsculptError(
            f"'{model}' is a single file; depth models load from a folder (config.json, "
            "preprocessor_config.json and the weights) or a hub id. Pass the folder with "
            "--depth-model PATH, or use --prior builtin.")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise DreamsculptError(
                f"'{model}' is a folder but not a transformers model folder (no config.json). "
                "Pass a depth model folder with --depth-model PATH, or use --prior builtin.")
        try:
            net, processor = _load_parts(str(path), local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure becomes one actionable error
            raise DreamsculptError(
                f"Could not load the depth model folder '{model}' ({first_line(exc)}). Pass a "
                "complete transformers depth-estimation folder with --depth-model PATH, or "
                "use --prior builtin.") from exc
    elif looks_like_path(model):
        raise DreamsculptError(
            f"Depth model path '{model}' does not exist. Pass an existing transformers depth "
            "model folder with --depth-model PATH, or use --prior builtin.")
    else:
        net, processor = load_from_hub(model, _load_parts, "depth model", _WHAT_TO_DO)
    kind = _output_kind(net.config, model)
    net.requires_grad_(False).eval().to(device=torch.device(device), dtype=torch.float32)
    return TransformersDepth(net, processor, model, kind)


def _load_parts(source: str, local_files_only: bool) -> tuple[Any, Any]:
    """(model, image processor) from a folder or hub repo."""
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    kw = {"local_files_only": local_files_only}
    return (AutoModelForDepthEstimation.from_pretrained(source, **kw),
            AutoImageProcessor.from_pretrained(source, **kw))


def _output_kind(config: Any, model: str) -> str:
    """"metric" or "disparity" (see _OUTPUT_KINDS); refuses models it cannot read."""
    model_type = getattr(config, "model_type", "")
    if model_type not in _OUTPUT_KINDS:
        raise DreamsculptError(
            f"'{model}' is a '{model_type}' model; scene walks read Depth Anything, DPT, "
            "Depth Pro, ZoeDepth and GLPN outputs. Pass one of those with --depth-model PATH, "
            "or use --prior builtin.")
    if getattr(config, "depth_estimation_type", None) == "metric":  # Depth Anything metric
        return "metric"
    return _OUTPUT_KINDS[model_type]


class TransformersDepth:
    """A `DepthEstimator` (scenes/models.py) over a transformers depth model. The camera is
    ignored.

    `kind` "metric": the model predicts depth in metres and `disparity` is 1 / depth, depth
    clamped to at least MIN_DEPTH_M. "disparity": the model already predicts an affine-invariant
    inverse depth, returned as it is (>= 0 for the ReLU heads of DPT and Depth Anything; the
    caller aligns scale and shift). Either is finite wherever the model's output is."""

    def __init__(self, net: Any, processor: Any, model: str, kind: str):
        self.net, self.processor, self.kind = net, processor, kind
        self.model: str | None = model
        what = "metric depth, inverted" if kind == "metric" else "relative disparity"
        self.description = f"{type(net).__name__} ({model}; {what}, {net.device})"

    @torch.no_grad()
    def disparity(self, image: torch.Tensor, camera: Pinhole) -> torch.Tensor:
        """`image` [3, H, W] in [0, 1] -> [H, W] float32 inverse depth (1/m for a metric
        model, arbitrary units otherwise) on the image's device."""
        size = tuple(image.shape[-2:])
        # The processor resizes and normalises as the model was trained; the image is already
        # in [0, 1], so its 1/255 rescale is off.
        inputs = self.processor(images=image.detach().float().clamp(0.0, 1.0).cpu(),
                                return_tensors="pt", do_rescale=False)
        pixels = inputs["pixel_values"].to(self.net.device, torch.float32)
        outputs = self.net(pixel_values=pixels)
        depth = self._at_size(outputs, size).float()  # [H, W]
        if self.kind == "metric":
            depth = 1.0 / depth.clamp_min(MIN_DEPTH_M)
        return depth.to(image.device)

    def _at_size(self, outputs: Any, size: tuple[int, int]) -> torch.Tensor:
        """The model's prediction resized (bilinear) to the image: [H, W]."""
        if self.net.config.model_type == "zoedepth":
            # ZoeDepth's processor pads the image against border artefacts; only its own
            # post-processing knows how much to crop off again.
            post = self.processor.post_process_depth_estimation(
                outputs, source_sizes=[size], target_sizes=[size])
            return post[0]["predicted_depth"].reshape(size)
        predicted = outputs.predicted_depth  # [1, h, w]
        return F.interpolate(predicted[:, None].float(), size=size, mode="bilinear",
                             align_corners=False)[0, 0]
