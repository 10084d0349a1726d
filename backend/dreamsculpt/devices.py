"""Which torch device and dtype a run uses.

Defaults favour usability: `auto` picks the fastest device present and fp32 everywhere;
fp16 is opt-in and CUDA-only (fp16 on CPU is slow or unsupported, and on MPS SD's
attention and VAE overflow). A device that is asked for but absent is an error that says
what to pass instead, never a silent fallback.
"""

from __future__ import annotations

import torch

from .errors import DreamsculptError


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" -> cuda, then mps, then cpu; "cpu", "cuda", "cuda:N" and "mps" are honoured
    when present. Raises DreamsculptError for an unknown or unavailable device."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DreamsculptError(
            f"Unknown device '{name}': use --device auto, cpu, cuda, cuda:N or mps.") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DreamsculptError(
                f"Device '{name}' was asked for but CUDA is not available (no NVIDIA GPU, or a "
                "CPU-only torch build). Use --device cpu or --device auto.")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DreamsculptError(
                f"Device '{name}' was asked for but only {count} CUDA device(s) exist "
                f"(cuda:0 to cuda:{count - 1}). Use --device cuda or --device auto.")
        return device
    if device.type == "mps":
        if not _mps_available():
            raise DreamsculptError(
                "Device 'mps' was asked for but Apple's Metal backend is not available on this "
                "machine. Use --device cpu or --device auto.")
        return device
    raise DreamsculptError(
        f"Device '{name}' is not supported: use --device auto, cpu, cuda, cuda:N or mps.")


def resolve_dtype(fp16: bool, device: torch.device | str) -> torch.dtype:
    """torch.float16 when fp16 is asked for on a CUDA device, else torch.float32.
    Raises DreamsculptError for fp16 on any other device."""
    device = torch.device(device)
    if not fp16:
        return torch.float32
    if device.type != "cuda":
        raise DreamsculptError(
            f"fp16 is CUDA-only, but this run uses the {device.type} device. Run without "
            "--fp16 (fp32 is used on CPU and MPS), or pick a CUDA device with --device cuda.")
    return torch.float16
