"""Seconds per Zero123 novel view (DDIM) and per Zero123 SDS step.

Two model sizes, both random weights (the timings do not depend on the values):

* tiny: the tests' CI-sized model (tests/tiny_zero123.py, 64 px), saved and loaded back
  through `load_zero123_components`;
* XL-sized: Zero123 / Zero123-XL's architecture (zero123.ZERO123_*_CONFIG: the SD 1.x UNet
  with 8 input channels at 256 px, SD's VAE, CLIP ViT-L/14 vision at 224 px).

On CPU the XL-sized sampler is timed for a few DDIM steps only and extrapolated to the asked
steps: measured (reference encoding + timed steps + decoding) + (steps - timed) x the mean
time of one step after the first; the table says which rows are extrapolated.

    .venv/bin/python bench/bench_zero123.py                    # CPU, ~4 minutes on 2 cores
    .venv/bin/python bench/bench_zero123.py --threads 1        # a machine shared with others
    .venv/bin/python bench/bench_zero123.py --device cuda --fp16 --xl-steps 50
    .venv/bin/python bench/bench_zero123.py --no-xl --views 8
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

import torch
from dreamsculpt.cameras import Cameras
from dreamsculpt.config import GuidanceConfig
from dreamsculpt.devices import resolve_device, resolve_dtype
from dreamsculpt.guidance.base import scaled_linear_alphas_cumprod
from dreamsculpt.guidance.zero123 import Zero123Guidance, sample_novel_views
from dreamsculpt.guidance.zero123_loading import (
    ZERO123_CLIP_CONFIG,
    ZERO123_SCHEDULER_CONFIG,
    ZERO123_UNET_CONFIG,
    ZERO123_VAE_CONFIG,
    _freeze,
    load_zero123_components,
)
from dreamsculpt.guidance.zero123_parts import CLIP_MEAN, CLIP_STD, Zero123Components

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent / "tests"))
from tables import OtherCpuUse, code_version, machine, markdown_table
from tiny_zero123 import build_tiny_zero123

REFERENCE = Cameras.from_orbit(-90.0, 0.0, 3.0, 40.0)


def xl_components(device: torch.device, dtype: torch.dtype) -> Zero123Components:
    """Zero123-XL-sized random components (about 1.2 B parameters)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(ZERO123_UNET_CONFIG)
    vae = AutoencoderKL.from_config(ZERO123_VAE_CONFIG)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**ZERO123_CLIP_CONFIG))
    projection = torch.nn.Linear(ZERO123_CLIP_CONFIG["projection_dim"] + 4,
                                 ZERO123_UNET_CONFIG["cross_attention_dim"])
    parts = Zero123Components(unet, vae, encoder, projection, scaled_linear_alphas_cumprod(),
                              dict(ZERO123_SCHEDULER_CONFIG), clip_mean=CLIP_MEAN,
                              clip_std=CLIP_STD, source="random Zero123-XL-sized")
    _freeze(parts, device, dtype)
    return parts


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_views(parts: Zero123Components, views: int, steps: int, timed_steps: int,
               autoregressive: bool) -> tuple[float, bool]:
    """Seconds per view for `views` views at `steps` DDIM steps, and whether extrapolated."""
    size = parts.native_size
    reference = torch.ones(3, size, size)
    reference[:, size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 0.3
    targets = Cameras.from_orbit([-90.0 + 360.0 * (i + 1) / (views + 1) for i in range(views)],
                                 10.0, 3.0, 40.0)
    stamps: list[float] = []
    sync(parts.device)
    start = time.perf_counter()
    sample_novel_views(parts, reference, REFERENCE, targets, steps=timed_steps,
                       generator=torch.Generator().manual_seed(0), autoregressive=autoregressive,
                       on_step=lambda done, total: stamps.append(time.perf_counter()))
    sync(parts.device)
    total = time.perf_counter() - start
    if timed_steps >= steps:
        return total / views, False
    # The mean step, over steps after the first of each sampling call (the first also pays
    # for encoding the conditioning views): batched, one call; autoregressive, one per view.
    gaps = [b - a for i, (a, b) in enumerate(itertools.pairwise(stamps)) if (i + 1) % timed_steps]
    step = sum(gaps) / len(gaps)
    extra_steps = (steps - timed_steps) * (views if autoregressive else 1)
    return (total + extra_steps * step) / views, True


def time_sds(parts: Zero123Components, repeats: int, batch: int = 1) -> float:
    """Seconds per Zero123Guidance.grad on `batch` renders at the native size."""
    size = parts.native_size
    reference = torch.ones(3, size, size)
    guidance = Zero123Guidance(GuidanceConfig(), parts, reference, REFERENCE)
    images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    cameras = Cameras.from_orbit(torch.linspace(0.0, 180.0, batch), 15.0, 3.0, 40.0)
    generator = torch.Generator().manual_seed(0)
    guidance.grad(images, cameras, 0.5, generator)   # warm-up
    sync(parts.device)
    start = time.perf_counter()
    for i in range(repeats):
        guidance.grad(images, cameras, i / max(repeats, 1), generator)
    sync(parts.device)
    return (time.perf_counter() - start) / repeats


def rows_for(name: str, parts: Zero123Components, views: int, steps: int, timed: int,
             sds_repeats: int, autoregressive: bool, warmup: bool = False) -> list[list[str]]:
    dtype = str(parts.unet.dtype).replace("torch.", "")
    where = f"{parts.native_size} px, {parts.device.type}, {dtype}"
    rows = []
    if warmup:   # first calls pay for lazy imports and allocator growth
        time_views(parts, 1, 2, 2, False)
    modes = [(False, f"batched ({views} view{'s' if views > 1 else ''})")]
    if autoregressive:
        modes.append((True, f"autoregressive ({views} views, 2 neighbours)"))
    for auto, label in modes:
        with OtherCpuUse() as cpu:
            seconds, extrapolated = time_views(parts, views, steps, min(timed, steps), auto)
        note = (f"extrapolated from {timed} timed steps" if extrapolated else "measured")
        rows.append([name, where, f"novel view, {steps} DDIM steps, {label}", f"{seconds:.2f}",
                     note, f"{cpu.cores:.2f}" if cpu.cores is not None else "?"])
    with OtherCpuUse() as cpu:
        seconds = time_sds(parts, sds_repeats)
    rows.append([name, where, "SDS step (1 render)", f"{seconds:.3f}",
                 f"measured, mean of {sds_repeats}", f"{cpu.cores:.2f}" if cpu.cores is not None else "?"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--fp16", action="store_true", help="UNet and CLIP in fp16 (CUDA only)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps per novel view")
    parser.add_argument("--views", type=int, default=4, help="novel views per sampling call")
    parser.add_argument("--tiny-sds", type=int, default=20, help="timed SDS steps, tiny model")
    parser.add_argument("--xl-steps", type=int, default=None,
                        help="DDIM steps actually timed for the XL-sized model (default: 3 on "
                             "CPU, then extrapolated; all of --steps on CUDA)")
    parser.add_argument("--xl-views", type=int, default=None,
                        help="views for the XL-sized model (default: 1 on CPU, --views on CUDA)")
    parser.add_argument("--xl-sds", type=int, default=None,
                        help="timed SDS steps for the XL-sized model (default 2 on CPU, 20 on CUDA)")
    parser.add_argument("--no-xl", action="store_true", help="only the tiny model")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.fp16, device)
    on_cpu = device.type == "cpu"
    rows = []

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        tiny = load_zero123_components(build_tiny_zero123(Path(folder) / "tiny"), device, dtype)
    print(f"tiny model built and loaded in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    rows += rows_for("tiny (CI)", tiny, args.views, args.steps, args.steps, args.tiny_sds, True,
                     warmup=True)

    if not args.no_xl:
        started = time.perf_counter()
        xl = xl_components(device, dtype)
        print(f"XL-sized model built in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        timed = max(2, args.xl_steps or (3 if on_cpu else args.steps))
        views = args.xl_views or (1 if on_cpu else args.views)
        sds = args.xl_sds or (2 if on_cpu else 20)
        rows += rows_for("Zero123-XL-sized", xl, views, args.steps, timed, sds, not on_cpu)

    print(f"# Zero123: seconds per novel view and per SDS step\n\n{machine()}; "
          f"{args.threads} torch threads; {code_version()}\n")
    print(markdown_table(["model", "size, device, dtype", "measure", "seconds", "how",
                          "other CPU use (cores)"], rows))
    if on_cpu and not args.no_xl:
        print("\nXL-sized autoregressive sampling is not timed on CPU: per view it costs the "
              "batched single-view time with 2-3x the UNet batch (reference + neighbours).")


if __name__ == "__main__":
    main()
