"""Milliseconds per optimisation step of each 2D prior and score.

The real loop (`Trainer.train_step`, whose timings split a step into render, guidance and
backward + optimiser) on "a red cube", one row per prior x score (and Perp-Neg where the prior
has view prompts):

* tiny: the tests' random models (tests/tiny_sd.py, tiny_mvdream.py, tiny_if.py), saved and
  loaded back through the loaders users take, at the CI size (32 px renders, a 32^2
  triplane). MVDream renders a ring of 4 views a step, the others 1.
* sized (--sized): Stable Diffusion 2.1-base-sized and MVDream-sized random weights (the real
  architectures: an 865 M-parameter UNet, SD's VAE, OpenCLIP-H-sized text encoder) at 64 px
  renders, the standard preset's size, with the peak GPU memory and the minutes the standard
  preset's 1500 steps would take. Meant for a CUDA GPU; on a CPU it runs a few steps only.

The built-in reference prior is the closed-form baseline. Random weights give no meaningful
images: the timings do not depend on the values.

    .venv/bin/python bench/bench_priors.py                       # CPU, tiny models, ~3 minutes
    .venv/bin/python bench/bench_priors.py --threads 1           # a machine shared with others
    .venv/bin/python bench/bench_priors.py --device cuda --sized --fp16
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from dreamsculpt.config import DEFAULT_MODELS, RunConfig
from dreamsculpt.models import ModelCache
from dreamsculpt.optimize import Trainer, TrainingViews
from dreamsculpt.priors import text_prior

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent / "tests"))
from sized_models import sized_mvdream, sized_sd  # noqa: E402
from tables import OtherCpuUse, code_version, machine, markdown_table  # noqa: E402
from tiny_if import build_tiny_if  # noqa: E402
from tiny_mvdream import build_tiny_mvdream  # noqa: E402
from tiny_sd import build_tiny_sd  # noqa: E402

#: (prior, score, perp_neg) of each row.
ROWS = [("builtin", "sds", False), ("builtin", "sjc", False),
        ("sd", "sds", False), ("sd", "sjc", False), ("sd", "sds", True),
        ("mvdream", "sds", False), ("mvdream", "sjc", False),
        ("if", "sds", False), ("if", "sjc", False), ("if", "sds", True)]
BUILDERS = {"sd": build_tiny_sd, "mvdream": build_tiny_mvdream, "if": build_tiny_if}
STANDARD_STEPS = 1500
HEADER = ["prior", "score", "images/step", "render ms", "guidance ms", "backward ms", "step ms"]


@dataclass
class Timing:
    images: int                 # renders a step
    phases: dict[str, float]    # ms per step: occupancy, render, guidance, backward
    wall_ms: float              # ms per step, all of it
    peak_mb: float | None       # peak GPU memory (CUDA only)


def run_config(resolution: int, grid: int, device: str, fp16: bool) -> RunConfig:
    config = RunConfig()
    config.field.grid_resolution, config.render.resolution = grid, resolution
    config.render.occupancy_resolution = 32
    config.train.checkpoint_every, config.train.preview_every = 0, 0
    config.shading.warmup_fraction = 0.0       # the shaded steps' normals are part of the cost
    g = config.guidance
    g.prompt, g.negative, g.device, g.fp16 = "a red cube", "blurry", device, fp16
    return config


def time_steps(trainer: Trainer, warmup: int, steps: int, device: torch.device) -> Timing:
    """Mean per-step timings over `steps` after `warmup` steps."""
    for _ in range(warmup):
        trainer.train_step()
    trainer.timings = dict.fromkeys(trainer.timings, 0.0) | {"steps": 0}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = 1e3 * (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    images = trainer.config.train.batch_size * trainer.views.camera.ring
    return Timing(images, trainer.ms_per_step(), wall, peak)


def tiny_row(prior: str, score: str, perp_neg: bool, folders: dict[str, str], args) -> Timing:
    config = run_config(args.resolution, 32, args.device, False)
    g = config.guidance
    g.prior, g.score, g.perp_neg = prior, score, perp_neg
    g.model = folders.get(prior, DEFAULT_MODELS.get(prior, g.model))
    built = text_prior(g, config.render.resolution, TrainingViews.of(config), ModelCache())
    trainer = Trainer(config, built.guidance, views=built.views)
    return time_steps(trainer, args.warmup, args.steps, trainer.device)


def sized_row(prior: str, score: str, components, args) -> Timing:
    from dreamsculpt.guidance.mvdream import MVDreamGuidance
    from dreamsculpt.guidance.mvdream_unet import MVDREAM_VIEWS
    from dreamsculpt.guidance.stable_diffusion import StableDiffusionGuidance

    config = run_config(64, 128, args.device, args.fp16)
    config.guidance.prior, config.guidance.score = prior, score
    device = components.alphas_cumprod.device
    if prior == "mvdream":
        guidance = MVDreamGuidance(config.guidance, device, components)
        views = TrainingViews(replace(config.camera, ring=MVDREAM_VIEWS), config.shading)
    else:
        guidance, views = StableDiffusionGuidance(config.guidance, device, components), TrainingViews.of(config)
    trainer = Trainer(config, guidance, views=views)
    return time_steps(trainer, args.sized_warmup, args.sized_steps, device)


def row_cells(name: str, score: str, perp_neg: bool, t: Timing, standard: bool) -> list:
    p = t.phases
    cells = [name, score + (" + Perp-Neg" if perp_neg else ""), t.images, f"{p['render']:.1f}",
             f"{p['guidance']:.1f}", f"{p['backward']:.1f}", f"{t.wall_ms:.1f}"]
    if standard:
        cells += [f"{t.peak_mb:.0f}" if t.peak_mb is not None else "-", f"{STANDARD_STEPS * t.wall_ms / 6e4:.1f}"]
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--resolution", type=int, default=32, help="render size of the tiny rows")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sized", action="store_true", help="also SD- and MVDream-sized random weights")
    parser.add_argument("--no-tiny", action="store_true", help="leave out the tiny models' rows")
    parser.add_argument("--sized-warmup", type=int, default=2)
    parser.add_argument("--sized-steps", type=int, default=10)
    parser.add_argument("--fp16", action="store_true", help="sized rows in half precision (CUDA)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# Priors: ms per optimisation step\n\n{machine()}, {torch.get_num_threads()} threads, "
          f"device {args.device}; {code_version()}\n")
    if not args.no_tiny:
        tiny_table(args)
    if args.sized:
        sized_table(args)


def tiny_table(args) -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp, OtherCpuUse() as quiet:
        folders = {name: build(Path(tmp) / name) for name, build in BUILDERS.items()}
        for prior, score, perp_neg in ROWS:
            rows.append(row_cells(prior, score, perp_neg, tiny_row(prior, score, perp_neg, folders, args), False))
    print(f"Tiny random models, {args.resolution} px renders, {args.warmup} warm-up + {args.steps} steps a row "
          f"({quiet.note()}):\n")
    print(markdown_table(HEADER, rows) + "\n")


def sized_table(args) -> None:
    rows = []
    dtype = torch.float16 if args.fp16 else torch.float32
    with OtherCpuUse() as quiet:
        for name, build in (("sd", sized_sd), ("mvdream", sized_mvdream)):
            components = build(torch.device(args.device), dtype)
            for score in ("sds", "sjc"):
                rows.append(row_cells(f"{name} (sized)", score, False, sized_row(name, score, components, args), True))
            del components
    print(f"Sized random weights ({str(dtype).replace('torch.', '')}), 64 px renders, {args.sized_warmup} warm-up + "
          f"{args.sized_steps} steps a row; standard = {STANDARD_STEPS} steps ({quiet.note()}):\n")
    print(markdown_table(HEADER + ["peak MB", "standard min"], rows) + "\n")


if __name__ == "__main__":
    main()
