"""Feature encodings for the field: forward, backward and Adam-step milliseconds.

The measurement behind the triplane choice in backend/dreamsculpt/fields.py. Each candidate
samples learnable features at P random points in [-1, 1]^3 with trilinear / bilinear
F.grid_sample and feeds them to the same small MLP (two hidden layers of 32, SiLU, 4
outputs: density + RGB, as in TriplaneField; its input width is the feature width). A last
row times the real TriplaneField at the default config for comparison.

    .venv/bin/python bench/bench_encodings.py
    .venv/bin/python bench/bench_encodings.py --points 60000 --repeats 20 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from dreamsculpt.config import FieldConfig
from dreamsculpt.fields import TriplaneField

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tables import (  # noqa: E402
    QUIET_CORES,
    OtherCpuUse,
    code_version,
    machine,
    markdown_table,
    wait_until_quiet,
)


def small_mlp(in_dim: int, hidden: int = 32) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                         nn.Linear(hidden, 4))


class DenseGrid(nn.Module):
    """A res^3 x dim feature volume, trilinear grid_sample (5-D), then the MLP."""

    def __init__(self, res: int, dim: int):
        super().__init__()
        self.volume = nn.Parameter(torch.randn(1, dim, res, res, res) * 0.01)
        self.mlp = small_mlp(dim)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """points: [P, 3] in [-1, 1] -> [P, 4]."""
        grid = points[None, :, None, None, :]                                     # [1, P, 1, 1, 3]
        feats = F.grid_sample(self.volume, grid, mode="bilinear", align_corners=True)  # [1, C, P, 1, 1]
        return self.mlp(feats.reshape(feats.shape[1], -1).t())


class Triplane(nn.Module):
    """Three res^2 x dim planes (XY, XZ, YZ), bilinear grid_sample (4-D), features
    concatenated, then the MLP (the encoding TriplaneField uses)."""

    def __init__(self, res: int, dim: int):
        super().__init__()
        self.planes = nn.Parameter(torch.randn(3, dim, res, res) * 0.01)
        self.mlp = small_mlp(3 * dim)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        uv = torch.stack([points[:, [0, 1]], points[:, [0, 2]], points[:, [1, 2]]])[:, :, None, :]  # [3, P, 1, 2]
        feats = F.grid_sample(self.planes, uv, mode="bilinear", align_corners=True)  # [3, C, P, 1]
        return self.mlp(feats[..., 0].permute(2, 0, 1).reshape(points.shape[0], -1))


class RealField(nn.Module):
    """TriplaneField from the package (blob + softplus + sigmoid included)."""

    def __init__(self, config: FieldConfig):
        super().__init__()
        self.field = TriplaneField(config)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        density, albedo = self.field(points)
        return torch.cat([density[:, None], albedo], -1)


def time_candidate(model: nn.Module, points: int, repeats: int, warmup: int, seed: int) -> dict[str, float]:
    """Median milliseconds of forward, backward and Adam step over `repeats` iterations, each
    on fresh random points (drawn outside the timed region)."""
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.9, 0.99), eps=1e-15)
    generator = torch.Generator().manual_seed(seed)
    times: dict[str, list[float]] = {"forward": [], "backward": [], "adam": []}
    for i in range(warmup + repeats):
        x = torch.rand(points, 3, generator=generator) * 2 - 1
        optimiser.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        out = model(x)
        loss = out.square().mean()
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        optimiser.step()
        t3 = time.perf_counter()
        if i >= warmup:
            for key, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2)):
                times[key].append(1e3 * dt)
    return {k: statistics.median(v) for k, v in times.items()}


def candidates() -> list[tuple[str, str, Callable[[], nn.Module]]]:
    """(name, features per point, builder). Builders run after the seed is set."""
    real = FieldConfig()
    return [
        ("dense grid 64³ × 8", "8", lambda: DenseGrid(64, 8)),
        ("dense grid 96³ × 8", "8", lambda: DenseGrid(96, 8)),
        ("triplane 128² × 8", "24", lambda: Triplane(128, 8)),
        ("triplane 256² × 8", "24", lambda: Triplane(256, 8)),
        (f"TriplaneField (fields.py, {real.grid_resolution}² × {real.feature_dim})",
         str(3 * real.feature_dim), lambda: RealField(real)),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=60_000, help="random points per iteration (default 60000)")
    parser.add_argument("--repeats", type=int, default=20, help="timed iterations, median reported (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations first (default 3)")
    default_threads = sorted({torch.get_num_threads(), 1}, reverse=True)
    parser.add_argument("--threads", type=int, nargs="+", default=default_threads,
                        help=f"torch intra-op thread counts to compare (default {' '.join(map(str, default_threads))})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--retries", type=int, default=2,
                        help=f"re-measure a row while other processes used over {QUIET_CORES} cores (default 2)")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="before each row, wait up to this long for other processes to leave the CPU")
    args = parser.parse_args(argv)
    version = code_version()  # the working tree as imported, before anything runs

    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name, width, build in candidates():
            print(f"timing {name} on {threads} thread(s) ...", file=sys.stderr)
            for attempt in range(1 + args.retries):  # rows are short: re-measure one that was disturbed
                if args.wait_quiet:
                    wait_until_quiet(args.wait_quiet)
                torch.manual_seed(args.seed)
                model = build()
                params = sum(p.numel() for p in model.parameters())
                with OtherCpuUse() as others:
                    ms = time_candidate(model, args.points, args.repeats, args.warmup, args.seed)
                if others.cores is None or others.cores <= QUIET_CORES:
                    break
                print(f"  disturbed ({others.cores:.2f} cores used by others)", file=sys.stderr)
            total = ms["forward"] + ms["backward"] + ms["adam"]
            rows.append([name, threads, width, f"{params / 1e6:.2f} M", f"{ms['forward']:.1f}",
                         f"{ms['backward']:.1f}", f"{ms['adam']:.1f}", f"**{total:.1f}**",
                         "?" if others.cores is None else f"{others.cores:.2f}"])

    print(f"\n### Feature encodings: {args.points:,} random points, median of {args.repeats} iterations\n")
    print(f"Machine: {machine()}; {version}.\n")
    print(markdown_table(["encoding", "threads", "MLP input", "parameters", "forward ms", "backward ms", "Adam ms", "total ms",
                          "cores used by others"], rows))
    print("\n- Each encoding is followed by the same MLP shape (2 × 32 hidden, SiLU, 4 outputs); the loss is "
          "the mean square of its output, so backward covers MLP + grid_sample's gradient into the features.")
    print("- Adam touches every parameter each step, so its cost grows with the grid size (dense volumes).")
    print("- cores used by others: average CPU load of other processes meanwhile (/proc/stat); above "
          f"{QUIET_CORES} the row is inflated.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
