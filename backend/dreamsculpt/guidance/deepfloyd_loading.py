"""Loading DeepFloyd IF stage I into `IFComponents`: a hub id (Hugging Face cache first, then the
network) or a local diffusers folder of an IFPipeline. Only unet/, text_encoder/, tokenizer/ and
scheduler/ are read: the safety checker and watermarker act on sampled images, which SDS never
makes. There is no single-file IF format, so one weights file is refused.

Where the weights come in two precisions (the real repos ship `*.fp16.*` variant files beside
fp32 ones; IF-I-XL's fp32 UNet alone is ~17 GB) the fp16 variant is read and cast to the run's
dtype. Every failure is a DreamsculptError that says what to do. diffusers and transformers are
imported inside the functions so importing this module stays cheap.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from ..config import DEFAULT_IF_MODEL
from ..errors import DreamsculptError
from .hub import first_line, load_from_hub, looks_like_path

#: IF's text length: T5 reads longer texts, but IF was trained on 77 tokens.
TEXT_TOKENS = 77
#: The variant the real repos publish in half precision (what the model manager downloads).
FP16_VARIANT = "fp16"
#: Where the T5 encoder waits between uses (see IFComponents).
PARKING = torch.device("cpu")
WHAT_TO_DO = ("DeepFloyd IF is gated: accept its licence on the model's Hugging Face page and log "
              "in once (hf auth login), download it with network access, or pass a local copy of "
              "the diffusers folder with --model PATH; or use the offline reference prior with "
              "--prior builtin.")


@dataclass
class IFComponents:
    """The frozen parts SDS needs from IF stage I.

    unet: on the run's device and dtype; predicts [eps, variance] (6 channels) from 3-channel
    pixels in [-1, 1] at native_size (64 for IF-I). alphas_cumprod: [T] float32 on the UNet's
    device. prediction_type: "epsilon" (IF-I) or "v_prediction".

    Memory: the T5 v1.1 XXL text encoder (4.7 B parameters: ~9.5 GB in fp16, ~19 GB in fp32)
    is as large as IF-I-XL's UNet (4.3 B, ~8.6 GB in fp16) but is needed only to encode the
    prompts, once per guidance. It is therefore parked in CPU memory (`PARKING`) and moved to
    the run's device only for the duration of an encode (`text_encoder_on`): on a GPU that
    costs one host-device copy each way per run (seconds) and keeps ~9.5 GB of GPU memory free
    for training; on a CPU run nothing moves. It stays loaded (in RAM) so a cached model can
    serve the next run's prompts.
    """

    unet: Any                 # diffusers UNet2DConditionModel, run dtype, on the device
    text_encoder: Any         # transformers T5EncoderModel, run dtype, parked on the CPU
    tokenizer: Any            # transformers T5TokenizerFast
    alphas_cumprod: torch.Tensor
    prediction_type: str = "epsilon"
    source: str = ""          # what --model named, for messages
    native_size: int = 64     # the UNet's side in pixels (no VAE: pixels are its input)
    _text_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def device(self) -> torch.device:
        return self.alphas_cumprod.device

    @contextmanager
    def text_encoder_on(self, device: torch.device) -> Iterator[Any]:
        """The text encoder on `device` for the block, parked on the CPU again after it. One
        user at a time: two runs sharing a cached model must not move it under each other."""
        with self._text_lock:
            self.text_encoder.to(device)
            try:
                yield self.text_encoder
            finally:
                self.text_encoder.to(PARKING)


def load_if_components(model: str = DEFAULT_IF_MODEL, device: torch.device | str = "cpu",
                       dtype: torch.dtype = torch.float32) -> IFComponents:
    """Load and freeze IF stage I from a hub id or a local diffusers folder (model_index.json
    of an IFPipeline). Raises DreamsculptError saying what to do when it cannot."""
    path = Path(model).expanduser()
    load = partial(_load_parts, dtype=dtype)
    if path.is_dir():
        _check_pipeline_index(path / "model_index.json", model)
        try:
            parts = load(str(path), True)
        except (OSError, ValueError) as exc:
            raise DreamsculptError(
                f"Could not load the DeepFloyd IF folder '{model}' ({first_line(exc)}). Pass a "
                "complete IF stage I diffusers folder (unet/, text_encoder/, tokenizer/, "
                "scheduler/) with --model PATH, or use --prior builtin.") from exc
    elif path.is_file():
        raise DreamsculptError(_single_file_message(path))
    elif looks_like_path(model):
        raise DreamsculptError(
            f"DeepFloyd IF model path '{model}' does not exist. Pass an existing IF diffusers "
            f"folder with --model PATH, the hub id {DEFAULT_IF_MODEL}, or use --prior builtin.")
    else:
        parts = load_from_hub(model, load, "DeepFloyd IF model", WHAT_TO_DO)
    components = _freeze(*parts, device=torch.device(device), dtype=dtype)
    components.source = model
    return components


def _single_file_message(path: Path) -> str:
    folder = path.parent if (path.parent / "model_index.json").is_file() else None
    hint = f" (here: --model {folder})" if folder else ""
    return (f"'{path}' is a single file, but DeepFloyd IF has no single-file format: its UNet, T5 "
            f"text encoder, tokenizer and scheduler live in separate folders. Pass the diffusers "
            f"folder that holds model_index.json with --model PATH{hint}, the hub id "
            f"{DEFAULT_IF_MODEL}, or use --prior builtin.")


def _check_pipeline_index(index: Path, model: str) -> None:
    """Refuse what is not IF stage I, from its model_index.json, before any weight is read."""
    if not index.is_file():
        raise DreamsculptError(
            f"'{model}' is a folder but not a diffusers DeepFloyd IF folder (no model_index.json). "
            "Pass an IF stage I diffusers folder with --model PATH, or use --prior builtin.")
    try:
        name = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
    except (OSError, ValueError, AttributeError) as exc:
        raise DreamsculptError(f"Could not read '{index}' ({first_line(exc)}). Pass an IF stage I "
                               "diffusers folder with --model PATH, or use --prior builtin.") from exc
    if name == "IFPipeline":
        return
    if isinstance(name, str) and name.startswith("IF"):
        raise DreamsculptError(
            f"'{model}' is a DeepFloyd IF {name}, not stage I: later stages upscale an image and "
            f"cannot guide from text alone. Pass stage I ({DEFAULT_IF_MODEL} or a folder of it) "
            "with --model PATH.")
    other = "--prior sd" if name and "StableDiffusion" in name else "the prior made for it"
    raise DreamsculptError(
        f"'{model}' is not a DeepFloyd IF stage I folder (model_index.json names {name!r}, not "
        f"IFPipeline). Pass an IF folder with --model PATH, or use {other} for this model.")


def _load_parts(source: str, local_files_only: bool, dtype: torch.dtype) -> tuple:
    """(unet, text_encoder, tokenizer, scheduler) from a diffusers layout (folder or hub id).
    The tokenizer first: it is small, and its failure (no sentencepiece) should come before
    gigabytes of weights are read."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import T5EncoderModel

    kw = {"local_files_only": local_files_only}
    if not Path(source).is_dir():
        _check_hub_index(source, local_files_only)
    tokenizer = _load_tokenizer(source, local_files_only)
    unet = _prefer_fp16(source, "unet", lambda variant: UNet2DConditionModel.from_pretrained(
        source, subfolder="unet", variant=variant, torch_dtype=dtype, **kw))
    # The dtype is given at load, not cast afterwards: transformers then keeps T5's feed-forward
    # output layers ("wo", `_keep_in_fp32_modules`) in fp32, where fp16 overflows.
    text_encoder = _prefer_fp16(source, "text_encoder", lambda variant: T5EncoderModel.from_pretrained(
        source, subfolder="text_encoder", variant=variant, **_transformers_dtype(dtype), **kw))
    scheduler = DDPMScheduler.from_pretrained(source, subfolder="scheduler", **kw)
    return unet, text_encoder, tokenizer, scheduler


def _check_hub_index(repo: str, local_files_only: bool) -> None:
    from huggingface_hub import hf_hub_download

    index = hf_hub_download(repo, "model_index.json", local_files_only=local_files_only)
    _check_pipeline_index(Path(index), repo)


def _prefer_fp16(source: str, part: str, load) -> Any:
    """`load(variant)` with the fp16 variant when there is one. A folder says so by its file
    names (model.fp16.safetensors, model.fp16-00001-of-00002.safetensors...); a hub id is
    tried with it first, then without (a repo or cache holding only fp32 files)."""
    folder = Path(source) / part
    if folder.is_dir():
        has_fp16 = any(f".{FP16_VARIANT}." in p.name or f".{FP16_VARIANT}-" in p.name
                       for p in folder.iterdir())
        return load(FP16_VARIANT if has_fp16 else None)
    try:
        return load(FP16_VARIANT)
    except (OSError, ValueError):
        return load(None)


def _load_tokenizer(source: str, local_files_only: bool) -> Any:
    """IF's T5 tokenizer. The real repos ship it only as a SentencePiece model (spiece.model, no
    tokenizer.json); transformers converts that with the `sentencepiece` package, and without it
    fails with an unrelated-looking tiktoken error, turned here into one that says what to do."""
    from transformers import T5TokenizerFast
    from transformers.utils import is_sentencepiece_available

    try:
        return T5TokenizerFast.from_pretrained(source, subfolder="tokenizer",
                                               local_files_only=local_files_only)
    except (OSError, ValueError, ImportError) as exc:
        said = " ".join(str(e).lower() for e in _chain(exc))
        if is_sentencepiece_available() or not ("tiktoken" in said or "sentencepiece" in said):
            raise
        raise DreamsculptError(
            f"DeepFloyd IF's tokenizer in '{source}' is a SentencePiece model (spiece.model), "
            "and reading it needs the sentencepiece package, which is not installed. Install it "
            "(pip install sentencepiece) and run again, or use --prior sd or --prior builtin."
        ) from exc


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def _transformers_dtype(dtype: torch.dtype) -> dict:
    """The load-time dtype argument: `dtype` since transformers 4.56, `torch_dtype` before."""
    import transformers
    from packaging.version import Version

    key = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    return {key: dtype}


def _freeze(unet, text_encoder, tokenizer, scheduler, device: torch.device,
            dtype: torch.dtype) -> IFComponents:
    """UNet to the device, T5 parked on the CPU (IFComponents), every weight frozen."""
    prediction = scheduler.config.get("prediction_type", "epsilon")
    if prediction not in ("epsilon", "v_prediction"):
        raise DreamsculptError(f"This IF model predicts {prediction!r}; Dreamsculpt's IF prior needs "
                               "noise (epsilon) or v prediction. Pass IF stage I with --model PATH.")
    if unet.config.in_channels != 3:
        raise DreamsculptError(
            f"This IF UNet takes {unet.config.in_channels} input channels, not 3 (an upscaling "
            f"stage?). Pass stage I ({DEFAULT_IF_MODEL} or a folder of it) with --model PATH.")
    unet.requires_grad_(False).eval().to(device)
    if unet.dtype != dtype:  # cast only when needed (diffusers warns on casts)
        unet.to(dtype)
    text_encoder.requires_grad_(False).eval().to(PARKING)
    alphas = scheduler.alphas_cumprod.to(device, torch.float32)
    return IFComponents(unet, text_encoder, tokenizer, alphas, prediction,
                        native_size=int(unet.config.sample_size))
