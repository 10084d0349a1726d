"""Milliseconds per SDS step, split into render / guidance / backward + optimiser.

Runs the real loop (`Trainer.train_step`, whose `timings` dict times the three phases) on
"a red cube" with the built-in reference prior: rows for albedo-only, lambertian-only and
textureless-only steps (forced over the prior's training views, since reference priors ask for
albedo only), the prior's own schedule as it asks for it, the default
(Stable Diffusion) shading mix over a full run as a weighted row, and the prior's schedule on
1 thread. Occupancy-grid updates happen in `train_step` outside the three timed phases: they
show up amortised in "occupancy + rest" (wall time of the step minus the three phases).

    .venv/bin/python bench/bench_step.py --wait-quiet 600  # 64 px, 50 warm-up + 200 steps per row
    .venv/bin/python bench/bench_step.py --resolution 32 --threads 2 --no-single-thread
    .venv/bin/python bench/bench_step.py --prior sd        # tiny random SD (tests/tiny_sd.py)
    .venv/bin/python bench/bench_step.py --prior sd --model PATH --steps 20 --warmup 2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from dreamsculpt.config import RunConfig
from dreamsculpt.optimize import Trainer, TrainingViews
from dreamsculpt.priors import text_prior
from dreamsculpt.rendering import SHADING_MODES

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tables import (  # noqa: E402
    QUIET_CORES,
    OtherCpuUse,
    code_version,
    machine,
    markdown_table,
    wait_until_quiet,
)

TARGET_MS = 60.0
TARGET = f"render + backward + optimiser ≤ {TARGET_MS:.0f} ms per step on 2 cores"
PROMPT = "a red cube"


@dataclass
class StepTiming:
    """One measured step, seconds."""

    mode: str
    render: float
    guidance: float
    backward: float   # loss assembly + backward + finiteness check + Adam step
    wall: float       # the whole train_step call (includes the occupancy update when due)


def make_config(args: argparse.Namespace) -> RunConfig:
    """The default RunConfig for the benchmarked prior and render size. The run length is
    warm-up + measured steps, so the albedo-only warm-up fraction of the shading schedule
    covers the same share of this short run as of a full one."""
    config = RunConfig()
    g = config.guidance
    g.prior, g.prompt = args.prior, PROMPT
    if args.prior == "sd":
        g.model, g.device = args.model, "cpu"
    config.render.resolution = args.resolution
    config.train.steps = args.warmup + args.steps
    return config


def force_shading(views: TrainingViews, mode: str) -> TrainingViews:
    """Every step in `mode`, instead of the shading the prior asked for (reference priors
    render albedo only), with the prior's cameras."""
    p_albedo, p_lambertian, p_textureless = (float(mode == m) for m in SHADING_MODES)
    shading = replace(views.shading, warmup_fraction=1.0 if mode == "albedo" else 0.0, p_albedo=p_albedo,
                      p_lambertian=p_lambertian, p_textureless=p_textureless)
    return TrainingViews(views.camera, shading)


def measure(config: RunConfig, shading: str, warmup: int, steps: int, threads: int,
            wait_quiet_s: float = 0.0) -> tuple[list[StepTiming], float | None]:
    """Run warmup + steps real training steps, every one in `shading` mode or, for "mix", in
    the schedule the prior asks for. Returns the timings of the last `steps` and
    the cores other processes kept busy meanwhile."""
    if wait_quiet_s:
        wait_until_quiet(wait_quiet_s)
    torch.set_num_threads(threads)
    prior = text_prior(config.guidance, config.render.resolution, TrainingViews.of(config))
    views = prior.views if shading == "mix" else force_shading(prior.views, shading)
    trainer = Trainer(config, prior.guidance, views=views)
    # Record which shading mode each step drew (the loop does not expose it otherwise).
    modes: list[str] = []
    draw = trainer.shading_mode
    trainer.shading_mode = lambda: modes.append(draw()) or modes[-1]
    measured = []
    others = OtherCpuUse()
    for i in range(warmup + steps):
        if i == warmup:
            others.start()
        before = dict(trainer.timings)
        start = time.perf_counter()
        trainer.train_step()
        wall = time.perf_counter() - start
        if i >= warmup:
            after = trainer.timings
            measured.append(StepTiming(modes[-1], *(after[k] - before[k] for k in ("render", "guidance", "backward")),
                                       wall))
    others.stop()
    return measured, others.cores


def summary_row(label: str, steps: list[StepTiming], threads: int, others: float | None,
                weights: dict[str, float] | None = None) -> list:
    """Mean ms per phase. `weights` (mode -> share) mixes per-mode means instead of plain averaging."""
    phases = ("render", "guidance", "backward", "wall")
    if weights is None:
        ms = {p: 1e3 * sum(getattr(s, p) for s in steps) / len(steps) for p in phases}
        count = str(len(steps))
    else:
        by_mode = {m: [s for s in steps if s.mode == m] for m, w in weights.items() if w > 0}
        ms = {p: sum(weights[m] * 1e3 * sum(getattr(s, p) for s in ss) / len(ss) for m, ss in by_mode.items())
              for p in phases}
        count = "weighted"
    rb = ms["render"] + ms["backward"]
    rest = ms["wall"] - ms["render"] - ms["guidance"] - ms["backward"]
    verdict = "yes" if rb <= TARGET_MS else "no"
    return [label, threads, count, f"{ms['render']:.1f}", f"{ms['guidance']:.1f}", f"{ms['backward']:.1f}",
            f"**{rb:.1f}**", verdict, f"{rest:.1f}", f"{ms['wall']:.1f}",
            "?" if others is None else f"{others:.2f}"]


def mode_counts(steps: list[StepTiming]) -> str:
    return " / ".join(f"{sum(s.mode == m for s in steps)} {m}" for m in SHADING_MODES)


def full_run_shares(config: RunConfig) -> dict[str, float]:
    """Share of each shading mode over a whole run of the default schedule."""
    s = config.shading
    p = {"albedo": s.p_albedo, "lambertian": s.p_lambertian, "textureless": s.p_textureless}
    total = sum(p.values())
    return {m: s.warmup_fraction * (m == "albedo") + (1 - s.warmup_fraction) * p[m] / total for m in SHADING_MODES}


def tiny_sd_model(folder: Path) -> str:
    """Build the tests' tiny random SD pipeline (tests/tiny_sd.py) into `folder`."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tiny_sd import build_tiny_sd
    return build_tiny_sd(folder / "tiny-sd")


def run_rows(args: argparse.Namespace) -> tuple[list[list], list[str]]:
    rows, notes, per_mode, busiest = [], [], {}, 0.0
    modes = SHADING_MODES if args.prior == "builtin" else ()
    for mode in modes:
        print(f"measuring {mode} steps ...", file=sys.stderr)
        per_mode[mode], others = measure(make_config(args), mode, args.warmup, args.steps, args.threads,
                                          args.wait_quiet)
        busiest = max(busiest, others or 0.0)
        rows.append(summary_row(f"{mode} only", per_mode[mode], args.threads, others))
    print(f"measuring the {args.prior} prior's own shading schedule ...", file=sys.stderr)
    mix, others = measure(make_config(args), "mix", args.warmup, args.steps, args.threads, args.wait_quiet)
    rows.append(summary_row(f"{args.prior} prior's schedule ({mode_counts(mix)})", mix, args.threads, others))
    if per_mode:
        shares = full_run_shares(RunConfig())
        combined = [s for steps in per_mode.values() for s in steps]
        rows.append(summary_row("SD-prior mix over a full run (" + " / ".join(
            f"{100 * w:.1f}% {m}" for m, w in shares.items()) + ")", combined, args.threads, busiest, shares))
        d = RunConfig().shading
        notes.append("The builtin and references priors ask for albedo-only renders (their images have "
                     "the lighting baked in); the shaded rows force lambertian / textureless steps over "
                     "their training views to time the path Stable Diffusion runs take. Render and backward cost hardly "
                     "depends on the prior.")
        notes.append(f"The SD-prior mix row weights the per-mode rows by the default ShadingConfig: albedo only for "
                     f"the first {100 * d.warmup_fraction:.0f}% of steps, then {d.p_albedo:g} albedo / "
                     f"{d.p_lambertian:g} lambertian / {d.p_textureless:g} textureless.")
    if not args.no_single_thread and args.threads != 1:
        print(f"measuring the {args.prior} prior's own shading schedule on 1 thread ...", file=sys.stderr)
        single, others = measure(make_config(args), "mix", args.warmup, args.steps, 1, args.wait_quiet)
        rows.append(summary_row(f"{args.prior} prior's schedule ({mode_counts(single)})", single, 1, others))
        torch.set_num_threads(args.threads)
    notes.append("render + backward = render, then loss assembly, backward, gradient finiteness check and Adam "
                 "step (Trainer.timings 'backward'); guidance is the prior's grad() call.")
    notes.append("occupancy + rest = wall time of train_step minus the three phases: mostly the occupancy-grid "
                 "update every 16 steps, amortised.")
    notes.append(f"cores used by others: average CPU load of other processes while the row was measured "
                 f"(from /proc/stat); above {QUIET_CORES} the row is inflated, and two 2-thread torch processes on 2 "
                 "cores slow each other down far more than 2x.")
    notes.append("Measured early in a run (after the warm-up steps), when the field is still close to the "
                 "initial blob; the occupied volume, and so the cost, changes as the shape forms.")
    if args.prior == "sd":
        notes.append(f"Stable Diffusion guidance from {getattr(args, 'model_label', args.model)}: a tiny model "
                     "only shows the split. An SD-1.5-size UNet costs ~12.7 s per guided step on this 2-core CPU "
                     "(FINDINGS.md): real SD guidance is GPU-only here.")
    return rows, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=64, help="render size (default 64)")
    parser.add_argument("--steps", type=int, default=200, help="measured steps per row (default 200)")
    parser.add_argument("--warmup", type=int, default=50, help="steps run before measuring (default 50)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help=f"torch intra-op threads (default {torch.get_num_threads()})")
    parser.add_argument("--no-single-thread", action="store_true", help="skip the 1-thread comparison row")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="before each row, wait up to this long for other processes to leave the CPU")
    parser.add_argument("--prior", choices=("builtin", "sd"), default="builtin")
    parser.add_argument("--model", help="--prior sd: a diffusers folder (default: the tests' tiny random SD)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a benchmark never downloads
    version = code_version()  # the working tree as imported, before anything runs

    with tempfile.TemporaryDirectory() as tmp:
        if args.prior == "sd" and not args.model:
            args.model = tiny_sd_model(Path(tmp))
            args.model_label = "the tests' tiny random SD (tests/tiny_sd.py)"
        rows, notes = run_rows(args)

    print(f"\n### SDS step, {args.prior} prior, \"{PROMPT}\", {args.resolution}² render, "
          f"{args.warmup} warm-up + {args.steps} measured steps per row\n")
    print(f"Machine: {machine()}; {version}. Target: {TARGET}.\n")
    print(markdown_table(["steps", "threads", "n", "render ms", "guidance ms", "backward + Adam ms",
                          "render + backward ms", f"≤ {TARGET_MS:.0f} ms", "occupancy + rest ms", "wall ms",
                          "cores used by others"], rows))
    print()
    for note in notes:
        print(f"- {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
